"""CPU speedup of channel pruning on a ResNet-50-shaped `ResNetModel`, next to Torch-Pruning applying the same plan.

Model: `ResNetModel(ResNetConfig())` (the default config is ResNet-50's shape: bottleneck blocks, depths 3-4-6-3,
widths 256-512-1024-2048), random weights, eval mode, float32, input 8 x 3 x 224 x 224. Plan: 50% of every
bottleneck's inner channels (the outputs of its 1x1 reduce and 3x3 convs; stage widths untouched), the channels
with the smallest filter L1 norm per group (`hfprune.channel_importance(criterion="l1", groups="inner")` +
`select_channels(scope="layer")`). The same indices are pruned by Torch-Pruning's dependency graph
(`torch-pruning`, benchmark-only: `pip install torch-pruning --no-deps`, the `bench` extra) on a second copy, and
the three models (dense, hfprune, Torch-Pruning) are timed interleaved, so load on the machine hits all alike.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one forward. Target: measured speedup >= 0.85 x the FLOPs
ratio.

    python benchmarks/cnn_speed.py                   # ~1-2 min on 2 shared CPU cores
    python benchmarks/cnn_speed.py --channels-last   # the same in channels_last memory format
    python benchmarks/cnn_speed.py --compile         # all three compiled (torch.compile, inductor, freezing)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import shlex
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ResNetConfig, ResNetModel

import hfprune


def flops(model, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=x)
    return counter.get_total_flops()


def time_once(model, x) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        model(pixel_values=x)
        return time.perf_counter() - start


def torch_pruning_copy(model, plan, x):
    """Apply `plan` to a copy of `model` with Torch-Pruning's dependency graph (same channel indices)."""
    import torch_pruning as tp

    other = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(other, example_inputs=x[:1],
                                                  output_transform=lambda out: out.last_hidden_state)
    for name, indices in plan.channels.items():
        conv = other.get_submodule(name)
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(indices))
        group.prune()
    return other


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--channels-last", action="store_true",
                        help="time all three models in channels_last memory format (oneDNN kernels for every conv)")
    parser.add_argument("--compile", action="store_true",
                        help="time all three models compiled by torch.compile (inductor, freezing: BatchNorm folded "
                             "into the convolutions, ReLU / add fused), as a deployment would run them")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()

    dense = ResNetModel(ResNetConfig()).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    # The bottlenecks' inner groups: free groups inside a block (the stem, also a free group, is left alone).
    inner = [n for n, g in hfprune.channel_groups(dense).items() if g.prunable and not g.coupled and ".layer." in n]
    scores = hfprune.channel_importance(dense, criterion="l1", groups=inner)
    plan = hfprune.select_channels(scores, ratio=args.ratio, scope="layer")
    assert all(not scores.groups[n].coupled for n in plan.channels)
    ours = hfprune.prune(copy.deepcopy(dense), plan)
    theirs = torch_pruning_copy(dense, plan, x)
    with torch.no_grad():
        out_ours = ours(pixel_values=x[:2]).last_hidden_state
        out_theirs = theirs(pixel_values=x[:2]).last_hidden_state
    agree = float((out_ours - out_theirs).abs().max())

    models = {"dense": dense, "hfprune": ours, "Torch-Pruning": theirs}
    if args.channels_last:
        models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
        x = x.contiguous(memory_format=torch.channels_last)
    cost = {k: flops(m, x) for k, m in models.items()}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # eval weights as constants: conv + BN folding
        models = {k: torch.compile(m) for k, m in models.items()}
    for m in models.values():  # warm-up (and compilation)
        time_once(m, x)
    times = {k: [] for k in models}
    for _ in range(args.repeats):  # interleaved, so drifting load on a shared machine hits every model alike
        for k, m in models.items():
            times[k].append(time_once(m, x))
    median = {k: statistics.median(v) for k, v in times.items()}

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {args.threads} torch thread(s), {os.cpu_count()} cores shared by other "
          f"jobs (load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; total {time.time() - started:.0f}s")
    print(f"model: ResNetModel(ResNetConfig()) (ResNet-50 shape), input {args.batch}x3x{args.size}x{args.size}, "
          f"float32{', channels_last' if args.channels_last else ''}"
          f"{', torch.compile (inductor, freezing)' if args.compile else ''}; "
          f"plan: {plan.num_channels()} inner channels in "
          f"{len(plan.channels)} groups "
          f"({args.ratio:.0%} of each bottleneck's inner channels, l1 per group); hfprune vs Torch-Pruning outputs "
          f"max |diff| = {agree:.2e}")
    print()
    print("| model | params (M) | GFLOPs | FLOPs ratio | median (min) s | measured speedup | speedup / FLOPs ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k in models:
        ratio = cost["dense"] / cost[k]
        speedup = median["dense"] / median[k]
        print(f"| {k} | {params[k] / 1e6:.2f} | {cost[k] / 1e9:.2f} | {ratio:.2f}x | {median[k]:.2f} "
              f"({min(times[k]):.2f}) | {speedup:.2f}x | {speedup / ratio:.2f} |")


if __name__ == "__main__":
    main()
