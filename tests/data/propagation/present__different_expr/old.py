# SVHN, ResNet-ish, evaluation every epoch
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from resnet import resnet20
import flor_flows as flor

tfm = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
train_loader = DataLoader(datasets.SVHN('data', 'train', transform=tfm, download=True), batch_size=128, shuffle=True)
test_loader = DataLoader(datasets.SVHN('data', 'test', transform=tfm, download=True), batch_size=512)

model = resnet20(num_classes=10).cuda()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

for epoch in range(40):
    model.train()
    for x, y in train_loader:
        x, y = x.cuda(), y.cuda()
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()

    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in test_loader:
            pred = model(x.cuda()).argmax(1).cpu()
            correct += (pred == y).sum().item()
            total += y.numel()
    flor.log('acc', correct / total)
    print(epoch, correct / total)
