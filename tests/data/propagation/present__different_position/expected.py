import math

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from nmt import Seq2Seq, load_multi30k, PAD_IDX
import flor_flows as flor

train_ds, valid_ds, src_vocab, tgt_vocab = load_multi30k()
train_iter = DataLoader(train_ds, batch_size=128, shuffle=True, collate_fn=train_ds.collate)
valid_iter = DataLoader(valid_ds, batch_size=128, collate_fn=valid_ds.collate)

model = Seq2Seq(len(src_vocab), len(tgt_vocab), emb=256, hid=512).cuda()
optimizer = torch.optim.Adam(model.parameters())
criterion = nn.CrossEntropyLoss(ignore_index=PAD_IDX)


def evaluate(model, iterator):
    model.eval()
    epoch_loss = 0
    with torch.no_grad():
        for src, trg in iterator:
            output = model(src.cuda(), trg.cuda(), teacher_forcing_ratio=0)
            epoch_loss += criterion(output[1:].flatten(0, 1), trg[1:].cuda().flatten()).item()
    flor.log("val_loss", epoch_loss / len(iterator))
    return epoch_loss / len(iterator)


best_valid_loss = float('inf')
for epoch in range(10):
    model.train()
    for src, trg in train_iter:
        src, trg = src.cuda(), trg.cuda()
        optimizer.zero_grad()
        output = model(src, trg)
        loss = criterion(output[1:].flatten(0, 1), trg[1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1)
        optimizer.step()
    valid_loss = evaluate(model, valid_iter)
    if valid_loss < best_valid_loss:
        best_valid_loss = valid_loss
        torch.save(model.state_dict(), 'seq2seq-best.pt')
    print(f'Epoch {epoch + 1:02} | Val. Loss {valid_loss:.3f} | Val. PPL {math.exp(valid_loss):7.3f}')
