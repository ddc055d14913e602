import argparse

import torch
from torch.optim.lr_scheduler import StepLR

import flor_flows as flor


def train(model, optimizer, data, target):
    print("TRAIN", flush=True)
    model.train()
    order = torch.randperm(len(data))
    for start in range(0, len(data), 8):
        batch = order[start : start + 8]
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(data[batch]), target[batch])
        loss.backward()
        optimizer.step()


def test(model, data, target):
    model.eval()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(data), target))


parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=6)
args = parser.parse_args()
torch.manual_seed(0)
data, target = torch.randn(64, 3), torch.randn(64, 1)
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
with flor.checkpointing(model=model, optimizer=optimizer, scheduler=scheduler):
    for epoch in flor.loop("epoch", range(args.epochs)):
        flor.log("lr_start", optimizer.param_groups[0]["lr"])
        flor.log("w_start", float(model.weight.sum()))
        train(model, optimizer, data, target)
        loss = test(model, data, target)
        flor.log("loss", loss)
        flor.log("loss2", loss * 2)
        scheduler.step()
        flor.log("lr_end", scheduler.get_last_lr()[0])
        flor.log("w_end", float(model.weight.sum()))
