import os
import sys

import torch
import torch.nn as nn
import torch.optim as optim

from data_loader import get_loader
from model import EncoderCNN, DecoderRNN
import flor_flows as flor

model_path = 'models/'
crop_size = 224
embed_size, hidden_size, num_layers = 256, 512, 1
num_epochs = 5
learning_rate = 0.001

data_loader = get_loader('data/resized2014', 'data/annotations/captions_train2014.json',
                         crop_size, batch_size=128, shuffle=True, num_workers=2)
encoder = EncoderCNN(embed_size)
decoder = DecoderRNN(embed_size, hidden_size, len(data_loader.dataset.vocab), num_layers)
criterion = nn.CrossEntropyLoss()
params = list(decoder.parameters()) + list(encoder.linear.parameters()) + list(encoder.bn.parameters())
optimizer = optim.Adam(params, lr=learning_rate)

try:
    encoder.load_state_dict(torch.load(os.path.join(model_path, 'encoder-last.pkl')))
    decoder.load_state_dict(torch.load(os.path.join(model_path, 'decoder-last.pkl')))
except OSError as e:
    sys.stderr.write('starting from scratch (%s)\n' % e)

total_step = len(data_loader)
for epoch in range(num_epochs):
    for i, (images, captions, lengths) in enumerate(data_loader):
        targets = nn.utils.rnn.pack_padded_sequence(captions, lengths, batch_first=True)[0]
        features = encoder(images)
        outputs = decoder(features, captions, lengths)
        loss = criterion(outputs, targets)
        decoder.zero_grad()
        encoder.zero_grad()
        loss.backward()
        optimizer.step()
        flor.log("loss", loss.item())
        if i % 10 == 0:
            sys.stdout.write('Epoch [%d/%d], Step [%d/%d], Loss: %.4f\n' % (epoch, num_epochs, i, total_step, loss.item()))
    torch.save(decoder.state_dict(), os.path.join(model_path, 'decoder-last.pkl'))
    torch.save(encoder.state_dict(), os.path.join(model_path, 'encoder-last.pkl'))
