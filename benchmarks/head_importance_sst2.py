"""Head importance on a real model: remove 25/50/75% of the heads of MiniLM-L6 fine-tuned on SST-2, no retraining.

Starting point: ../shared/models/minilm-l6-sst2 (all-MiniLM-L6-v2 fine-tuned on SST-2; dev accuracy 0.8761 as
shipped). Heads are scored on SST-2 *train* sentences (Michel et al., 2019: |dL/dg_h| per head), then the lowest
are masked and dev accuracy is measured. Baselines: weight magnitude (L1) and random selections (3 seeds); also the
Taylor and Fisher criteria and Michel's iterative mode (10% per step, re-scored under the mask). One plan is also
pruned physically, to check that masked and pruned models agree.

    nice -n 10 python benchmarks/head_importance_sst2.py --score-samples 256

Prints a markdown table (with the command line, machine and date). Not a test.
"""

from __future__ import annotations

import argparse
import copy
import csv
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import hfprune

ROOT = Path(__file__).resolve().parents[1]


def read_tsv(path: Path, limit: int | None = None) -> list[tuple[str, int]]:
    """GLUE SST-2 TSV (`sentence<TAB>label`); the sentences contain bare quotes, hence QUOTE_NONE."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        s_col, l_col = header.index("sentence"), header.index("label")
        for row in reader:
            rows.append((row[s_col], int(row[l_col])))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def batches(tokenizer, rows, batch_size: int, by_length: bool = False) -> list[dict]:
    if by_length:  # less padding: evaluation is the bulk of this script's time
        rows = sorted(rows, key=lambda r: len(tokenizer.tokenize(r[0])))
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tokenizer([s for s, _ in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt")
        enc = dict(enc)
        enc["labels"] = torch.tensor([lab for _, lab in chunk])
        out.append(enc)
    return out


@torch.no_grad()
def accuracy(model, dev: list[dict]) -> float:
    correct = total = 0
    for batch in dev:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        pred = model(**inputs).logits.argmax(-1)
        correct += int((pred == batch["labels"]).sum())
        total += batch["labels"].numel()
    return correct / total


def masked_accuracy(model, plan, dev) -> float:
    with hfprune.masked(model, plan):
        return accuracy(model, dev)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "../shared/models/minilm-l6-sst2"))
    parser.add_argument("--data", default=str(ROOT / "../shared/data/glue/SST-2"))
    parser.add_argument("--score-samples", type=int, default=256, help="train sentences used for scoring")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ratios", default="0.25,0.5,0.75")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the random baseline")
    parser.add_argument("--step-ratio", type=float, default=0.125, help="iterative mode: heads masked per step")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared, oversubscribed machine)")
    parser.add_argument("--no-iterative", action="store_true", help="skip Michel's iterative mode")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    data = Path(args.data)
    # The train file is ordered; a seeded shuffle gives a representative scoring sample.
    train_rows = read_tsv(data / "train.tsv")
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train_rows), generator=generator)[:args.score_samples].tolist()
    score_batches = batches(tokenizer, [train_rows[i] for i in order], args.batch_size)
    dev = batches(tokenizer, read_tsv(data / "dev.tsv"), 64, by_length=True)

    dense = accuracy(model, dev)
    n_heads = sum(hfprune.model_structure(model)["heads"])
    print(f"dense dev accuracy {dense:.4f} ({n_heads} heads)", file=sys.stderr)

    timings = {}
    scores = {}
    for criterion in ("michel", "taylor", "fisher", "magnitude"):
        t0 = time.time()
        scores[criterion] = hfprune.head_importance(model, score_batches, criterion=criterion, show_progress=False)
        timings[criterion] = time.time() - t0
        print(f"scored by {criterion} in {timings[criterion]:.1f} s", file=sys.stderr)

    table: dict[str, dict[float, str]] = {}
    results: dict[str, dict[float, float]] = {}
    for name in ("michel", "taylor", "fisher", "magnitude"):
        results[name] = {r: masked_accuracy(model, hfprune.select_heads(scores[name], ratio=r), dev) for r in ratios}
        table[f"{name} (one-shot)"] = {r: f"{results[name][r]:.4f}" for r in ratios}
        print(f"{name}: {results[name]}", file=sys.stderr)
    random_acc = {r: [] for r in ratios}
    for seed in seeds:
        rnd = hfprune.head_importance(model, criterion="random", seed=seed)
        for r in ratios:
            random_acc[r].append(masked_accuracy(model, hfprune.select_heads(rnd, ratio=r), dev))
    table[f"random ({len(seeds)} seeds, mean ± std)"] = {
        r: f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f}" for r, v in random_acc.items()}
    table["random (each seed)"] = {r: " / ".join(f"{a:.4f}" for a in v) for r, v in random_acc.items()}

    if not args.no_iterative:
        # One run to the largest ratio; the intermediate ratios are evaluated as the loop passes them.
        t0 = time.time()
        iterative = {}
        targets = {round(r * n_heads): r for r in ratios}

        def on_step(plan):
            if plan.num_heads() in targets:
                iterative[targets[plan.num_heads()]] = masked_accuracy(model, plan, dev)

        hfprune.iterative_head_pruning(model, score_batches, step_ratio=args.step_ratio, target_ratio=max(ratios),
                                       on_step=on_step, show_progress=False)
        timings["iterative (incl. its evaluations)"] = time.time() - t0
        missing = [r for r in ratios if r not in iterative]
        if missing:
            raise SystemExit(f"--step-ratio {args.step_ratio} does not pass through ratios {missing}")
        table[f"michel (iterative, {args.step_ratio:.1%}/step)"] = {r: f"{iterative[r]:.4f}" for r in ratios}

    # Physical pruning of the 50% Michel plan must give the masked model's predictions.
    plan = hfprune.select_heads(scores["michel"], ratio=0.5)
    pruned = hfprune.prune(copy.deepcopy(model), plan)
    sample = {k: v for k, v in dev[0].items() if k != "labels"}
    with torch.no_grad(), hfprune.masked(model, plan):
        masked_logits = model(**sample).logits
    with torch.no_grad():
        diff = float((pruned(**sample).logits - masked_logits).abs().max())
    pruned_acc = accuracy(pruned, dev)
    masked_acc = masked_accuracy(model, plan, dev)

    print(f"<!-- produced by: python {' '.join(sys.argv)} -->")
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total wall time {time.time() - start:.0f} s  ")
    print(f"Model: minilm-l6-sst2 ({n_heads} heads), dense dev accuracy {dense:.4f} (872 sentences); scoring on "
          f"{args.score_samples} SST-2 train sentences; heads masked, no retraining; min 1 head per layer.\n")
    print("| heads removed | " + " | ".join(f"{int(r * 100)}% ({round(r * n_heads)})" for r in ratios) + " |")
    print("| --- | " + " | ".join("---" for _ in ratios) + " |")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(row[r] for r in ratios) + " |")
    print(f"\nPruned for real (michel, 50%): dev accuracy {pruned_acc:.4f} (masked: {masked_acc:.4f}), "
          f"max |logit difference| masked vs pruned on one dev batch = {diff:.2e}.  ")
    print("Scoring time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
