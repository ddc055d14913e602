import argparse
import time

import torch
import torch.nn as nn

from detection import build_fasterrcnn, CocoDetection, collate_fn
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument('--coco', default='/datasets/coco')
parser.add_argument('--epochs', type=int, default=26)
parser.add_argument('--lr', type=float, default=0.02)
parser.add_argument('--batch-size', type=int, default=4)
args = parser.parse_args()

dataset = CocoDetection(args.coco, 'train2017')
loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                     num_workers=4, collate_fn=collate_fn)
model = build_fasterrcnn(num_classes=91).cuda()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[16, 22], gamma=0.1)

for epoch in range(args.epochs):
    model.train()
    start = time.time()
    for it, (images, targets) in enumerate(loader):
        images = [img.cuda() for img in images]
        targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())

        optimizer.zero_grad()
        losses.backward()
        flor.log("loss", losses.item())
        optimizer.step()
        if it % 20 == 0:
            print(f"[{epoch}][{it}/{len(loader)}] loss {losses.item():.4f} {time.time() - start:.0f}s")
    lr_scheduler.step()
    torch.save({'model': model.state_dict(), 'epoch': epoch}, f'model_{epoch}.pth')
