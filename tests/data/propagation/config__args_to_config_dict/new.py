import sys

import torch
import torch.nn.functional as F
import yaml

from protonet import ProtoNet, EpisodicOmniglot, prototypical_loss
import flor_flows as flor

config = {
    "n_way": 60,
    "k_shot": 5,
    "n_query": 5,
    "episodes": 100,
    "epochs": 100,
    "lr": 1e-3,
}
if len(sys.argv) > 1:
    with open(sys.argv[1]) as f:
        config.update(yaml.safe_load(f))

sampler = EpisodicOmniglot("data/omniglot", config["n_way"], config["k_shot"], config["n_query"])
model = ProtoNet(x_dim=1, hid_dim=64, z_dim=64).cuda()
optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)

for epoch in range(config["epochs"]):
    model.train()
    accs = []
    for episode in range(config["episodes"]):
        support, query = sampler.sample()
        loss, acc = prototypical_loss(model(support.cuda()), model(query.cuda()), config["n_way"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accs.append(acc)
    scheduler.step()
    flor.log("lr", optimizer.param_groups[0]["lr"])
    print("epoch %d: mean episode acc %.4f" % (epoch, sum(accs) / len(accs)))
torch.save(model.state_dict(), "protonet.pt")
