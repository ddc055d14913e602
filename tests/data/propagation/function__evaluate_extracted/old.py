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

full = datasets.KMNIST('data', train=True, download=True, transform=transforms.ToTensor())
n_val = int(len(full) * config['val_frac'])
train_set, val_set = random_split(full, [len(full) - n_val, n_val])
train_loader = DataLoader(train_set, batch_size=config['batch_size'], shuffle=True)
val_loader = DataLoader(val_set, batch_size=512)

net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 10))
opt = torch.optim.SGD(net.parameters(), lr=config['lr'], momentum=0.9, nesterov=True)

for epoch in range(config['epochs']):
    net.train()
    for xb, yb in train_loader:
        opt.zero_grad()
        F.cross_entropy(net(xb), yb).backward()
        opt.step()

    # evaluate
    net.eval()
    n_correct = n_total = 0
    with torch.no_grad():
        for xb, yb in val_loader:
            pred = net(xb).argmax(dim=1)
            n_correct += (pred == yb).sum().item()
            n_total += yb.size(0)
    print(f"epoch {epoch}: val acc {n_correct / n_total:.3f}")

torch.save(net.state_dict(), "kmnist_mlp.pt")
