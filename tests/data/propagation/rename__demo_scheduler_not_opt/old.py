"""Train a small digit classifier on the newest batch of labelled images.

v1 (baseline): two-layer MLP trained with plain SGD + momentum.
Run:  python train.py --data batch=data/batches/2026-11-02.csv --kwargs lr=0.05 epochs=5
"""

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import flor_flows as flor

# Hyper-parameters; each can be overridden with --kwargs name=value.
lr = flor.arg("lr", 0.05)
epochs = flor.arg("epochs", 5)
batch_size = flor.arg("batch_size", 32)
seed = flor.arg("seed", 0)

torch.manual_seed(seed)  # the DataLoader shuffles with torch's global RNG
torch.set_num_threads(1)


def load(path):
    """Read a digits CSV (p0..p63, label) into scaled float features and int labels."""
    df = pd.read_csv(path)
    x = torch.tensor(df.drop(columns="label").to_numpy(), dtype=torch.float32) / 16.0
    y = torch.tensor(df["label"].to_numpy(), dtype=torch.long)
    return x, y


x_train, y_train = load(flor.data("batch", "data/batches/2026-11-01.csv"))
x_test, y_test = load(flor.data("test", "data/test.csv"))
loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)

net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
flor.warm_start(model=net)  # continue from the previous run's weights, if asked
opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()


def evaluate(net):
    """Accuracy on the held-out test split."""
    net.eval()
    with torch.no_grad():
        acc = (net(x_test).argmax(dim=1) == y_test).float().mean().item()
    net.train()
    return acc


with flor.checkpointing(model=net, optimizer=opt):
    for epoch in flor.loop("epoch", range(epochs)):
        for x, y in flor.loop("step", loader):
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            flor.log("loss", loss.item())
        acc = flor.log("acc", evaluate(net))
        print(f"epoch {epoch}: test accuracy {acc:.3f}")
