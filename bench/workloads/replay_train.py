"""The training script of the replay benchmark (a template: see workloads/replay.py).

A PyTorch MLP on scikit-learn's digits (CPU, one thread, no download), the training set
repeated `repeat` times with a little noise so that an epoch takes long enough to measure.
`flor.loop("epoch")` under `flor.checkpointing(model, optimizer)` holds a nested
`flor.loop("step")` of training steps, then a small evaluation. The harness copies this file
into a project as train.py, with the import line below naming the implementation
(flor_flows or flordb), and adds the hindsight statements for the new version next to the
anchor lines `loss.backward()`, `flor.log("acc", acc)` and `_mark("loop_end")`.

`_mark(label)` appends the wall-clock time of a point of the script to the file named by
REPLAY_MARKS (when set): how the harness splits a run into set-up, training and the rest.
"""

import json
import os
import time


def _mark(label):
    path = os.environ.get("REPLAY_MARKS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"label": label, "t": time.time(), "pid": os.getpid()}) + "\n")


_mark("start")

import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

import flor_flows as flor  # noqa: E402

torch.set_num_threads(1)
lr = flor.arg("lr", 0.02)
epochs = flor.arg("epochs", 20)
repeat = flor.arg("repeat", 8)
batch_size = flor.arg("batch_size", 32)
hidden = flor.arg("hidden", 512)
seed = flor.arg("seed", 0)

torch.manual_seed(seed)
X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
y = torch.tensor(y)
order = torch.randperm(len(X))
n_test = len(X) // 5
test_idx, train_idx = order[:n_test], order[n_test:]
X_train = torch.cat([X[train_idx] + 0.05 * torch.randn(len(train_idx), 64) for _ in range(repeat)])
y_train = y[train_idx].repeat(repeat)
n_train = len(X_train)
n_batches = (n_train + batch_size - 1) // batch_size

net = nn.Sequential(
    nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
)
opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()

_mark("loop_start")
with flor.checkpointing(model=net, optimizer=opt):
    for _ in flor.loop("epoch", range(epochs)):
        perm = torch.randperm(n_train)
        net.train()
        for b in flor.loop("step", range(n_batches)):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            opt.zero_grad()
            loss = loss_fn(net(X_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            flor.log("loss", loss.item())
        net.eval()
        with torch.no_grad():
            acc = (net(X[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
        flor.log("acc", acc)
_mark("loop_end")
flor.commit()
_mark("end")
