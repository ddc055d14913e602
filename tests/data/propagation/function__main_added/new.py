import os
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms, models

import flor_flows as flor

DATA_DIR = os.environ.get('DATA_DIR', 'data/flowers')
EPOCHS = 15  # full fine-tune after epoch 5
LR = 3e-4


def main():
    # pretrained backbone, new head
    tfm = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    train_ds = datasets.ImageFolder(os.path.join(DATA_DIR, 'train'), tfm)
    val_ds = datasets.ImageFolder(os.path.join(DATA_DIR, 'val'), tfm)
    train_dl = DataLoader(train_ds, batch_size=32, shuffle=True, num_workers=4)
    val_dl = DataLoader(val_ds, batch_size=64)

    model = models.resnet50(weights='IMAGENET1K_V2')
    model.fc = nn.Linear(model.fc.in_features, len(train_ds.classes))
    optimizer = torch.optim.AdamW(model.fc.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    criterion = nn.CrossEntropyLoss()

    for epoch in range(EPOCHS):
        model.train()
        for x, y in train_dl:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        scheduler.step()
        flor.log("lr", scheduler.get_last_lr()[0])

        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_dl:
                correct += (model(x).argmax(1) == y).sum().item()
        print('epoch', epoch, 'val acc', correct / len(val_ds))

    torch.save(model.state_dict(), 'finetuned.pt')


if __name__ == '__main__':
    main()
