import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from tabular import CoverType, ResidualMLP
import flor_flows as flor

HP = {'epochs': 60, 'lr': 3e-3, 'bs': 1024, 'wd': 1e-5}

train_ds, val_ds = CoverType.splits('data/covtype.csv', val_frac=0.15)
train_dl = DataLoader(train_ds, batch_size=HP['bs'], shuffle=True)
val_dl = DataLoader(val_ds, batch_size=4096)

model = ResidualMLP(train_ds.n_features, 7, width=512, depth=4)
optimizer = torch.optim.Adam(model.parameters(), lr=HP['lr'], weight_decay=HP['wd'])
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=HP['lr'], epochs=HP['epochs'],
                                                steps_per_epoch=len(train_dl))
criterion = nn.CrossEntropyLoss()


def accuracy(model, dl):
    model.eval()
    hit = tot = 0
    with torch.no_grad():
        for x, y in dl:
            hit += (model(x).argmax(-1) == y).sum().item()
            tot += y.numel()
    return hit / tot


for epoch in range(HP['epochs']):
    model.train()
    for x, y in train_dl:
        out = model(x)
        optimizer.zero_grad()
        loss = criterion(out, y)
        loss.backward()
        optimizer.step()
        scheduler.step()
    acc = accuracy(model, val_dl)
    print(f"{epoch:3d} val acc {acc:.4f}")
torch.save(model.state_dict(), "covtype_mlp.pt")
