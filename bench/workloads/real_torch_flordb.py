"""FlorDB 4.0.1's twin of workloads/real_torch.py: the same script, instrumented as FlorDB's
docs say. The lines that differ: `import flordb as flor`; `parse_known_args()` (FlorDB's
replay adds its own flags, `--replay_flor --apply ...`, to the script's argv); the options go
through `flor.arg(name, default)`, which records them and, in a replay, returns the recorded
values (FlorDB's replay runs `python train.py --replay_flor ...`, without the recorded
command line). `flor.checkpointing(...)` is kept: a retired no-op in 4.0.1 (it warns once).
"""

import argparse
import json
import os
import time


def _mark(label):
    path = os.environ.get("REPLAY_MARKS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"label": label, "t": time.time(), "pid": os.getpid()}) + "\n")


_mark("start")

import flordb as flor  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.optim.lr_scheduler import StepLR  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.fc1 = nn.Linear(16 * 12 * 12, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def synthetic_mnist(n, seed):
    """n 28x28 images of 10 classes: a smooth prototype per class, shifted, plus noise."""
    protos = F.avg_pool2d(
        torch.rand(10, 1, 34, 34, generator=torch.Generator().manual_seed(0)), 7, 1
    )
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 10, (n,), generator=g)
    shift = torch.randint(-2, 3, (n, 2), generator=g)
    data = protos[target]
    for dx in range(-2, 3):
        for dy in range(-2, 3):
            rows = ((shift[:, 0] == dx) & (shift[:, 1] == dy)).nonzero().flatten()
            data[rows] = torch.roll(data[rows], (dx, dy), dims=(2, 3))
    data += 0.35 * torch.randn(n, 1, 28, 28, generator=g)
    return (data - data.mean()) / data.std(), target


def train(args, model, device, train_loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print(
                f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)}]"
                f"\tLoss: {loss.item():.6f}"
            )


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    flor.log("loss", test_loss)
    flor.log("acc", correct / len(test_loader.dataset))
    print(
        f"Test set: Average loss: {test_loss:.4f}, Accuracy: {correct}/{len(test_loader.dataset)}"
    )


def main():
    parser = argparse.ArgumentParser(description="synthetic MNIST")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--gamma", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--log-interval", type=int, default=50)
    args, _ = parser.parse_known_args()
    for name in ("batch_size", "epochs", "lr", "gamma", "seed", "n_train"):
        setattr(args, name, flor.arg(name, getattr(args, name)))

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")

    train_data = TensorDataset(*synthetic_mnist(args.n_train, seed=1234))
    test_data = TensorDataset(*synthetic_mnist(1000, seed=4321))
    train_loader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_data, batch_size=1000)

    model = Net().to(device)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)

    _mark("loop_start")
    with flor.checkpointing(model=model, optimizer=optimizer, scheduler=scheduler):
        for epoch in flor.loop("epoch", range(1, args.epochs + 1)):
            train(args, model, device, train_loader, optimizer, epoch)
            test(model, device, test_loader)
            scheduler.step()
    _mark("loop_end")


if __name__ == "__main__":
    main()
    _mark("end")
