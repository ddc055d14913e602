# char-level LSTM on tiny-shakespeare
import torch
import torch.nn as nn

import flor_flows as flor

cfg = dict(seq_len=128, batch=32, hidden=256, lr=2e-3, epochs=5)

text = open('input.txt').read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)


class CharLSTM(nn.Module):
    def __init__(self, vocab, hidden):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.head(h)


def batches(data, seq_len, batch):
    n = (len(data) - 1) // (seq_len * batch)
    for k in range(n):
        idx = torch.arange(batch) * seq_len + k * seq_len * batch
        x = torch.stack([data[j:j + seq_len] for j in idx])
        y = torch.stack([data[j + 1:j + seq_len + 1] for j in idx])
        yield x, y


model = CharLSTM(len(chars), cfg['hidden'])
opt = torch.optim.Adam(model.parameters(), lr=cfg['lr'])
xent = nn.CrossEntropyLoss()

for epoch in range(cfg['epochs']):
    loss = 0.0  # running total for the epoch
    nb = 0
    for x, y in batches(data, cfg['seq_len'], cfg['batch']):
        logits = model(x)
        l = xent(logits.view(-1, len(chars)), y.view(-1))
        opt.zero_grad()
        l.backward()
        flor.log("loss", l.item())
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss += l.item()
        nb += 1
    print('epoch', epoch, 'avg loss', loss / nb)
