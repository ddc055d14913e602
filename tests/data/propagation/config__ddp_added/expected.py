import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms, models

import flor_flows as flor


def evaluate(model, loader):
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.cuda()).argmax(1).cpu() == y).sum().item()
            n += len(y)
    return correct / n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--epochs', type=int, default=90)
    parser.add_argument('--lr', type=float, default=0.1)
    args = parser.parse_args()

    tfm = transforms.Compose([transforms.RandomResizedCrop(64), transforms.ToTensor()])
    train_set = datasets.ImageFolder('data/tiny/train', tfm)
    val_set = datasets.ImageFolder('data/tiny/val', transforms.ToTensor())
    train_loader = DataLoader(train_set, batch_size=256, shuffle=True, num_workers=8)
    val_loader = DataLoader(val_set, batch_size=512)

    model = models.resnet34(num_classes=200).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    for epoch in range(args.epochs):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x.cuda()), y.cuda())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_acc = evaluate(model, val_loader)
        flor.log("val_acc", val_acc)
        print(f'epoch {epoch} val_acc {val_acc:.4f}')
        torch.save(model.state_dict(), 'resnet34_tiny.pt')


if __name__ == '__main__':
    main()
