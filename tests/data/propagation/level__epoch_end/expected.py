import math
import time

import torch
import torch.nn as nn

from transformer_lm import TransformerLM, load_wikitext, get_batch
import flor_flows as flor

bptt = 35
epochs = 10
train_data, val_data, vocab = load_wikitext('data/wikitext-2', batch_size=20)
model = TransformerLM(len(vocab), d_model=200, nhead=2, d_hid=200, nlayers=2, dropout=0.2).cuda()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1.0, gamma=0.95)


def evaluate(model, data):
    model.eval()
    total = 0.
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            x, y = get_batch(data, i, bptt)
            total += len(x) * criterion(model(x).view(-1, len(vocab)), y).item()
    return total / (len(data) - 1)


for epoch in range(1, epochs + 1):
    model.train()
    total_loss, log_every, t0 = 0., 200, time.time()
    for batch, i in enumerate(range(0, train_data.size(0) - 1, bptt)):
        x, y = get_batch(train_data, i, bptt)
        loss = criterion(model(x).view(-1, len(vocab)), y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        total_loss += loss.item()
        if batch % log_every == 0 and batch > 0:
            print(f'| epoch {epoch:3d} | {batch:5d} batches | '
                  f'loss {total_loss / log_every:5.2f} | {(time.time() - t0) * 1000 / log_every:.1f} ms/batch')
            total_loss, t0 = 0., time.time()
    flor.log("last_loss", loss.item())
    # end of epoch: validate and decay the lr
    val_loss = evaluate(model, val_data)
    print('-' * 89)
    print(f'| end of epoch {epoch:3d} | valid loss {val_loss:5.2f} | valid ppl {math.exp(val_loss):8.2f}')
    scheduler.step()
