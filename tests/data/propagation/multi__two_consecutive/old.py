import argparse

import torch
import torch.nn as nn

from timeseries import load_electricity, windowed
import flor_flows as flor


class LSTMForecaster(nn.Module):
    def __init__(self, n_features, hidden=128, horizon=24):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=2, batch_first=True, dropout=0.1)
        self.proj = nn.Linear(hidden, horizon)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.proj(out[:, -1])


parser = argparse.ArgumentParser()
parser.add_argument("--window", type=int, default=168)
parser.add_argument("--horizon", type=int, default=24)
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--lr", type=float, default=1e-3)
args = parser.parse_args()

series = load_electricity("data/LD2011_2014.txt")
train_loader = windowed(series[:-2000], args.window, args.horizon, batch_size=64, shuffle=True)
model = LSTMForecaster(series.shape[1], horizon=args.horizon)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
loss_fn = nn.L1Loss()

for epoch in range(args.epochs):
    total, n = 0.0, 0
    for x, y in train_loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y[:, :, 0])
        loss.backward()
        optimizer.step()
        total += loss.item() * x.size(0)
        n += x.size(0)
    scheduler.step(total / n)
    print(f"epoch {epoch:2d}  train MAE {total / n:.4f}")

torch.save(model.state_dict(), "lstm_forecaster.pt")
