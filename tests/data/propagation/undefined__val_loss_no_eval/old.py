import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ner import ConllDataset, BiLSTMCRF, pad_collate
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--lr", type=float, default=0.015)
args = parser.parse_args()

train = ConllDataset("data/conll2003/train.txt")
train_loader = DataLoader(train, batch_size=10, shuffle=True, collate_fn=pad_collate)

model = BiLSTMCRF(len(train.words), len(train.tags), emb_dim=100, hidden=200)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0 / (1.0 + 0.05 * e))

for epoch in range(args.epochs):
    model.train()
    total = 0.0
    for words, tags, mask in train_loader:
        optimizer.zero_grad()
        nll = model.neg_log_likelihood(words, tags, mask)
        nll.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        total += nll.item()
    scheduler.step()
    print("epoch", epoch, "train nll", total / len(train_loader))
torch.save(model.state_dict(), "bilstm_crf.pt")
