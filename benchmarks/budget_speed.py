"""CPU speed of the plans `budget_glue.py` found, timed on their own (run it on a quiet machine).

`budget_glue.py --plans-out plans.json` writes every row's plan; this script prunes a copy of the dense model with
each one (the shapes are all that matters for speed: mask tuning only rescales kept weights) and times the dense
and pruned models interleaved, round after round, on the batch `budget_glue.py` times (8 dev examples tiled to
--seq-len tokens), so a load change on the machine hits every model alike. Prints median and minimum forward time,
the measured speedup (dense median / pruned median) and its ratio to the FLOPs reduction.

    python benchmarks/budget_glue.py --task sst2 --plans-out /tmp/plans_sst2.json
    python benchmarks/budget_speed.py --plans /tmp/plans_sst2.json

Not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import hfprune
from hfprune.budget.latency import timing_batch
from hfprune.flops import model_costs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_glue import ROOT, TASKS, make_batches, read_tsv  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", required=True, help="JSON written by budget_glue.py --plans-out")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = json.loads(Path(args.plans).read_text())
    spec = TASKS[data["task"]]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    started = time.time()
    path = ROOT / "../shared/models" / spec["model"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = AutoModelForSequenceClassification.from_pretrained(path).eval()
    dev_rows = read_tsv(ROOT / "../shared/data/glue" / spec["data"] / "dev.tsv", spec)
    dev_rows.sort(key=lambda r: len(" ".join(r[0])))
    batch = timing_batch(make_batches(tokenizer, dev_rows[-8:], 8)[0], args.seq_len)
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    models = {"dense": dense}
    for row in data["rows"]:
        if row["method"].endswith("(no tuning)"):
            continue  # the same shapes as the tuned row
        model = copy.deepcopy(dense)
        hfprune.prune(model, hfprune.PruningPlan.from_dict(row["plan"]))
        models[f"{row['budget']:.0%} {row['method']}"] = model.eval()
    dense_flops = model_costs(dense, args.seq_len)["flops"]
    times = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(**inputs)  # warm-up
        for _ in range(args.rounds):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(**inputs)
                times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["dense"])
    print(f"`{' '.join(['python', *sys.argv])}`  \n{platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f} at the end, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, total {time.time() - started:.0f} s; {data['task']}, "
          f"8 x {args.seq_len} tokens, {args.rounds} interleaved rounds\n")
    print("| model | heads / FFN kept | FLOPs ratio | median (min) ms | measured speedup | speedup / FLOPs ratio |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        structure = hfprune.model_structure(model)
        ratio = dense_flops / model_costs(model, args.seq_len)["flops"]
        median = statistics.median(times[name])
        print(f"| {name} | {sum(structure['heads'])} / {sum(structure['ffn'])} | {ratio:.2f}x | "
              f"{median * 1e3:.0f} ({min(times[name]) * 1e3:.0f}) | {base / median:.2f}x | "
              f"{base / median / ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
