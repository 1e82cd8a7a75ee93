"""CPU latency of a pruned output folder against its dense architecture, re-measured on its own.

The latency in results.json is taken inside the run, on whatever load the machine had then; this script repeats the
measurement in a quiet moment. Weights do not change latency, so the dense side is the base checkpoint with a fresh
head. Prints a table with the command line, machine and date.

    python benchmarks/cli_latency.py out/sst2 out/mrpc --base ../shared/models/all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", nargs="+", help="folders written by hfprune prune")
    parser.add_argument("--base", required=True, help="the dense checkpoint the outputs were pruned from")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification

    import hfprune
    from hfprune.flops import measure_latency

    print(f"# {' '.join(sys.argv)}")
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}")
    print("| output | threads | dense ms | pruned ms | speedup |")
    print("|---|---|---|---|---|")
    dense = AutoModelForSequenceClassification.from_pretrained(args.base, num_labels=2).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch, args.seq_len), generator=g),
             "attention_mask": torch.ones(args.batch, args.seq_len, dtype=torch.long)}
    for out in args.outputs:
        pruned = hfprune.load_pruned(out)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            rounds = [(measure_latency(dense, batch, 5), measure_latency(pruned, batch, 5))
                      for _ in range(args.rounds)]
            d, p = min(r[0] for r in rounds), min(r[1] for r in rounds)
            print(f"| {out} | {threads} | {d * 1e3:.1f} | {p * 1e3:.1f} | {d / p:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
