import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pix2pix import UNetGenerator, PairedFacades
import flor_flows as flor


def train(model, loader, optimizer, scheduler, epoch):
    model.train()
    for step, (src, tgt) in enumerate(loader):
        fake = model(src.cuda())
        loss = F.l1_loss(fake, tgt.cuda())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        flor.log("lr", scheduler.get_last_lr()[0])
        if step % 50 == 0:
            print(f"epoch {epoch} step {step} L1 {loss.item():.4f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-4)
    args = parser.parse_args()
    loader = DataLoader(PairedFacades("data/facades", "train"), batch_size=1, shuffle=True)
    model = UNetGenerator().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 1.0 - max(0, e - 100) / 101)
    for epoch in range(args.epochs):
        train(model, loader, optimizer, scheduler, epoch)
        scheduler.step()
        torch.save(model.state_dict(), "latest_net_G.pth")


if __name__ == "__main__":
    main()
