# AG News topic classification with an EmbeddingBag model
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchtext.datasets import AG_NEWS

from textcls import build_vocab, make_collate, TextClassifier
import flor_flows as flor

EPOCHS = 10
LR = 5.0
BATCH_SIZE = 64

train_iter, test_iter = AG_NEWS(split=('train', 'test'))
vocab = build_vocab(train_iter)
collate = make_collate(vocab)
train_loader = DataLoader(list(train_iter), batch_size=BATCH_SIZE, shuffle=True, collate_fn=collate)
test_loader = DataLoader(list(test_iter), batch_size=BATCH_SIZE, collate_fn=collate)

model = TextClassifier(len(vocab), embed_dim=64, num_class=4)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=LR)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1.0, gamma=0.1)


def evaluate(loader):
    model.eval()
    total_acc, total_count = 0, 0
    with torch.no_grad():
        for label, text, offsets in loader:
            predicted = model(text, offsets)
            total_acc += (predicted.argmax(1) == label).sum().item()
            total_count += label.size(0)
    return total_acc / total_count


best = None
for epoch in range(1, EPOCHS + 1):
    epoch_start_time = time.time()
    model.train()
    for idx, (label, text, offsets) in enumerate(train_loader):
        optimizer.zero_grad()
        predicted_label = model(text, offsets)
        loss = criterion(predicted_label, label)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        flor.log("loss", loss.item())
    accu_val = evaluate(test_loader)
    flor.log("val_acc", accu_val)
    if best is not None and best > accu_val:
        scheduler.step()
    else:
        best = accu_val
    print('| end of epoch {:3d} | time: {:5.2f}s | valid accuracy {:8.3f} '.format(
        epoch, time.time() - epoch_start_time, accu_val))
