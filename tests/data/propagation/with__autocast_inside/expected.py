import argparse

import torch
from datasets import load_dataset
from torch.utils.data import DataLoader
from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, get_linear_schedule_with_warmup)

import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument('--model', default='distilbert-base-uncased')
parser.add_argument('--epochs', type=int, default=3)
parser.add_argument('--lr', type=float, default=5e-5)
parser.add_argument('--bs', type=int, default=32)
args = parser.parse_args()

device = torch.device('cuda')
tok = AutoTokenizer.from_pretrained(args.model)
raw = load_dataset('imdb')
enc = raw.map(lambda b: tok(b['text'], truncation=True, max_length=256), batched=True)
enc = enc.remove_columns(['text']).rename_column('label', 'labels')
enc.set_format('torch')
collate = DataCollatorWithPadding(tok)
train_loader = DataLoader(enc['train'], shuffle=True, batch_size=args.bs, collate_fn=collate)
eval_loader = DataLoader(enc['test'], batch_size=64, collate_fn=collate)

model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
num_steps = args.epochs * len(train_loader)
lr_scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * num_steps), num_steps)

for epoch in range(args.epochs):
    model.train()
    for step, batch in enumerate(train_loader):
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = model(**batch)
        loss = outputs.loss
        flor.log("loss", loss.item())
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()

    model.eval()
    correct = 0
    for batch in eval_loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            logits = model(**batch).logits
        correct += (logits.argmax(-1) == batch['labels']).sum().item()
    print(f'epoch {epoch}: accuracy {correct / len(enc["test"]):.4f}')

model.save_pretrained('imdb-distilbert')
