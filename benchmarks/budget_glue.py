"""Retraining-free pruning to a FLOPs budget (Kwon et al., 2022) on MiniLM-L6 fine-tuned on SST-2 and MRPC.

For each budget (fraction of the dense FLOPs at --seq-len, as `hfprune.flops.model_costs` counts them):
  * `prune_to_budget` with mask tuning, and without (search + rearrangement only);
  * Michel heads + Taylor neurons at the same FLOPs: the same number of heads and neurons per model as the budget
    plan keeps, chosen globally by the existing hfprune scorers (`head_importance`, `neuron_importance`);
  * random heads and neurons at the same counts (seed 0).
Dev accuracy (SST-2) or F1 (MRPC) with no retraining, the achieved FLOPs, the measured CPU speedup of the pruned
model (median forward time on a dev batch), and the wall time of each step next to one plain forward + backward pass
over the same calibration samples.

    nice -n 10 python benchmarks/budget_glue.py --task sst2 --num-samples 2048
    nice -n 10 python benchmarks/budget_glue.py --task mrpc --num-samples 2048

Prints a markdown table (with the command line, machine and date). Not a test.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import hfprune
from hfprune.budget import apply_budget_masks, find_budget_masks
from hfprune.budget.latency import timing_batch
from hfprune.flops import model_costs

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "sst2": {"model": "minilm-l6-sst2", "data": "SST-2", "text": ("sentence",), "label": "label", "metric": "acc"},
    "mrpc": {"model": "minilm-l6-mrpc", "data": "MRPC", "text": ("#1 String", "#2 String"), "label": "Quality",
             "metric": "f1"},
}


def read_tsv(path: Path, spec: dict) -> list[tuple[tuple[str, ...], int]]:
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        cols = [header.index(c) for c in spec["text"]]
        label = header.index(spec["label"])
        for row in reader:
            rows.append((tuple(row[c] for c in cols), int(row[label])))
    return rows


def make_batches(tokenizer, rows, batch_size: int, max_length: int = 128) -> list[dict]:
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        texts = list(zip(*[t for t, _ in chunk]))
        enc = dict(tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        enc["labels"] = torch.tensor([lab for _, lab in chunk])
        out.append(enc)
    return out


@torch.no_grad()
def evaluate(model, dev: list[dict], metric: str) -> float:
    preds, labels = [], []
    for batch in dev:
        preds.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1))
        labels.append(batch["labels"])
    p, y = torch.cat(preds), torch.cat(labels)
    if metric == "acc":
        return float((p == y).float().mean())
    tp = int(((p == 1) & (y == 1)).sum())
    fp, fn = int(((p == 1) & (y == 0)).sum()), int(((p == 0) & (y == 1)).sum())
    return 2 * tp / max(1, 2 * tp + fp + fn)


def forward_backward_time(model, batches: list[dict]) -> float:
    """One plain forward + backward of the loss over the calibration batches (weights get gradients)."""
    model = copy.deepcopy(model).eval()
    t0 = time.perf_counter()
    for batch in batches:
        model(**batch).loss.backward()
    return time.perf_counter() - t0


def latency(model, batch: dict, repeats: int = 9) -> float:
    """Fastest of `repeats` forward passes: on a shared machine the minimum is the least disturbed reading."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    times = []
    with torch.no_grad():
        model(**inputs)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - t0)
    return min(times)


def plan_at_counts(model, kept_heads: int, kept_neurons: int, head_scores, neuron_scores) -> hfprune.PruningPlan:
    """Remove the globally lowest-scored heads / neurons, keeping these totals and >= 1 of each per layer."""
    def removal(scores: list[torch.Tensor], keep_total: int) -> dict[int, list[int]]:
        entries = []
        for layer, row in enumerate(scores):
            best = int(torch.argmax(row))
            entries += [(float(v), layer, i) for i, v in enumerate(row.tolist()) if i != best]
        entries.sort()
        n_remove = len(entries) + len(scores) - keep_total
        out: dict[int, list[int]] = {}
        for _, layer, i in entries[:max(0, n_remove)]:
            out.setdefault(layer, []).append(i)
        return out

    heads = [row[~torch.isnan(row)] for row in head_scores]
    return hfprune.PruningPlan(heads=removal(heads, kept_heads), neurons=removal(neuron_scores, kept_neurons))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="sst2")
    parser.add_argument("--budgets", default="0.6,0.5")
    parser.add_argument("--num-samples", type=int, default=2048, help="calibration samples (SST-2 / MRPC train)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length the FLOPs are counted at")
    parser.add_argument("--dev-limit", type=int, default=None, help="evaluate on the first N dev examples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--plans-out", help="write every row's plan to this JSON file (for budget_speed.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = TASKS[args.task]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    started = time.time()
    path = ROOT / "../shared/models" / spec["model"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = AutoModelForSequenceClassification.from_pretrained(path).eval()
    data = ROOT / "../shared/data/glue" / spec["data"]
    train = read_tsv(data / "train.tsv", spec)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.num_samples].tolist()
    calib = make_batches(tokenizer, [train[i] for i in order], args.batch_size)
    dev_rows = read_tsv(data / "dev.tsv", spec)[:args.dev_limit]
    dev_rows.sort(key=lambda r: len(" ".join(r[0])))  # less padding
    dev = make_batches(tokenizer, dev_rows, 64)
    # Latency at the length the FLOPs are counted at: 8 dev sentences tiled to --seq-len tokens.
    speed_batch = timing_batch(make_batches(tokenizer, dev_rows[-8:], 8)[0], args.seq_len)
    dense_score = evaluate(dense, dev, spec["metric"])
    dense_latency = latency(dense, speed_batch)
    fwd_bwd = forward_backward_time(dense, calib)
    print(f"dense {spec['metric']} {dense_score:.4f}; forward+backward over {args.num_samples} samples "
          f"{fwd_bwd:.1f} s", file=sys.stderr)

    baselines = {}
    if not args.no_baselines:
        baselines["michel+taylor"] = (hfprune.head_importance(dense, calib, criterion="michel", show_progress=False),
                                      hfprune.neuron_importance(dense, calib, criterion="taylor",
                                                                show_progress=False))
        baselines["random"] = (hfprune.head_importance(dense, None, criterion="random", seed=0),
                               hfprune.neuron_importance(dense, None, criterion="random", seed=0))

    rows = []
    for budget in [float(b) for b in args.budgets.split(",")]:
        # One search per budget; the untuned row applies the same masks without the scales (the search and the
        # rearrangement do not depend on tuning), and its time is the search's without the tuning step.
        t0 = time.perf_counter()
        masks = find_budget_masks(dense, calib, flops=budget, seq_len=args.seq_len, num_samples=args.num_samples,
                                  show_progress=False)
        search_wall = time.perf_counter() - t0
        steps = dict(masks.plan.meta["time_s"])
        for tune in (True, False):
            model = copy.deepcopy(dense)
            use = masks if tune else dataclasses.replace(masks, plan=copy.deepcopy(masks.plan), head_scales={},
                                                         neuron_scales={})
            t0 = time.perf_counter()
            plan = apply_budget_masks(model, use)
            wall = (search_wall if tune else search_wall - steps["tune"]) + time.perf_counter() - t0
            structure = hfprune.model_structure(model)
            kept = (sum(structure["heads"]), sum(structure["ffn"]))
            rows.append({"budget": budget, "method": "prune_to_budget" + ("" if tune else " (no tuning)"),
                         "plan": plan.to_dict(),
                         "score": evaluate(model, dev, spec["metric"]), "flops": plan.meta["achieved"]["flops"],
                         "speedup": dense_latency / latency(model, speed_batch), "kept": kept,
                         "time": f"{wall:.1f} s = {wall / fwd_bwd:.2f}x fwd+bwd (fisher {steps['fisher']:.1f}, "
                                 f"search {steps['search']:.2f}, rearrange {steps['rearrange']:.1f}"
                                 + (f", tune {steps['tune']:.1f}" if tune else "")
                                 + f", fold+prune {plan.meta['time_s']['prune']:.2f})"})
            print({k: v for k, v in rows[-1].items() if k != "plan"}, file=sys.stderr)
        for name, (head_scores, neuron_scores) in baselines.items():
            model = copy.deepcopy(dense)
            counts_plan = plan_at_counts(model, kept[0], kept[1], head_scores, neuron_scores)
            hfprune.prune(model, counts_plan)
            rows.append({"budget": budget, "method": name, "score": evaluate(model, dev, spec["metric"]),
                         "plan": counts_plan.to_dict(),
                         "flops": model_costs(model, args.seq_len)["flops"] / model_costs(dense, args.seq_len)[
                             "flops"], "speedup": dense_latency / latency(model, speed_batch),
                         "kept": hfprune.model_structure(model)["heads"] and (
                             sum(hfprune.model_structure(model)["heads"]), sum(hfprune.model_structure(model)[
                                 "ffn"])), "time": ""})
            print({k: v for k, v in rows[-1].items() if k != "plan"}, file=sys.stderr)

    if args.plans_out:
        Path(args.plans_out).write_text(json.dumps({"task": args.task, "model": spec["model"], "rows": [
            {k: r[k] for k in ("budget", "method", "plan")} for r in rows]}, indent=1))
    metric = "accuracy" if spec["metric"] == "acc" else "F1"
    print(f"`{' '.join(['python', *sys.argv])}`  \n{platform.machine()}, {platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, total {time.time() - started:.0f} s  \n"
          f"{args.task} dev {metric}, dense {dense_score:.4f}; {args.num_samples} calibration samples (train, seed 0, "
          f"batch {args.batch_size}); FLOPs at seq_len {args.seq_len}; one plain forward+backward over them: "
          f"{fwd_bwd:.1f} s; speedup = dense / pruned fastest-of-9 forward time of 8 x {args.seq_len} tokens, CPU\n")
    print(f"| FLOPs budget | method | dev {metric} | delta vs dense | achieved FLOPs | heads / FFN kept | CPU speedup "
          "| wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']:.0%} | {r['method']} | {r['score']:.4f} | {r['score'] - dense_score:+.4f} | "
              f"{r['flops']:.3f} | {r['kept'][0]} / {r['kept'][1]} | {r['speedup']:.2f}x | {r['time']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
