"""Compressed export size of a bert-base-shaped model at 90% unstructured sparsity of its encoder Linear weights.

bert-base = `BertConfig()` defaults (12 layers, hidden 768, FFN 3072, vocab 30,522), randomly initialised; the
attention and FFN projections of every layer are pruned to 90% (magnitude, layer-wise). Prints the dense,
pruned-dense and compressed (float32 values / int8 values) folder sizes, the bytes of the pruned tensors against their
dense float32 bytes, and checks that every folder reloads to the same logits.

    python benchmarks/sparsity_size.py                 # ~1-2 min, ~3 GB RAM
    python benchmarks/sparsity_size.py --small         # a 2-layer model, seconds
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

import hfprune
from hfprune.io import safetensors_sizes as _safetensors_sizes
from hfprune.sparsity import compressed_stats, save_compressed, sparsify


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--small", action="store_true", help="2 layers, hidden 128: a smoke run")
    args = parser.parse_args(argv)
    started = time.time()
    torch.manual_seed(0)
    config = BertConfig(num_labels=2, attn_implementation="eager")
    if args.small:
        config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=512, num_labels=2, attn_implementation="eager")
    model = BertForSequenceClassification(config).eval()
    inputs = {"input_ids": torch.randint(1, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))}
    n_params = sum(p.numel() for p in model.parameters())

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp / "dense")
        dense_bytes = folder_bytes(tmp / "dense")
        dense_sizes = _safetensors_sizes(tmp / "dense" / "model.safetensors")
        t = time.time()
        handle = sparsify(model, args.sparsity)
        sparsify_s = time.time() - t
        keys = set(handle.keys())
        handle.finalize()
        with torch.no_grad():
            expected = model(**inputs).logits
        pruned_params = sum(dense_sizes[k] for k in keys) // 4
        model.save_pretrained(tmp / "pruned")
        plain = BertForSequenceClassification.from_pretrained(tmp / "pruned", attn_implementation="eager").eval()
        with torch.no_grad():
            plain_diff = (plain(**inputs).logits - expected).abs().max().item()
        del plain
        rows.append(("dense (save_pretrained)", dense_bytes, sum(dense_sizes[k] for k in keys), "-"))
        rows.append(("pruned, dense zeros (save_pretrained)", folder_bytes(tmp / "pruned"),
                     sum(dense_sizes[k] for k in keys), f"from_pretrained: max abs logit diff {plain_diff:.1e}"))
        checks = {}
        for int8 in (False, True):
            folder = save_compressed(model, tmp / f"compressed-{int8}", int8=int8)
            stats = compressed_stats(folder)
            sizes = _safetensors_sizes(folder / "model.sparse.safetensors")
            others_ok = all(n <= dense_sizes[k] for k, n in sizes.items() if "::" not in k)
            loaded = hfprune.load_pruned(folder, attn_implementation="eager")
            with torch.no_grad():
                diff = (loaded(**inputs).logits - expected).abs().max().item()
            checks[int8] = (stats, others_ok, diff)
            label = "compressed, int8 values" if int8 else "compressed, float32 values"
            reload = f"load_pruned: max abs logit diff {diff:.1e}; other tensors <= dense: {others_ok}"
            rows.append((label, stats["folder_bytes"], stats["sparse_stored_bytes"], reload))

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.machine()}, torch {torch.__version__}, "
          f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"total {time.time() - started:.0f}s")
    size = "small" if args.small else "bert-base"
    print(f"model: BertForSequenceClassification({size} config), {n_params / 1e6:.1f}M "
          f"parameters; pruned: {len(keys)} encoder Linear weights, {pruned_params / 1e6:.1f}M parameters "
          f"({pruned_params / n_params:.0%} of the model) at {args.sparsity:.0%} (magnitude, layer-wise, "
          f"{sparsify_s:.1f}s)")
    print()
    dense_pruned = rows[0][2]
    print("| folder | size (MB) | dense / this | pruned tensors (MB) | pruned tensors vs dense fp32 | check |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, nbytes, pruned_bytes, check in rows:
        print(f"| {label} | {nbytes / 1e6:.1f} | {dense_bytes / nbytes:.2f}x | {pruned_bytes / 1e6:.1f} | "
              f"{pruned_bytes / dense_pruned:.3f}x | {check} |")
    ok = (checks[False][0]["sparse_ratio"] <= 0.2 and checks[True][0]["sparse_ratio"] <= 0.1
          and checks[False][1] and checks[True][1] and checks[False][2] == 0.0)
    print()
    print(f"targets: pruned tensors <= 0.2x (float) / 0.1x (int8) of dense fp32, other tensors no larger, exact "
          f"float reload: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
