"""Speech commands keyword spotting -- small 1D CNN on MFCCs."""
import torch
import torch.nn as nn
import torchaudio
from torch.utils.data import DataLoader

from kws_data import SubsetSC, collate_fn, LABELS
import flor_flows as flor

BATCH = 256
EPOCHS = 30
N_MFCC = 40


class KWSNet(nn.Module):
    def __init__(self, n_in=N_MFCC, n_out=len(LABELS)):
        super(KWSNet, self).__init__()
        self.body = nn.Sequential(
            nn.Conv1d(n_in, 64, 3, padding=1), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 64, 3, padding=1), nn.BatchNorm1d(64), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(64, n_out)

    def forward(self, x):
        return self.head(self.body(x).squeeze(-1))


def evaluate(model, loader, mfcc):
    model.eval()
    total_loss, n = 0., 0
    for wav, target in loader:
        feats = mfcc(wav).squeeze(1)
        out = model(feats).detach()
        total_loss += nn.functional.cross_entropy(out, target, reduction='sum').item()
        n += target.numel()
    flor.log("val_loss", total_loss / n)
    model.train()
    return total_loss / n


train_loader = DataLoader(SubsetSC('training'), batch_size=BATCH, shuffle=True, collate_fn=collate_fn)
val_loader = DataLoader(SubsetSC('validation'), batch_size=BATCH, collate_fn=collate_fn)
mfcc = torchaudio.transforms.MFCC(sample_rate=16000, n_mfcc=N_MFCC)
model = KWSNet()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)

for epoch in range(EPOCHS):
    for wav, target in train_loader:
        loss = nn.functional.cross_entropy(model(mfcc(wav).squeeze(1)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(epoch, 'val loss', evaluate(model, val_loader, mfcc))
torch.save(model.state_dict(), 'kws.pt')
