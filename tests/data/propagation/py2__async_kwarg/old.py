import argparse
import shutil
import time

import torch
import torch.nn as nn
import torch.backends.cudnn as cudnn
import torchvision.models as models

from imagenet_utils import AverageMeter, accuracy, build_loaders
import flor_flows as flor

parser = argparse.ArgumentParser(description='PyTorch ImageNet Training')
parser.add_argument('data', metavar='DIR')
parser.add_argument('--arch', '-a', default='resnet18')
parser.add_argument('--epochs', default=90, type=int)
parser.add_argument('--lr', default=0.1, type=float)
parser.add_argument('--print-freq', '-p', default=10, type=int)


def train(train_loader, model, criterion, optimizer, epoch, print_freq):
    losses = AverageMeter()
    top1 = AverageMeter()
    model.train()
    for i, (input, target) in enumerate(train_loader):
        target = target.cuda(async=True)
        input_var = torch.autograd.Variable(input)
        target_var = torch.autograd.Variable(target)

        output = model(input_var)
        loss = criterion(output, target_var)
        prec1, = accuracy(output.data, target, topk=(1,))
        losses.update(loss.data[0], input.size(0))
        top1.update(prec1[0], input.size(0))

        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i % print_freq == 0:
            print('Epoch: [{0}][{1}/{2}]\tLoss {loss.val:.4f}\tPrec@1 {top1.val:.3f}'.format(
                epoch, i, len(train_loader), loss=losses, top1=top1))


def main():
    args = parser.parse_args()
    model = torch.nn.DataParallel(models.__dict__[args.arch]()).cuda()
    criterion = nn.CrossEntropyLoss().cuda()
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=1e-4)
    cudnn.benchmark = True
    train_loader, val_loader = build_loaders(args.data, 256)
    for epoch in range(args.epochs):
        train(train_loader, model, criterion, optimizer, epoch, args.print_freq)
        torch.save({'epoch': epoch + 1, 'state_dict': model.state_dict()}, 'checkpoint.pth.tar')
        shutil.copyfile('checkpoint.pth.tar', 'model_latest.pth.tar')


if __name__ == '__main__':
    main()
