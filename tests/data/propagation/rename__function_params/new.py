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


def run_epoch(model, loader, optimizer, criterion):
    """One pass over the data; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for X, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(X), y)
        loss.backward()
        optimizer.step()
        flor.log("lr", optimizer.param_groups[0]["lr"])
        total += loss.item() * len(X)
        count += len(X)
    return total / count


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()

    ds = make_data()
    dl = DataLoader(ds, batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    for epoch in range(args.epochs):
        mse = run_epoch(model, dl, optimizer, nn.MSELoss())
        scheduler.step()
        print(epoch, math.sqrt(mse))
