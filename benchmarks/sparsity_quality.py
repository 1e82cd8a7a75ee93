"""SST-2 dev accuracy of weight-level pruning at several sparsities: magnitude one-shot, Taylor one-shot, and gradual
magnitude pruning during fine-tuning (GradualPruningCallback, cubic schedule).

Starting point: ../shared/models/minilm-l6-sst2, i.e. all-MiniLM-L6-v2 fine-tuned on SST-2 (dev accuracy 0.8761).
Targets: the attention and FFN projections of the 6 layers (the classifier and embeddings stay dense), layer-wise.

    python benchmarks/sparsity_quality.py                       # ~25 min on 2 shared CPU cores
    python benchmarks/sparsity_quality.py --steps 20 --sparsities 0.5   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from sparsity_common import Encoded, accuracy, batches, read_glue_tsv
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hfprune.sparsity import GradualPruningCallback, sparsify


def load(path):
    return AutoModelForSequenceClassification.from_pretrained(path).eval()


def gradual(args, train, collate, sparsity, out_dir) -> tuple[torch.nn.Module, float]:
    model = load(args.model)
    end = int(args.prune_fraction * args.steps)
    callback = GradualPruningCallback(sparsity, start_step=0, end_step=end, frequency=max(1, end // 8))
    targs = TrainingArguments(output_dir=str(out_dir), max_steps=args.steps,
                              per_device_train_batch_size=args.batch_size,
                              learning_rate=args.lr, weight_decay=0.01, warmup_steps=0, logging_steps=20,
                              save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0)
    Trainer(model=model, args=targs, train_dataset=train, data_collator=collate, callbacks=[callback]).train()
    return model.eval(), callback.handle.sparsity()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="../shared/models/minilm-l6-sst2")
    parser.add_argument("--data", default="../shared/data/glue/SST-2")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--taylor-batches", type=int, default=8, help="train batches scored by Taylor")
    parser.add_argument("--steps", type=int, default=120, help="fine-tuning steps of the gradual runs")
    parser.add_argument("--prune-fraction", type=float, default=0.7, help="share of the steps spent pruning")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--methods", nargs="+", default=["magnitude", "taylor", "gradual"],
                        choices=["magnitude", "taylor", "gradual"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    collate = DataCollatorWithPadding(tokenizer)
    data = Path(args.data)
    dev = Encoded(tokenizer, *read_glue_tsv(data / "dev.tsv"), args.max_length)
    n_train = args.steps * args.batch_size + args.taylor_batches * args.batch_size
    sentences, labels = read_glue_tsv(data / "train.tsv")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n_train].tolist()
    train = Encoded(tokenizer, [sentences[i] for i in perm], [labels[i] for i in perm], args.max_length)
    taylor_data = list(batches(train, collate, args.batch_size, range(args.taylor_batches * args.batch_size)))

    rows = []
    dense = accuracy(load(args.model), dev, collate)
    rows.append(("dense (no pruning)", 0.0, 0.0, dense, 0.0))
    print(f"dense: {dense:.4f}", flush=True)
    for s in args.sparsities:
        for method, name, kwargs in (("magnitude", "magnitude one-shot", {}),
                                     ("taylor", "Taylor one-shot", {"criterion": "taylor", "dataloader": taylor_data})):
            if method not in args.methods:
                continue
            t = time.time()
            model = load(args.model)
            handle = sparsify(model, s, **kwargs)
            acc = accuracy(model, dev, collate)
            rows.append((name, s, handle.sparsity(), acc, time.time() - t))
            print(f"{name} {s}: {acc:.4f} ({time.time() - t:.0f}s)", flush=True)
        if "gradual" not in args.methods:
            continue
        t = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            model, measured = gradual(args, train, collate, s, tmp)
        acc = accuracy(model, dev, collate)
        rows.append((f"gradual magnitude + fine-tune ({args.steps} steps, lr {args.lr:g})", s, measured, acc,
                     time.time() - t))
        print(f"gradual {s}: {acc:.4f} ({time.time() - t:.0f}s)", flush=True)

    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}; date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"total {time.time() - started:.0f}s")
    print(f"model: {args.model} (all-MiniLM-L6-v2 fine-tuned on SST-2); SST-2 dev, {len(dev)} sentences; "
          f"targets: attention + FFN projections of every layer, layer-wise; Taylor: {args.taylor_batches} batches "
          f"of {args.batch_size}; gradual: cubic schedule 0 -> s over the first {args.prune_fraction:.0%} of "
          f"{args.steps} steps x {args.batch_size} train sentences, lr {args.lr}")
    print()
    print("| method | target sparsity | measured sparsity | SST-2 dev accuracy | time (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, s, measured, acc, seconds in rows:
        print(f"| {name} | {s:.0%} | {measured:.4f} | {acc:.4f} | {seconds:.0f} |")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("method", "sparsity", "measured", "accuracy", "seconds"), r))
                                         for r in rows], indent=1))


if __name__ == "__main__":
    main()
