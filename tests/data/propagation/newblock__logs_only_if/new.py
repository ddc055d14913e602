import os
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms, models

import flor_flows as flor

cfg = {
    "data": os.path.expanduser("~/data/tiny-imagenet-200"),
    "epochs": 40,
    "batch_size": 256,
    "lr": 0.2,
    "log_every": 50,
    "out": "runs/resnet18",
}

tf_train = transforms.Compose([
    transforms.RandomResizedCrop(64, scale=(0.35, 1.0)),
    transforms.RandomHorizontalFlip(),
    transforms.ToTensor(),
])
train_set = datasets.ImageFolder(os.path.join(cfg["data"], "train"), tf_train)
loader = DataLoader(train_set, batch_size=cfg["batch_size"], shuffle=True, num_workers=8, drop_last=True)

model = models.resnet18(num_classes=200).cuda()
criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=5e-5)
steps_per_epoch = len(loader)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["lr"],
                                                total_steps=cfg["epochs"] * steps_per_epoch)

os.makedirs(cfg["out"], exist_ok=True)
for epoch in range(cfg["epochs"]):
    model.train()
    tic = time.time()
    for step, (x, y) in enumerate(loader):
        x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()  # one-cycle steps per batch
        if step % cfg["log_every"] == 0:
            flor.log("loss", loss.item())
            flor.log("lr", optimizer.param_groups[0]["lr"])
    print(f"epoch {epoch} done in {time.time() - tic:.0f}s, last loss {loss.item():.3f}")
    torch.save(model.state_dict(), os.path.join(cfg["out"], f"epoch{epoch:03d}.pt"))
