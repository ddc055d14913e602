"""Fine-tune a ResNet-50 on a folder of images (single process)."""
import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", default="data/flowers")
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--label-smoothing", type=float, default=0.1)
parser.add_argument("--out", default="runs/resnet50")
args = parser.parse_args()

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
train_tf = transforms.Compose([
    transforms.RandomResizedCrop(224),
    transforms.RandomHorizontalFlip(),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
train_set = datasets.ImageFolder(os.path.join(args.data_dir, "train"), train_tf)
train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=4)

model = models.resnet50(weights="IMAGENET1K_V2")
model.fc = torch.nn.Linear(model.fc.in_features, len(train_set.classes))
model = model.to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)
scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=len(train_loader)
)

for epoch in flor.loop("epoch", range(args.epochs)):
    model.train()
    running = 0.0
    for inputs, labels in train_loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        logits = model(inputs)
        loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += loss.item() * inputs.size(0)
    print(f"epoch {epoch}: loss {running / len(train_set):.4f}")
    torch.save(model.state_dict(), os.path.join(args.out, "last.pt"))
