"""Train a ViT-tiny on CIFAR-10 with timm."""
import argparse

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms as T

import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=100)
parser.add_argument("--lr", type=float, default=5e-4)
parser.add_argument("--wd", type=float, default=0.05)
args = parser.parse_args()

tfm = T.Compose([T.RandomCrop(32, 4), T.RandomHorizontalFlip(), T.ToTensor()])
ds = datasets.CIFAR10("data", train=True, download=True, transform=tfm)
dl = DataLoader(ds, batch_size=512, shuffle=True, num_workers=8, pin_memory=True)

net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=4)
net = net.cuda()
opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.wd)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)

for epoch in range(args.epochs):
    net.train()
    seen, correct = 0, 0
    for x, y in dl:
        x, y = x.cuda(), y.cuda()
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += y.numel()
        correct += (logits.argmax(1) == y).sum().item()
    sched.step()
    print(f"epoch {epoch}: train acc {correct / seen:.3f}")
torch.save(net.state_dict(), "vit_tiny_c10.pt")
