"""Fashion-MNIST MLP.  python train_fmnist.py --epochs 10"""
import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import flor_flows as flor


def get_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    return p.parse_args()


args = get_args()
tfm = transforms.ToTensor()
train_ds = datasets.FashionMNIST("data", train=True, download=True, transform=tfm)
test_ds = datasets.FashionMNIST("data", train=False, download=True, transform=tfm)
train_dl = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True)
test_dl = DataLoader(test_ds, batch_size=1000)

model = nn.Sequential(
    nn.Flatten(),
    nn.Linear(28 * 28, args.hidden),
    nn.ReLU(),
    nn.Linear(args.hidden, 10),
)
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

for epoch in range(args.epochs):
    model.train()
    for xb, yb in train_dl:
        pred = model(xb)
        loss = loss_fn(pred, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flor.log("weight_norm", sum(p.norm().item() for p in model.parameters()))

    # ---- eval ----
    model.eval()
    hits = 0
    with torch.no_grad():
        for xb, yb in test_dl:
            hits += (model(xb).argmax(1) == yb).sum().item()
    print(f"epoch {epoch}: acc={hits / len(test_ds):.4f}")

torch.save(model.state_dict(), "fmnist_mlp.pt")
