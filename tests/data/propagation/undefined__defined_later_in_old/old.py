"""Autoencoder anomaly detector for sensor windows."""
import numpy as np
import torch
from torch import nn

import flor_flows as flor

SETTINGS = {"window": 128, "channels": 12, "latent": 16, "epochs": 40, "lr": 1e-3}

windows = np.load("sensor_windows.npy")  # (N, channels, window), normal operation only
X = torch.tensor(windows, dtype=torch.float32)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=256, shuffle=True)


class ConvAE(nn.Module):
    def __init__(self, c, latent):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv1d(c, 32, 7, stride=2, padding=3), nn.ReLU(),
                                 nn.Conv1d(32, latent, 7, stride=2, padding=3))
        self.dec = nn.Sequential(nn.ConvTranspose1d(latent, 32, 8, stride=2, padding=3), nn.ReLU(),
                                 nn.ConvTranspose1d(32, c, 8, stride=2, padding=3))

    def forward(self, x):
        return self.dec(self.enc(x))


model = ConvAE(SETTINGS["channels"], SETTINGS["latent"])
optimizer = torch.optim.Adam(model.parameters(), lr=SETTINGS["lr"])

for epoch in range(SETTINGS["epochs"]):
    for (xb,) in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(xb), xb)
        loss.backward()
        optimizer.step()

# summary + threshold for deployment
n_params = sum(p.numel() for p in model.parameters())
with torch.no_grad():
    err = ((model(X) - X) ** 2).mean(dim=(1, 2))
threshold = err.mean() + 3 * err.std()
print(f"{n_params} params, threshold {threshold:.5f}")
torch.save({"model": model.state_dict(), "threshold": threshold}, "ae.pt")
