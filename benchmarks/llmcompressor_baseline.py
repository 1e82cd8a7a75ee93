"""llm-compressor's Wanda and SparseGPT on the same SmolLM2, calibration and held-out windows as llm_sparsity.py.

Runs under llm-compressor's own environment (it pins transformers <= 5.17, so it cannot share hfprune's venv) and
does not import hfprune. The token windows come from `benchmarks/llm_data_export.py` (run in hfprune's venv), so
both tools calibrate on the same 32 x 512 tokens of SST-2 train and are scored on the same 8 x 512 tokens of MRPC
dev. llm-compressor's `oneshot` with `WandaPruningModifier` / `SparseGPTModifier`, its defaults except sparsity 0.5
and `mask_structure` ("0:0" unstructured, "2:4"); targets: every Linear of the decoder layers (q/k/v/o/gate/up/down),
lm_head ignored. Perplexity as hfprune.perplexity: sum of next-token NLL over all predicted tokens / their count, exp.

    python3 -m venv /work/llmc-venv && /work/llmc-venv/bin/pip install torch==2.13.0 && \
        /work/llmc-venv/bin/pip install llmcompressor==0.14.0.1
    .venv/bin/python benchmarks/llm_data_export.py --out /tmp/smollm2_windows.npz   # prints the model folder
    OMP_NUM_THREADS=2 /work/llmc-venv/bin/python benchmarks/llmcompressor_baseline.py \
        --model ~/.cache/hfprune/smollm2-135m-instruct --data /tmp/smollm2_windows.npz
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("wanda", "sparsegpt")
PATTERNS = ("unstructured", "2:4")
DECODER_LINEARS = r"re:.*layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


def perplexity(model, windows: np.ndarray) -> float:
    """exp(sum of next-token NLL / predicted tokens), one window per forward pass (as hfprune.perplexity)."""
    total_nll, total = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in windows:
            ids = torch.from_numpy(row).long().unsqueeze(0)
            logits = model(input_ids=ids).logits[:, :-1].float()
            target = ids[:, 1:]
            total_nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                         reduction="sum").item()
            total += target.numel()
    return math.exp(total_nll / total)


def decoder_sparsity(model) -> float:
    zeros = count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            zeros += (module.weight == 0).sum().item()
            count += module.weight.numel()
    return zeros / count


def modifier(method: str, pattern: str):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    cls = WandaPruningModifier if method == "wanda" else SparseGPTModifier
    structure = "0:0" if pattern == "unstructured" else pattern
    return cls(sparsity=0.5, mask_structure=structure, targets=[DECODER_LINEARS], ignore=["re:.*lm_head"])


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the converted SmolLM2 folder (benchmarks/smollm.py)")
    parser.add_argument("--data", required=True, help="the .npz of benchmarks/llm_data_export.py")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = np.load(args.data)
    calib, held_out = data["calib"], data["eval"]
    samples, seq_len = calib.shape
    dataset = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": np.ones_like(calib).tolist()})
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def load():
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()

    start = time.perf_counter()
    rows = [{"method": "dense", "pattern": "-", "ppl": perplexity(load(), held_out), "seconds": 0.0,
             "cpu_seconds": 0.0, "eval_seconds": time.perf_counter() - start}]
    print(json.dumps(rows[0]), flush=True)
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            model = load()
            start, cpu = time.perf_counter(), time.process_time()
            oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=modifier(method, pattern),
                    num_calibration_samples=samples, max_seq_length=seq_len, output_dir=None, log_dir=None)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            start = time.perf_counter()
            row = {"method": method, "pattern": pattern, "ppl": perplexity(model, held_out), "seconds": seconds,
                   "cpu_seconds": cpu, "eval_seconds": time.perf_counter() - start,
                   "sparsity": decoder_sparsity(model)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model

    print()
    print(f"command: python {' '.join(sys.argv)}")
    now = datetime.datetime.now(datetime.UTC)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs (shared), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}; date {now:%Y-%m-%d %H:%M} UTC")
    print(f"versions: llmcompressor {version('llmcompressor')}, compressed-tensors {version('compressed-tensors')}, "
          f"transformers {version('transformers')}, torch {torch.__version__}")
    print(f"data: {args.data}: calibration {samples} x {seq_len} tokens, eval {held_out.shape[0]} x "
          f"{held_out.shape[1]} tokens")
    print()
    print("| method (llm-compressor) | pattern | perplexity | decoder sparsity | prune wall time (s) | "
          "prune CPU time (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sparsity = f"{r['sparsity']:.3f}" if "sparsity" in r else "-"
        print(f"| {r['method']} | {r['pattern']} | {r['ppl']:.2f} | {sparsity} | {r['seconds']:.1f} "
              f"| {r['cpu_seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "argv": sys.argv}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
