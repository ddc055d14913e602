"""A small FlorDB-style training script: a PyTorch MLP on scikit-learn's digits (CPU, no download).

Run as `python train_digits.py [--kwargs lr=0.05 epochs=40 batch_size=16 seed=0]`; the flor
implementation is chosen by FLOR_IMPL (flordb, flor_flows or noop_flor).
"""

import torch
from benchlib import load_flor
from sklearn.datasets import load_digits
from torch import nn

flor = load_flor()

lr = flor.arg("lr", 0.05)
epochs = flor.arg("epochs", 60)
batch_size = flor.arg("batch_size", 16)
seed = flor.arg("seed", 0)
hidden = 512

torch.manual_seed(seed)
X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
y = torch.tensor(y)
order = torch.randperm(len(X))
n_train = int(0.8 * len(X))
train_idx, test_idx = order[:n_train], order[n_train:]

net = nn.Sequential(
    nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
)
opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
n_batches = (n_train + batch_size - 1) // batch_size

with flor.checkpointing(model=net, optimizer=opt):
    for _ in flor.loop("epoch", range(epochs)):
        perm = train_idx[torch.randperm(n_train)]
        net.train()
        for b in flor.loop("step", range(n_batches)):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            opt.zero_grad()
            loss = loss_fn(net(X[idx]), y[idx])
            loss.backward()
            opt.step()
            flor.log("loss", loss.item())
        net.eval()
        with torch.no_grad():
            acc = (net(X[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
        flor.log("acc", acc)

flor.commit()
