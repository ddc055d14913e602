"""Fine-tune an EfficientNet-B0 on Oxford-IIIT Pets and report test accuracy."""
import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

import flor_flows as flor


def evaluate(model, loader, criterion, device):
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += criterion(out, y).item() * y.size(0)
            correct += (out.argmax(1) == y).sum().item()
            n += y.size(0)
    return loss_sum / n, correct / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--epochs', type=int, default=15)
    ap.add_argument('--lr', type=float, default=1e-3)
    args = ap.parse_args()
    device = 'cuda' if torch.cuda.is_available() else 'cpu'

    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor()])
    train_loader = DataLoader(datasets.OxfordIIITPet('data', 'trainval', transform=tf, download=True),
                              batch_size=64, shuffle=True, num_workers=6)
    test_loader = DataLoader(datasets.OxfordIIITPet('data', 'test', transform=tf, download=True),
                             batch_size=128, num_workers=6)

    model = models.efficientnet_b0(weights='DEFAULT')
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, 37)
    model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    for epoch in range(args.epochs):
        model.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()

    test_loss, test_acc = evaluate(model, test_loader, criterion, device)
    flor.log("test_acc", test_acc)
    print(f'test loss {test_loss:.4f} | test acc {test_acc:.4f}')
    torch.save(model.state_dict(), 'effnet_pets.pt')


if __name__ == '__main__':
    main()
