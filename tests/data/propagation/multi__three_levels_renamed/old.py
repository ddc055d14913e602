"""Sentiment regression on Yelp review embeddings (precomputed)."""
import numpy as np
import torch
from torch import nn

import flor_flows as flor

EPOCHS = 20
BS = 512

emb = np.load('yelp_emb.npy').astype('float32')
stars = np.load('yelp_stars.npy').astype('float32')
split = int(0.9 * len(emb))
Xtr, ytr = torch.from_numpy(emb[:split]), torch.from_numpy(stars[:split])
Xte, yte = torch.from_numpy(emb[split:]), torch.from_numpy(stars[split:])

net = nn.Sequential(nn.Linear(Xtr.shape[1], 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, 1))
opt = torch.optim.AdamW(net.parameters(), lr=3e-4)
crit = nn.SmoothL1Loss()

for ep in range(EPOCHS):
    net.train()
    perm = torch.randperm(len(Xtr))
    for b in range(0, len(Xtr), BS):
        idx = perm[b:b + BS]
        pred = net(Xtr[idx]).squeeze(-1)
        l = crit(pred, ytr[idx])
        opt.zero_grad()
        l.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        mae = (net(Xte).squeeze(-1) - yte).abs().mean().item()
    print(ep, 'test MAE', round(mae, 4))

np.save('yelp_head.npy', np.concatenate([p.detach().numpy().ravel() for p in net.parameters()]))
