import time
import argparse

import torch
import torch.nn as nn
import torchvision
from torchvision import transforms

import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument('--arch', default='resnet18')
parser.add_argument('--epochs', type=int, default=30)
parser.add_argument('--lr', type=float, default=0.1)
parser.add_argument('--workers', type=int, default=4)
args = parser.parse_args()

normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
train_set = torchvision.datasets.ImageFolder(
    'data/train',
    transforms.Compose([transforms.RandomResizedCrop(224), transforms.ToTensor(), normalize]))
train_loader = torch.utils.data.DataLoader(train_set, batch_size=256, shuffle=True,
                                           num_workers=args.workers, pin_memory=True)

model = torchvision.models.__dict__[args.arch](num_classes=len(train_set.classes)).cuda()
crit = nn.CrossEntropyLoss().cuda()
opt = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=1e-4)

for epoch in range(args.epochs):
    model.train()
    t0 = time.time()
    for i, (images, target) in enumerate(train_loader):
        images = images.cuda(non_blocking=True)
        target = target.cuda(non_blocking=True)

        out = model(images)
        loss = crit(out, target)
        flor.log("train_acc", (out.argmax(1) == target).float().mean().item())

        opt.zero_grad()
        loss.backward()
        opt.step()

        if i % 50 == 0:
            print('epoch {} iter {} loss {:.3f} ({:.1f}s)'.format(epoch, i, loss.item(), time.time() - t0))
    torch.save({'epoch': epoch, 'state_dict': model.state_dict()}, 'checkpoint.pth.tar')
