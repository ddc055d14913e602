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

model = nn.Sequential(nn.Linear(Xtr.shape[1], 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
criterion = nn.SmoothL1Loss()

for epoch in range(EPOCHS):
    model.train()
    perm = torch.randperm(len(Xtr))
    for b in range(0, len(Xtr), BS):
        idx = perm[b:b + BS]
        pred = model(Xtr[idx]).squeeze(-1)
        loss = criterion(pred, ytr[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        flor.log("loss", loss.item())
    model.eval()
    with torch.no_grad():
        mae = (model(Xte).squeeze(-1) - yte).abs().mean().item()
    flor.log("test_mae", mae)
    print(epoch, 'test MAE', round(mae, 4))
flor.log("final_weight_norm", sum(p.norm().item() for p in model.parameters()))

np.save('yelp_head.npy', np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]))
