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
net = Conformer(n_mels=80, vocab=ds.vocab_size).cuda()
opt = torch.optim.AdamW(net.parameters(), lr=args.peak_lr, betas=(0.9, 0.98), weight_decay=1e-3)
noam = lambda s: min((s + 1) / args.warmup, (args.warmup / (s + 1)) ** 0.5)
sch = torch.optim.lr_scheduler.LambdaLR(opt, noam)
ctc = nn.CTCLoss(zero_infinity=True)

gstep = 0
for epoch in range(args.epochs):
    for i, (feats, feat_lens, labels, label_lens) in enumerate(dl):
        logp, out_lens = net(feats.cuda(), feat_lens.cuda())
        loss = ctc(logp.transpose(0, 1), labels.cuda(), out_lens, label_lens.cuda())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step()
        gstep += 1
        if i % 10 == 0:
            flor.log('lr', opt.param_groups[0]['lr'])
    torch.save(net.state_dict(), f'conformer_ep{epoch}.pt')
