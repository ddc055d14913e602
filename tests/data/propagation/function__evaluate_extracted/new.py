import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, random_split
from torchvision import datasets, transforms

import flor_flows as flor

config = {
    'epochs': 12,
    'lr': 0.02,
    'batch_size': 128,
    'val_frac': 0.1,
}


def evaluate(model, loader):
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in loader:
            pred = model(x).argmax(dim=1)
            correct += (pred == y).sum().item()
            total += y.size(0)
    flor.log("val_acc", correct / total)
    return correct / total


full = datasets.KMNIST('data', train=True, download=True, transform=transforms.ToTensor())
n_val = int(len(full) * config['val_frac'])
train_set, val_set = random_split(full, [len(full) - n_val, n_val])
train_loader = DataLoader(train_set, batch_size=config['batch_size'], shuffle=True)
val_loader = DataLoader(val_set, batch_size=512)

model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=config['lr'], momentum=0.9, nesterov=True)

for epoch in range(config['epochs']):
    model.train()
    for xb, yb in train_loader:
        optimizer.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()

    val_acc = evaluate(model, val_loader)
    print(f"epoch {epoch}: val acc {val_acc:.3f}")

torch.save(model.state_dict(), "kmnist_mlp.pt")
