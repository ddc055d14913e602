import json
import sys

import torch
import torch.nn.functional as F

from gnn import GCN, load_planetoid
import flor_flows as flor

cfg = json.load(open(sys.argv[1])) if len(sys.argv) > 1 else {"dataset": "Cora", "hidden": 16,
                                                              "lr": 0.01, "epochs": 200, "wd": 5e-4}

data = load_planetoid(cfg["dataset"])
model = GCN(data.num_features, cfg["hidden"], data.num_classes)
optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["wd"])


def train_step():
    model.train()
    optimizer.zero_grad()
    out = model(data.x, data.edge_index)
    loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
    loss.backward()
    optimizer.step()
    return loss.item()


def validate():
    model.eval()
    with torch.no_grad():
        logits = model(data.x, data.edge_index)
        preds = logits.argmax(-1)
    accs = []
    for mask in (data.train_mask, data.val_mask, data.test_mask):
        accs.append(int((preds[mask] == data.y[mask]).sum()) / int(mask.sum()))
    return accs


best_val = 0
for epoch in range(1, cfg["epochs"] + 1):
    loss = train_step()
    train_acc, val_acc, test_acc = validate()
    if val_acc > best_val:
        best_val, best_test = val_acc, test_acc
    if epoch % 10 == 0:
        print(f"{epoch:03d} loss={loss:.4f} train={train_acc:.3f} val={val_acc:.3f} test={test_acc:.3f}")
print("best val", best_val, "test at best val", best_test)
