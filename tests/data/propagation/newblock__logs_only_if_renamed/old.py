from __future__ import print_function
import argparse
import random

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision.datasets as dset
import torchvision.transforms as transforms
import torchvision.utils as vutils

from dcgan import Generator, Discriminator, weights_init
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument('--dataroot', required=True)
parser.add_argument('--nz', type=int, default=100)
parser.add_argument('--niter', type=int, default=25)
parser.add_argument('--lr', type=float, default=0.0002)
parser.add_argument('--log_interval', type=int, default=100)
args = parser.parse_args()
random.seed(999)
torch.manual_seed(999)

dataset = dset.CelebA(root=args.dataroot, download=False,
                      transform=transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64),
                                                    transforms.ToTensor(),
                                                    transforms.Normalize((0.5,) * 3, (0.5,) * 3)]))
dataloader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=2)
device = torch.device('cuda:0')

netG = Generator(args.nz).to(device)
netG.apply(weights_init)
netD = Discriminator().to(device)
netD.apply(weights_init)
criterion = nn.BCELoss()
fixed_noise = torch.randn(64, args.nz, 1, 1, device=device)
optimizerD = optim.Adam(netD.parameters(), lr=args.lr, betas=(0.5, 0.999))
optimizerG = optim.Adam(netG.parameters(), lr=args.lr, betas=(0.5, 0.999))

for epoch in range(args.niter):
    for i, data in enumerate(dataloader, 0):
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        real = data[0].to(device)
        b = real.size(0)
        label = torch.full((b,), 1., device=device)
        lossD_real = criterion(netD(real).view(-1), label)
        lossD_real.backward()
        fake = netG(torch.randn(b, args.nz, 1, 1, device=device))
        label.fill_(0.)
        lossD_fake = criterion(netD(fake.detach()).view(-1), label)
        lossD_fake.backward()
        lossD = lossD_real + lossD_fake
        optimizerD.step()

        # (2) Update G: maximize log(D(G(z)))
        netG.zero_grad()
        label.fill_(1.)
        lossG = criterion(netD(fake).view(-1), label)
        lossG.backward()
        optimizerG.step()

    vutils.save_image(netG(fixed_noise).detach(), 'fake_samples_epoch_%03d.png' % epoch, normalize=True)
    torch.save(netG.state_dict(), 'netG_epoch_%d.pth' % epoch)
