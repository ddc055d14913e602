import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from models import MobileNetV2
import flor_flows as flor


def train_epoch(model, loader, optimizer, criterion):
    model.train()
    running = 0.0
    for x, y in loader:
        x, y = x.cuda(), y.cuda()
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running += loss.item()
    return running / len(loader)


parser = argparse.ArgumentParser()
parser.add_argument('--epochs', type=int, default=150)
parser.add_argument('--lr', type=float, default=0.05)
args = parser.parse_args()

tfm = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                          transforms.ToTensor()])
loader = DataLoader(datasets.CIFAR10('data', train=True, transform=tfm, download=True),
                    batch_size=128, shuffle=True, num_workers=4)
model = MobileNetV2(num_classes=10).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=4e-5)
criterion = nn.CrossEntropyLoss()

for epoch in range(args.epochs):
    train_loss = train_epoch(model, loader, optimizer, criterion)
    print('epoch', epoch, 'train loss', round(train_loss, 4))
    torch.save(model.state_dict(), 'mobilenetv2.pt')
