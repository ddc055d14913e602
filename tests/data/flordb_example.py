# A FlorDB 4.0.1 training script in the style of FlorDB's README "Application Programming
# Interface" section: args, checkpointing, nested loops, logs, an explicit commit and a query.
# tests/test_flordb_compat.py runs it with only its import line changed.
import flordb as flor
import torch

hidden_size = flor.arg("hidden", default=16)
num_epochs = flor.arg("epochs", 3)
batch_size = flor.arg("batch_size", 32)
learning_rate = flor.arg("lr", 1e-2)

torch.manual_seed(0)
inputs = torch.randn(256, 8)
labels = (inputs.sum(dim=1) > 0).long()
dataset = torch.utils.data.TensorDataset(inputs, labels)
trainloader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
net = torch.nn.Sequential(
    torch.nn.Linear(8, hidden_size), torch.nn.ReLU(), torch.nn.Linear(hidden_size, 2)
)
optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate)
criterion = torch.nn.CrossEntropyLoss()

with flor.checkpointing(model=net, optimizer=optimizer):
    for epoch in flor.loop("epoch", range(num_epochs)):
        for data in flor.loop("step", trainloader):
            inputs, labels = data
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            flor.log("loss", loss.item())
            optimizer.step()
        with torch.no_grad():
            correct = (net(dataset.tensors[0]).argmax(dim=1) == dataset.tensors[1]).sum().item()
        flor.log("accuracy", 100.0 * correct / len(dataset))

flor.commit()
print(flor.dataframe("loss", "accuracy").tail(3))
print(flor.query("SELECT COUNT(*) AS n FROM logs"))
