import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import flor_flows as flor

hp = dict(epochs=8, lr=1e-3, batch_size=128, latent=20)

loader = DataLoader(datasets.MNIST('data', train=True, download=True, transform=transforms.ToTensor()),
                    batch_size=hp['batch_size'], shuffle=True)


class VAE(nn.Module):
    def __init__(self, latent):
        super().__init__()
        self.enc = nn.Linear(784, 400)
        self.mu = nn.Linear(400, latent)
        self.logvar = nn.Linear(400, latent)
        self.dec1 = nn.Linear(latent, 400)
        self.dec2 = nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.enc(x.view(-1, 784)))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.dec2(F.relu(self.dec1(z)))), mu, logvar


model = VAE(hp['latent'])
optimizer = torch.optim.Adam(model.parameters(), lr=hp['lr'])

for epoch in flor.loop('epoch', range(hp['epochs'])):
    for x, _ in flor.loop('step', loader):
        recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction='sum')
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = (bce + kld) / x.size(0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        flor.log("kl", kld.item() / x.size(0))
        flor.log('loss', loss.item())
        flor.log("recon", bce.item() / x.size(0))
    torch.save(model.state_dict(), 'vae_%d.pt' % epoch)
