import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader

from recsys import MovieLens, MatrixFactorization
import flor_flows as flor

ap = argparse.ArgumentParser()
ap.add_argument('--dim', type=int, default=64)
ap.add_argument('--epochs', type=int, default=25)
ap.add_argument('--lr', type=float, default=5e-3)
args = ap.parse_args()

train = MovieLens('ml-1m', split='train')
valid = MovieLens('ml-1m', split='valid')
train_dl = DataLoader(train, batch_size=4096, shuffle=True)
valid_dl = DataLoader(valid, batch_size=8192)

model = MatrixFactorization(train.n_users, train.n_items, args.dim)
optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=args.lr)
mse = nn.MSELoss()


def evaluate(model, dl):
    model.eval()
    se, n = 0.0, 0
    with torch.no_grad():
        for u, i, r in dl:
            se += ((model(u, i) - r) ** 2).sum().item()
            n += len(r)
    model.train()
    return (se / n) ** 0.5


for epoch in range(args.epochs):
    for u, i, r in train_dl:
        optimizer.zero_grad()
        loss = mse(model(u, i), r)
        loss.backward()
        optimizer.step()
    rmse = evaluate(model, valid_dl)   # RMSE on held-out ratings
    print('epoch %d  valid rmse %.4f' % (epoch, rmse))

torch.save(model.state_dict(), 'mf.pt')
