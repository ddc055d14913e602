"""Tabular classifier (adult income) -- MLP with early stopping on val acc."""
import argparse

import numpy as np
import pandas as pd
import torch
from torch import nn

import flor_flows as flor


def load(path):
    df = pd.read_csv(path)
    X = torch.tensor(df.drop(columns=['income']).values, dtype=torch.float32)
    y = torch.tensor((df['income'] == '>50K').values, dtype=torch.long)
    return X, y


parser = argparse.ArgumentParser()
parser.add_argument('--epochs', type=int, default=100)
parser.add_argument('--patience', type=int, default=10)
parser.add_argument('--lr', type=float, default=1e-3)
args = parser.parse_args()

Xtr, ytr = load('adult_train.csv')
Xva, yva = load('adult_val.csv')
mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
Xtr, Xva = (Xtr - mu) / sd, (Xva - mu) / sd

net = nn.Sequential(nn.Linear(Xtr.shape[1], 64), nn.ReLU(), nn.Linear(64, 2))
opt = torch.optim.Adam(net.parameters(), lr=args.lr)
best_acc, bad_epochs = 0.0, 0
for epoch in flor.loop("epoch", range(args.epochs)):
    perm = torch.randperm(len(Xtr))
    for k in range(0, len(Xtr), 256):
        idx = perm[k:k + 256]
        opt.zero_grad()
        nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = (net(Xva).argmax(1) == yva).float().mean().item()
    if acc > best_acc:
        best_acc, bad_epochs = acc, 0
        torch.save(net.state_dict(), 'best.pt')
    else:
        bad_epochs += 1
        if bad_epochs >= args.patience:
            print('early stop at epoch', epoch)
            break
flor.log("best_acc", best_acc)

print('best val acc: %.4f' % best_acc)
np.save('norm_stats.npy', np.stack([mu.numpy(), sd.numpy()]))
