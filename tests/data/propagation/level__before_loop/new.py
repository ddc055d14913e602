# Graph attention network on ogbn-arxiv (full batch)
import torch
import torch.nn.functional as F
from ogb.nodeproppred import PygNodePropPredDataset, Evaluator

from gat import GAT
import flor_flows as flor

dataset = PygNodePropPredDataset('ogbn-arxiv', root='data')
data = dataset[0]
split = dataset.get_idx_split()
evaluator = Evaluator('ogbn-arxiv')
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
data = data.to(device)

model = GAT(data.num_features, hidden=64, heads=4, out=dataset.num_classes).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=0.005, weight_decay=5e-4)
flor.log("n_params", sum(p.numel() for p in model.parameters() if p.requires_grad))

best_valid = 0.0
for epoch in range(1, 501):
    model.train()
    optimizer.zero_grad()
    out = model(data.x, data.edge_index)
    loss = F.nll_loss(out[split['train']], data.y.squeeze(1)[split['train']])
    loss.backward()
    optimizer.step()

    model.eval()
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(dim=-1, keepdim=True)
    valid_acc = evaluator.eval({'y_true': data.y[split['valid']], 'y_pred': pred[split['valid']]})['acc']
    if valid_acc > best_valid:
        best_valid = valid_acc
        torch.save(model.state_dict(), 'gat_best.pt')
    if epoch % 50 == 0:
        print(f'Epoch {epoch:03d}, loss {loss.item():.4f}, valid {valid_acc:.4f}')
