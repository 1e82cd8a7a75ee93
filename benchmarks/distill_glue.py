"""Distillation vs plain label recovery of a pruned MiniLM-L6 (SST-2): same plan, steps, learning rate and seeds.

From ../shared/models/minilm-l6-sst2 (dev accuracy 0.8761), 50% of the heads (Michel scores, global) and 50% of the
FFN neurons (Taylor scores, global) are removed physically; then --steps optimisation steps on SST-2 train with
either `hfprune.DistillationTrainer` (teacher = the model before pruning, alpha / temperature below) or a plain
`transformers.Trainer` on the labels. Dev accuracy per seed, mean and spread (max - min).

    nice -n 10 python benchmarks/distill_glue.py --steps 300 --seeds 0,1,2

Prints a markdown table (with the command line, machine and date). Not a test.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import hfprune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_glue import TASKS, evaluate, make_batches, read_tsv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_dataset(tokenizer, rows, max_length: int = 64):
    from datasets import Dataset

    enc = tokenizer([r[0][0] for r in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                              "labels": [r[1] for r in rows]})


def recover(student, teacher, data, collator, *, distill: bool, steps: int, lr: float, seed: int, batch: int,
            alpha: float, temperature: float, hidden_weight: float) -> float:
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch,
                                 learning_rate=lr, seed=seed, data_seed=seed, report_to="none", use_cpu=True,
                                 save_strategy="no", logging_steps=max(1, steps // 5), disable_tqdm=True,
                                 lr_scheduler_type="linear", warmup_steps=0)
        common = {"args": args, "train_dataset": data, "data_collator": collator}
        if distill:
            trainer = hfprune.DistillationTrainer(student, teacher_model=teacher, alpha=alpha,
                                                  temperature=temperature, hidden_weight=hidden_weight, **common)
        else:
            trainer = Trainer(student, **common)
        t0 = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--hidden-weight", type=float, default=0.0)
    parser.add_argument("--score-samples", type=int, default=256)
    parser.add_argument("--dev-limit", type=int, default=None)
    parser.add_argument("--modes", default="distill,labels", help="which recoveries to run (distill, labels)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    started = time.time()
    spec = TASKS["sst2"]
    path = ROOT / "../shared/models" / spec["model"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = AutoModelForSequenceClassification.from_pretrained(path).eval()
    data_dir = ROOT / "../shared/data/glue" / spec["data"]
    train = read_tsv(data_dir / "train.tsv", spec)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    score = make_batches(tokenizer, [train[i] for i in order[:args.score_samples]], 32)
    # Recovery data: train sentences not used for scoring, enough for every step to see fresh examples.
    data = train_dataset(tokenizer, [train[i] for i in order[args.score_samples:args.score_samples
                                                                 + args.steps * args.batch_size]])
    dev_rows = read_tsv(data_dir / "dev.tsv", spec)[:args.dev_limit]
    dev = make_batches(tokenizer, sorted(dev_rows, key=lambda r: len(r[0][0])), 64)
    dense_acc = evaluate(dense, dev, "acc")

    heads = hfprune.head_importance(dense, score, criterion="michel", show_progress=False)
    neurons = hfprune.neuron_importance(dense, score, criterion="taylor", show_progress=False)
    plan = hfprune.PruningPlan(heads=hfprune.select_heads(heads, ratio=0.5).heads,
                               neurons=hfprune.select_neurons(neurons, ratio=0.5).neurons)
    pruned = copy.deepcopy(dense)
    hfprune.prune(pruned, plan)
    pruned_acc = evaluate(pruned, dev, "acc")
    print(f"dense {dense_acc:.4f}, pruned (no recovery) {pruned_acc:.4f}", file=sys.stderr)
    collator = DataCollatorWithPadding(tokenizer)

    results: dict[str, list[float]] = {"distill": [], "labels": []}
    seconds: dict[str, list[float]] = {"distill": [], "labels": []}
    for seed in seeds:
        for mode in args.modes.split(","):
            student = copy.deepcopy(pruned)
            wall = recover(student, copy.deepcopy(dense), data, collator, distill=mode == "distill",
                           steps=args.steps, lr=args.lr, seed=seed, batch=args.batch_size, alpha=args.alpha,
                           temperature=args.temperature, hidden_weight=args.hidden_weight)
            student.eval()
            results[mode].append(evaluate(student, dev, "acc"))
            seconds[mode].append(wall)
            print(f"seed {seed} {mode}: {results[mode][-1]:.4f} ({wall:.0f} s)", file=sys.stderr)

    print(f"`{' '.join(['python', *sys.argv])}`  \n{platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"total {time.time() - started:.0f} s  \n"
          f"SST-2 dev accuracy ({len(dev_rows)} examples); dense {dense_acc:.4f}; after removing "
          f"{plan.num_heads()} heads + {plan.num_neurons()} FFN neurons (50% / 50%, no recovery) {pruned_acc:.4f}; "
          f"{args.steps} steps, batch {args.batch_size}, lr {args.lr}, linear decay; distillation alpha {args.alpha}, "
          f"T {args.temperature}, hidden_weight {args.hidden_weight}\n")
    print("| recovery | seeds | per seed | mean | spread (max - min) | s / step |")
    print("|---|---|---|---|---|---|")
    for mode, label in (("distill", "DistillationTrainer (teacher = dense)"), ("labels", "Trainer on labels")):
        accs = results[mode]
        if not accs:
            continue
        print(f"| {label} | {','.join(map(str, seeds))} | {' / '.join(f'{a:.4f}' for a in accs)} | "
              f"{statistics.fmean(accs):.4f} | {max(accs) - min(accs):.4f} | "
              f"{statistics.fmean(seconds[mode]) / args.steps:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
