import argparse

import torch
import torch.nn.functional as F

from protonet import ProtoNet, EpisodicOmniglot, prototypical_loss
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument('--n-way', type=int, default=60)
parser.add_argument('--k-shot', type=int, default=5)
parser.add_argument('--n-query', type=int, default=5)
parser.add_argument('--episodes', type=int, default=100)
parser.add_argument('--epochs', type=int, default=100)
parser.add_argument('--lr', type=float, default=1e-3)
args = parser.parse_args()

sampler = EpisodicOmniglot('data/omniglot', args.n_way, args.k_shot, args.n_query)
model = ProtoNet(x_dim=1, hid_dim=64, z_dim=64).cuda()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)

for epoch in range(args.epochs):
    model.train()
    accs = []
    for episode in range(args.episodes):
        support, query = sampler.sample()
        loss, acc = prototypical_loss(model(support.cuda()), model(query.cuda()), args.n_way)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accs.append(acc)
    scheduler.step()
    flor.log("lr", optimizer.param_groups[0]["lr"])
    print('epoch %d: mean episode acc %.4f' % (epoch, sum(accs) / len(accs)))
torch.save(model.state_dict(), 'protonet.pt')
