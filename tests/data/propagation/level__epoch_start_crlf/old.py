import os
import argparse
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader

from dataset import HandwritingDataset
from crnn import CRNN
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument('--root', default=r'D:\datasets\iam')
parser.add_argument('--nepochs', type=int, default=60)
parser.add_argument('--lr', type=float, default=0.0005)
parser.add_argument('--decay', type=float, default=0.97)
args = parser.parse_args()

train_set = HandwritingDataset(os.path.join(args.root, 'train'))
train_loader = DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=train_set.collate)

crnn = CRNN(n_classes=len(train_set.alphabet) + 1)
ctc = nn.CTCLoss(blank=0, zero_infinity=True)
optimizer = optim.Adam(crnn.parameters(), lr=args.lr)
scheduler = optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.decay)

for epoch in range(args.nepochs):
    crnn.train()
    for images, targets, target_lengths in train_loader:
        log_probs = crnn(images).log_softmax(2)
        input_lengths = torch.full((images.size(0),), log_probs.size(0), dtype=torch.long)
        loss = ctc(log_probs, targets, input_lengths, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(crnn.parameters(), 5)
        optimizer.step()
    scheduler.step()
    torch.save(crnn.state_dict(), os.path.join('expr', 'crnn_%d.pth' % epoch))
