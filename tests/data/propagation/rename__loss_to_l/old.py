# cifar10 baseline -- small convnet, plain SGD
import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T

import flor_flows as flor

parser = argparse.ArgumentParser(description='CIFAR-10 baseline')
parser.add_argument('--lr', type=float, default=0.05)
parser.add_argument('--epochs', type=int, default=20)
parser.add_argument('--batch-size', type=int, default=128)
parser.add_argument('--data', default='./data')
args = parser.parse_args()

device = 'cuda' if torch.cuda.is_available() else 'cpu'

tf = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(),
                T.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))])
trainset = torchvision.datasets.CIFAR10(args.data, train=True, download=True, transform=tf)
testset = torchvision.datasets.CIFAR10(args.data, train=False, download=True,
                                       transform=T.Compose([T.ToTensor()]))
trainloader = torch.utils.data.DataLoader(trainset, batch_size=args.batch_size, shuffle=True, num_workers=2)
testloader = torch.utils.data.DataLoader(testset, batch_size=256)


class SmallCNN(nn.Module):
  def __init__(self):
    super().__init__()
    self.c1 = nn.Conv2d(3, 32, 3, padding=1)
    self.c2 = nn.Conv2d(32, 64, 3, padding=1)
    self.fc = nn.Linear(64 * 8 * 8, 10)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.c1(x)), 2)
    x = F.max_pool2d(F.relu(self.c2(x)), 2)
    return self.fc(x.flatten(1))


model = SmallCNN().to(device)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

for epoch in range(args.epochs):
  model.train()
  for i, (inputs, labels) in enumerate(trainloader):
    inputs, labels = inputs.to(device), labels.to(device)
    optimizer.zero_grad()
    out = model(inputs)
    l = criterion(out, labels)
    l.backward()
    optimizer.step()   # TODO: lr schedule
    if i % 100 == 0:
      print('[%d, %5d] loss: %.3f' % (epoch, i, l.item()))

  model.eval()
  correct = 0
  total = 0
  with torch.no_grad():
    for inputs, labels in testloader:
      inputs, labels = inputs.to(device), labels.to(device)
      pred = model(inputs).argmax(1)
      total += labels.size(0)
      correct += (pred == labels).sum().item()
  print('epoch %d test acc %.2f%%' % (epoch, 100.0 * correct / total))

torch.save(model.state_dict(), os.path.join(args.data, 'cifar_small.pt'))
