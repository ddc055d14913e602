import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from seg import VOCSegmentation, UNet, joint_transforms
import flor_flows as flor

p = argparse.ArgumentParser('unet-voc')
p.add_argument('--epochs', type=int, default=50)
p.add_argument('--lr', type=float, default=1e-3)
p.add_argument('--bs', type=int, default=8)
p.add_argument('--log-interval', type=int, default=20)
args = p.parse_args()

train_ds = VOCSegmentation('data/VOC2012', 'train', joint_transforms(train=True))
val_ds = VOCSegmentation('data/VOC2012', 'val', joint_transforms(train=False))
train_dl = DataLoader(train_ds, batch_size=args.bs, shuffle=True, num_workers=4)

model = UNet(n_classes=21).cuda()
criterion = nn.CrossEntropyLoss(ignore_index=255)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

start = time.time()
for epoch in range(args.epochs):
    model.train()
    for step, (img, mask) in enumerate(train_dl):
        img, mask = img.cuda(), mask.cuda()
        logits = model(img)
        loss = criterion(logits, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.log_interval == 0:
            elapsed = time.time() - start
            flor.log("loss", loss.item())
            print(f'epoch {epoch} step {step} loss {loss.item():.4f} ({elapsed:.0f}s)')
    torch.save(model.state_dict(), f'unet_voc_{epoch}.pt')
print('total time', time.time() - start)
