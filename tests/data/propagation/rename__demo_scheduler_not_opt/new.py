"""Train a small digit classifier on the newest batch of labelled images.

v4: fight overfitting on the small daily batches: weight decay (new `weight_decay` arg) and
label smoothing (new `smoothing` arg); the model is unchanged, so runs keep warm-starting.
Run:  python train.py --data batch=data/batches/2026-11-04.csv --kwargs weight_decay=1e-3
"""

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import flor_flows as flor


def load(path):
    """Read a digits CSV (p0..p63, label) into scaled float features and int labels."""
    df = pd.read_csv(path)
    x = torch.tensor(df.drop(columns="label").to_numpy(), dtype=torch.float32) / 16.0
    y = torch.tensor(df["label"].to_numpy(), dtype=torch.long)
    return x, y


def train_one_epoch(model, optimizer, loader, loss_fn):
    """One pass over the batch; logs the training loss of every step."""
    model.train()
    for x, y in flor.loop("step", loader):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        flor.log("loss", loss.item())


def evaluate(model, x_test, y_test, loss_fn):
    """Return (loss, accuracy) on the held-out test split."""
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
        val_loss = loss_fn(logits, y_test).item()
        acc = (logits.argmax(dim=1) == y_test).float().mean().item()
    return val_loss, acc


def main():
    # Hyper-parameters; each can be overridden with --kwargs name=value.
    lr = flor.arg("lr", 0.1)
    epochs = flor.arg("epochs", 6)
    batch_size = flor.arg("batch_size", 32)
    seed = flor.arg("seed", 0)
    weight_decay = flor.arg("weight_decay", 1e-4)
    smoothing = flor.arg("smoothing", 0.05)

    torch.manual_seed(seed)  # the DataLoader shuffles with torch's global RNG
    torch.set_num_threads(1)

    x_train, y_train = load(flor.data("batch", "data/batches/2026-11-01.csv"))
    x_test, y_test = load(flor.data("test", "data/test.csv"))
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    flor.warm_start(model=model)  # continue from the previous run's weights, if asked
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)

    with flor.checkpointing(model=model, optimizer=optimizer, scheduler=scheduler):
        for epoch in flor.loop("epoch", range(epochs)):
            flor.log("lr", scheduler.get_last_lr()[0])
            train_one_epoch(model, optimizer, loader, loss_fn)
            scheduler.step()
            val_loss, acc = evaluate(model, x_test, y_test, loss_fn)
            flor.log("val_loss", val_loss)
            flor.log("acc", acc)
            print(f"epoch {epoch}: val_loss {val_loss:.4f}, test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
