# Tiny DDPM on MNIST: predict the noise, MSE loss, EMA of the weights.
import copy
from itertools import cycle
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.utils import save_image

from unet import UNet
import flor_flows as flor

cfg = SimpleNamespace(max_steps=50_000, lr=2e-4, batch_size=128, T=1000,
                      ema_decay=0.999, sample_every=5000)

loader = DataLoader(
    datasets.MNIST('data', train=True, download=True, transform=transforms.ToTensor()),
    batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=4)

betas = torch.linspace(1e-4, 0.02, cfg.T)
alphas_bar = torch.cumprod(1.0 - betas, dim=0)

model = UNet(in_ch=1, base=64).cuda()
ema = copy.deepcopy(model).eval()
opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)


@torch.no_grad()
def ema_update(ema, model, decay):
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm, alpha=1 - decay)


data_iter = cycle(loader)
for step in range(cfg.max_steps):
    x0, _ = next(data_iter)
    x0 = x0.cuda() * 2 - 1
    t = torch.randint(0, cfg.T, (x0.size(0),), device=x0.device)
    noise = torch.randn_like(x0)
    ab = alphas_bar.to(x0.device)[t].view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    loss = F.mse_loss(model(xt, t), noise)

    opt.zero_grad()
    loss.backward()
    opt.step()
    ema_update(ema, model, cfg.ema_decay)
    flor.log("loss", loss.item())

    if step % cfg.sample_every == 0:
        torch.save(ema.state_dict(), f'ema_{step:06d}.pt')
