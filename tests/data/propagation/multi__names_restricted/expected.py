import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pointnet import PointNetCls, ModelNet40
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument('--root', default='data/modelnet40_normal_resampled')
parser.add_argument('--npoints', type=int, default=1024)
parser.add_argument('--epochs', type=int, default=200)
parser.add_argument('--lr', type=float, default=0.001)
opt = parser.parse_args()

train_ds = ModelNet40(opt.root, split='train', npoints=opt.npoints, augment=True)
test_ds = ModelNet40(opt.root, split='test', npoints=opt.npoints)
train_dl = DataLoader(train_ds, batch_size=32, shuffle=True, num_workers=4, drop_last=True)
test_dl = DataLoader(test_ds, batch_size=32, num_workers=4)

classifier = PointNetCls(k=40, feature_transform=True).cuda()
optimizer = torch.optim.Adam(classifier.parameters(), lr=opt.lr, betas=(0.9, 0.999))
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)

for epoch in range(opt.epochs):
    classifier.train()
    for i, (points, target) in enumerate(train_dl):
        points, target = points.transpose(2, 1).cuda(), target[:, 0].cuda()
        optimizer.zero_grad()
        pred, trans, trans_feat = classifier(points)
        loss = F.nll_loss(pred, target)
        loss = loss + 0.001 * classifier.feature_transform_regularizer(trans_feat)
        loss.backward()
        flor.log("grad_norm", torch.nn.utils.clip_grad_norm_(classifier.parameters(), float("inf")).item())
        optimizer.step()
    scheduler.step()

    classifier.eval()
    correct = 0
    with torch.no_grad():
        for points, target in test_dl:
            points, target = points.transpose(2, 1).cuda(), target[:, 0].cuda()
            pred, _, _ = classifier(points)
            correct += pred.argmax(1).eq(target).sum().item()
    print('[%d] test accuracy: %f' % (epoch, correct / len(test_ds)))
    torch.save(classifier.state_dict(), os.path.join('cls', 'cls_model_%d.pth' % epoch))
