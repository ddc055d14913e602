import argparse
import torch
import torch.nn as nn

from speech import LibriSpeech, Conformer, ctc_collate
import flor_flows as flor

ap = argparse.ArgumentParser()
ap.add_argument('--epochs', type=int, default=50)
ap.add_argument('--peak-lr', type=float, default=1e-3)
ap.add_argument('--warmup', type=int, default=10000)
args = ap.parse_args()

ds = LibriSpeech('data/librispeech', 'train-clean-100')
dl = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ctc_collate, num_workers=8)
model = Conformer(n_mels=80, vocab=ds.vocab_size).cuda()
optimizer = torch.optim.AdamW(model.parameters(), lr=args.peak_lr, betas=(0.9, 0.98), weight_decay=1e-3)
noam = lambda s: min((s + 1) / args.warmup, (args.warmup / (s + 1)) ** 0.5)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam)
ctc = nn.CTCLoss(zero_infinity=True)

gstep = 0
for epoch in range(args.epochs):
    for i, (feats, feat_lens, labels, label_lens) in enumerate(dl):
        logp, out_lens = model(feats.cuda(), feat_lens.cuda())
        loss = ctc(logp.transpose(0, 1), labels.cuda(), out_lens, label_lens.cuda())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        flor.log("lr", optimizer.param_groups[0]["lr"])
        gstep += 1
    torch.save(model.state_dict(), f'conformer_ep{epoch}.pt')
