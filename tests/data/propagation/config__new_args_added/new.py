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
parser.add_argument('--weight-decay', type=float, default=0.05)
parser.add_argument('--label-smoothing', type=float, default=0.1)
parser.add_argument('--seed', type=int, default=0)
args = parser.parse_args()
torch.manual_seed(args.seed)

tfm = transforms.Compose([transforms.RandomResizedCrop(96), transforms.RandomHorizontalFlip(),
                          transforms.ToTensor()])
train_loader = DataLoader(datasets.STL10(args.data, split='train', transform=tfm, download=True),
                          batch_size=args.batch_size, shuffle=True, num_workers=8)

model = convnext_atto(num_classes=10).cuda()
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

for epoch in range(args.epochs):
    model.train()
    for images, labels in train_loader:
        images, labels = images.cuda(), labels.cuda()
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        flor.log("loss", loss.item())
    scheduler.step()
    torch.save(model.state_dict(), os.path.join(args.data, 'convnext_stl10.pt'))
