# Word-level language model (LSTM) on a plain-text corpus
import argparse
import math
import time

import torch
import torch.nn as nn

import data
import model as lm

import flor_flows as flor

parser = argparse.ArgumentParser(description='RNN language model')
parser.add_argument('--data', type=str, default='./data/wikitext-2')
parser.add_argument('--emsize', type=int, default=200)
parser.add_argument('--nhid', type=int, default=200)
parser.add_argument('--lr', type=float, default=20)
parser.add_argument('--clip', type=float, default=0.25)
parser.add_argument('--epochs', type=int, default=40)
parser.add_argument('--batch_size', type=int, default=20)
parser.add_argument('--bptt', type=int, default=35)
args = parser.parse_args()

corpus = data.Corpus(args.data)
train_data = lm.batchify(corpus.train, args.batch_size)
ntokens = len(corpus.dictionary)
model = lm.RNNModel('LSTM', ntokens, args.emsize, args.nhid, 2)
criterion = nn.NLLLoss()

lr = args.lr
for epoch in flor.loop("epoch", range(1, args.epochs + 1)):
    model.train()
    total_loss = 0.
    start_time = time.time()
    hidden = model.init_hidden(args.batch_size)
    for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
        data, targets = lm.get_batch(train_data, i, args.bptt)
        hidden = lm.repackage_hidden(hidden)
        model.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        flor.log("loss", loss.item())

        # `clip_grad_norm` helps prevent the exploding gradient problem in RNNs / LSTMs.
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)

        total_loss += loss.item()
        if batch % 200 == 0 and batch > 0:
            cur_loss = total_loss / 200
            print('| epoch {:3d} | lr {:02.2f} | ms/batch {:5.2f} | loss {:5.2f} | ppl {:8.2f}'.format(
                epoch, lr, (time.time() - start_time) * 1000 / 200, cur_loss, math.exp(cur_loss)))
            total_loss = 0
            start_time = time.time()

    with open('model.pt', 'wb') as f:
        torch.save(model, f)
    lr /= 1.5
