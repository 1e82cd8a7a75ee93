"""Dense vs structurally pruned throughput on CPU, next to the ideal FLOPs ratio.

Builds a bert-base-shaped encoder (BertConfig() defaults: 12 layers, 12 heads, hidden 768, FFN 3072; random weights,
speed does not depend on their values), removes 50% of the heads and 50% of the FFN neurons in every layer with
`hfprune.prune`, and times both models on the same batches, interleaved, reporting the median. The ideal ratio comes
from `hfprune.flops.count_flops` (torch's FlopCounterMode on a meta copy, attention products included), the counter
behind every FLOPs figure hfprune reports.

    python benchmarks/speed_structured.py [--batch 8 --seq 128 --repeats 15 --threads 2]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--heads", type=float, default=0.5, help="fraction of heads removed in every layer")
    parser.add_argument("--ffn", type=float, default=0.5, help="fraction of FFN neurons removed in every layer")
    args = parser.parse_args()

    import transformers

    import hfprune
    from hfprune.flops import count_flops

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = transformers.BertConfig()
    dense = transformers.BertModel(config).eval()
    pruned = copy.deepcopy(dense)
    n_heads, n_ffn = config.num_attention_heads, config.intermediate_size
    plan = hfprune.PruningPlan(
        heads={i: list(range(int(n_heads * args.heads))) for i in range(config.num_hidden_layers)},
        neurons={i: list(range(int(n_ffn * args.ffn))) for i in range(config.num_hidden_layers)},
    )
    hfprune.prune(pruned, plan)
    inputs = {"input_ids": torch.randint(0, config.vocab_size, (args.batch, args.seq))}

    ratio = count_flops(dense, args.seq)[0] / count_flops(pruned, args.seq)[0]  # per sequence, as for any batch
    params = (sum(p.numel() for p in dense.parameters()), sum(p.numel() for p in pruned.parameters()))
    times = {"dense": [], "pruned": []}
    with torch.inference_mode():
        for model in (dense, pruned):  # warm-up
            model(**inputs)
        for _ in range(args.repeats):
            for name, model in (("dense", dense), ("pruned", pruned)):
                t0 = time.perf_counter()
                model(**inputs)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = med["dense"] / med["pruned"]
    seqs = {k: args.batch / v for k, v in med.items()}

    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads; date: {datetime.date.today()}")
    print(f"input: batch {args.batch} x seq {args.seq}; removed {args.heads:.0%} heads and {args.ffn:.0%} FFN "
          "neurons in every layer of a bert-base-shaped BertModel\n")
    print("| model | params | median latency (ms) | throughput (seq/s) |")
    print("|---|---|---|---|")
    print(f"| dense | {params[0] / 1e6:.1f}M | {med['dense'] * 1e3:.1f} | {seqs['dense']:.1f} |")
    print(f"| pruned | {params[1] / 1e6:.1f}M | {med['pruned'] * 1e3:.1f} | {seqs['pruned']:.1f} |")
    print(f"\nideal FLOPs ratio: {ratio:.2f}x; measured speedup: {speedup:.2f}x "
          f"({speedup / ratio:.2f} of the FLOPs ratio; target >= 0.90)")


if __name__ == "__main__":
    main()
