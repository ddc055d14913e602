import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import flor_flows as flor
from models import WideResNet


def train(model, loader, optimizer, device):
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        optimizer.step()


def test(model, loader, device):
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct / len(loader.dataset)


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=200)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--wd", type=float, default=5e-4)
parser.add_argument("--depth", type=int, default=28)
parser.add_argument("--widen", type=int, default=10)
args = parser.parse_args()
device = "cuda"

norm = transforms.Normalize((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), norm])
train_loader = DataLoader(datasets.CIFAR100("data", True, train_tf, download=True),
                          batch_size=128, shuffle=True, num_workers=8)
test_loader = DataLoader(datasets.CIFAR100("data", False, transforms.Compose([transforms.ToTensor(), norm])),
                         batch_size=500)

model = WideResNet(args.depth, args.widen, num_classes=100).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd, nesterov=True)
scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[60, 120, 160], gamma=0.2)

for epoch in range(1, args.epochs + 1):
    train(model, train_loader, optimizer, device)
    acc = test(model, test_loader, device)
    scheduler.step()
    print("epoch %3d  acc %.4f" % (epoch, acc))
    if epoch % 20 == 0:
        torch.save(model.state_dict(), os.path.join("ckpt", "wrn_%d.pt" % epoch))
