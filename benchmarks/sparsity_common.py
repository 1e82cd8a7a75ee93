"""Helpers shared by the sparsity benchmarks: a local SST-2 reader, tokenised dataset and dev accuracy.

(Deliberately local: the benchmarks do not depend on hfprune's data module.)
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch


def read_glue_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    """SST-2 TSV (`sentence<TAB>label`); the sentences contain bare quotes, hence QUOTE_NONE."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, rows = rows[0], rows[1:]
    s, y = header.index("sentence"), header.index("label")
    rows = rows[:limit] if limit else rows
    return [r[s] for r in rows], [int(r[y]) for r in rows]


class Encoded(torch.utils.data.Dataset):
    def __init__(self, tokenizer, sentences, labels, max_length):
        self.enc = tokenizer(sentences, truncation=True, max_length=max_length)
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                "labels": self.labels[i]}


def batches(dataset, collate, batch_size, order=None):
    order = order if order is not None else range(len(dataset))
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield collate([dataset[i] for i in order[start:start + batch_size]])


@torch.no_grad()
def accuracy(model, dev, collate, batch_size=64) -> float:
    model.eval()
    order = sorted(range(len(dev)), key=lambda i: len(dev[i]["input_ids"]))  # less padding, same result
    correct = 0
    for batch in batches(dev, collate, batch_size, order):
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(dev)
