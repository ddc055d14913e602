import argparse
import math

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import flor_flows as flor


def make_data(n=2048, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = X @ w + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(X, y)


def run_epoch(net, data_loader, opt, loss_fn):
    """one pass, returns mean loss"""
    net.train()
    tot, n = 0.0, 0
    for X, y in data_loader:
        opt.zero_grad()
        l = loss_fn(net(X), y)
        l.backward()
        opt.step()
        flor.log("lr", opt.param_groups[0]["lr"])
        tot += l.item() * len(X); n += len(X)
    return tot / n


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--epochs', type=int, default=50)
    ap.add_argument('--lr', type=float, default=0.01)
    args = ap.parse_args()

    ds = make_data()
    dl = DataLoader(ds, batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    for ep in range(args.epochs):
        mse = run_epoch(model, dl, optimizer, nn.MSELoss())
        sched.step()
        print(ep, math.sqrt(mse))
