import os
import cPickle as pickle

import numpy as np
import torch
import torch.nn as nn

import flor_flows as flor

CKPT_DIR = 'checkpoints'
if not os.path.isdir(CKPT_DIR):
    os.makedirs(CKPT_DIR, 0755)


def load_cifar_batch(path):
    with open(path, 'rb') as f:
        d = pickle.load(f)
    x = d['data'].reshape(-1, 3, 32, 32).astype('float32') / 255.
    return torch.from_numpy(x), torch.LongTensor(d['labels'])


def get_model(name):
    if name == 'mlp':
        return nn.Sequential(nn.Flatten(), nn.Linear(3072, 512), nn.ReLU(), nn.Linear(512, 10))
    elif name == 'cnn':
        return nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, 10))
    raise ValueError, 'unknown model %s' % name


xs, ys = zip(*[load_cifar_batch('cifar-10-batches-py/data_batch_%d' % k) for k in range(1, 6)])
X, Y = torch.cat(xs), torch.cat(ys)
model = get_model('cnn')
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
for epoch in range(20):
    perm = torch.randperm(len(X))
    for k in range(0, len(X), 128):
        idx = perm[k:k + 128]
        loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), os.path.join(CKPT_DIR, 'cnn_%02d.pt' % epoch))
