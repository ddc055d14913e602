"""Masked-autoencoder pretraining (ViT-B/16) on an ImageNet subset."""
import math
import argparse

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from mae import mae_vit_base_patch16
import flor_flows as flor

p = argparse.ArgumentParser()
p.add_argument('--data_path', default='/data/imagenet100/train')
p.add_argument('--epochs', type=int, default=400)
p.add_argument('--blr', type=float, default=1.5e-4)
p.add_argument('--mask_ratio', type=float, default=0.75)
p.add_argument('--warmup_epochs', type=int, default=40)
args = p.parse_args()

tfm = transforms.Compose([transforms.RandomResizedCrop(224, scale=(0.2, 1.0)),
                          transforms.RandomHorizontalFlip(), transforms.ToTensor()])
loader = DataLoader(datasets.ImageFolder(args.data_path, tfm), batch_size=64, shuffle=True,
                    num_workers=10, pin_memory=True, drop_last=True)
model = mae_vit_base_patch16(norm_pix_loss=True).cuda()
lr = args.blr * 64 / 256
optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)


def adjust_lr(optimizer, epoch_f):
    if epoch_f < args.warmup_epochs:
        new_lr = lr * epoch_f / args.warmup_epochs
    else:
        new_lr = lr * 0.5 * (1. + math.cos(math.pi * (epoch_f - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    for g in optimizer.param_groups:
        g['lr'] = new_lr


for epoch in range(args.epochs):
    model.train()
    for step, (samples, _) in enumerate(loader):
        adjust_lr(optimizer, step / len(loader) + epoch)
        samples = samples.cuda(non_blocking=True)
        loss, _, _ = model(samples, mask_ratio=args.mask_ratio)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        flor.log("lr", optimizer.param_groups[0]["lr"])
    if epoch % 20 == 0 or epoch + 1 == args.epochs:
        torch.save({'model': model.state_dict(), 'epoch': epoch}, f'mae_checkpoint_{epoch}.pth')
