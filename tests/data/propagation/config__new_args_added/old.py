import argparse
import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from convnext import convnext_atto
import flor_flows as flor

parser = argparse.ArgumentParser(description='STL-10 classifier')
parser.add_argument('--data', default='data')
parser.add_argument('--epochs', type=int, default=60)
parser.add_argument('--batch-size', type=int, default=128)
parser.add_argument('--lr', type=float, default=4e-3)
args = parser.parse_args()

tfm = transforms.Compose([transforms.RandomResizedCrop(96), transforms.RandomHorizontalFlip(),
                          transforms.ToTensor()])
train_loader = DataLoader(datasets.STL10(args.data, split='train', transform=tfm, download=True),
                          batch_size=args.batch_size, shuffle=True, num_workers=8)

model = convnext_atto(num_classes=10).cuda()
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
criterion = nn.CrossEntropyLoss()

for epoch in range(args.epochs):
    model.train()
    for images, labels in train_loader:
        images, labels = images.cuda(), labels.cuda()
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scheduler.step()
    torch.save(model.state_dict(), os.path.join(args.data, 'convnext_stl10.pt'))
