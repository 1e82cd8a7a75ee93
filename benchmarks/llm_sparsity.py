"""Perplexity of SmolLM2-135M-Instruct pruned to 50% unstructured and 2:4 by magnitude, Wanda and SparseGPT.

Calibration: SST-2 train sentences (../shared/data/glue), concatenated, random windows (hfprune.calibration_batches).
Evaluation: MRPC dev sentences (both sides), a different corpus (news), concatenated and cut into consecutive
non-overlapping windows; token-weighted perplexity (hfprune.perplexity). Wanda and SparseGPT calibrate block by
block with `device="cpu"` (on this CPU-only machine the blocks stay on CPU; the peak memory column is the resident
memory the pass adds on top of the loaded model, from the kernel's high-water mark).

    python benchmarks/llm_sparsity.py                          # docs/benchmarks.md (about 40 min, 2 busy cores)
    python benchmarks/llm_sparsity.py --calib-samples 8 --eval-windows 2 --methods wanda   # a quick look
    python benchmarks/llm_sparsity.py --methods sparsegpt --patterns 2:4 --no-true-sequential   # one pass per block
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from smollm import smollm2_folder  # noqa: E402

import hfprune  # noqa: E402
from hfprune.calibration import token_stream  # noqa: E402

GLUE = ROOT / ".." / "shared" / "data" / "glue"
METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("unstructured", "2:4")


def sentences(task_file: str, columns: tuple[str, ...]) -> list[str]:
    with open(GLUE / task_file, encoding="utf-8-sig", newline="") as f:
        return [row[c].strip() for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                for c in columns if row.get(c)]


def eval_windows(tokenizer, count: int, seq_len: int) -> list[dict]:
    stream = token_stream(tokenizer, sentences("MRPC/dev.tsv", ("#1 String", "#2 String")))
    count = min(count, stream.numel() // seq_len)
    windows = stream[: count * seq_len].reshape(count, seq_len)
    return [{"input_ids": w.unsqueeze(0)} for w in windows]


def model_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8, help="windows of --eval-seq-len MRPC dev tokens")
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--true-sequential", action=argparse.BooleanOptionalAction, default=None,
                        help="wanda / sparsegpt: calibrate each block in stages (q/k/v -> o -> gate/up -> down) or in "
                             "one pass; default: the library's default")
    parser.add_argument("--precision", choices=("float32", "float64"),
                        help="sparsegpt: dtype of the Hessian sum, its inversion and the OBS updates (default: the "
                             "library's, float64; float32 is the reference code's arithmetic)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    calib = hfprune.calibration_batches(tokenizer, sentences("SST-2/train.tsv", ("sentence",)),
                                        num_samples=args.calib_samples, seq_len=args.seq_len, seed=0, model=model)
    held_out = eval_windows(tokenizer, args.eval_windows, args.eval_seq_len)
    hidden = model.config.hidden_size
    activations = args.calib_samples * args.seq_len * hidden * 4
    size = model_bytes(model)
    budget = size / 3 + activations

    start = time.perf_counter()
    rows = [{"method": "dense", "pattern": "-", "ppl": hfprune.perplexity(model, held_out), "seconds": 0.0,
             "cpu_seconds": 0.0, "eval_seconds": time.perf_counter() - start}]
    print(f"dense {rows[0]['ppl']:.2f}", flush=True)
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            model.load_state_dict(dense_state)
            sparsity = 0.5 if pattern == "unstructured" else None
            kwargs = {} if method == "magnitude" else {"dataloader": calib, "device": "cpu", "keep_original": False}
            if method != "magnitude" and args.true_sequential is not None:
                kwargs["true_sequential"] = args.true_sequential
            if method == "sparsegpt" and args.precision is not None:
                kwargs["precision"] = args.precision
            start, cpu = time.perf_counter(), time.process_time()
            handle = hfprune.sparsify(model, sparsity, criterion=method, pattern=pattern, **kwargs)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            handle.finalize()
            start = time.perf_counter()
            ppl = hfprune.perplexity(model, held_out)
            row = {"method": method, "pattern": pattern, "ppl": ppl, "seconds": seconds, "cpu_seconds": cpu,
                   "eval_seconds": time.perf_counter() - start}
            if "peak_memory" in handle.info:
                row["extra_mib"] = handle.info["peak_memory"]["extra_bytes"] / 2**20
                row["stages"] = handle.info["stages"]
            rows.append(row)
            print(json.dumps(row), flush=True)

    print()
    print(f"command: python {' '.join(sys.argv)}")
    now = datetime.datetime.now(datetime.UTC)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; date {now:%Y-%m-%d %H:%M} UTC")
    print(f"model: SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32, {size / 2**20:.0f} MiB); calibration "
          f"{args.calib_samples} x {args.seq_len} tokens of SST-2 train; eval {len(held_out)} x {args.eval_seq_len} "
          f"tokens of MRPC dev")
    print(f"memory budget (fp32 model / 3 + calibration activations): {size / 3 / 2**20:.0f} + "
          f"{activations / 2**20:.0f} = {budget / 2**20:.0f} MiB")
    print()
    print("| method | pattern | perplexity | prune wall time (s) | prune CPU time (s) | extra peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        extra = f"{r['extra_mib']:.0f}" if "extra_mib" in r else "-"
        print(f"| {r['method']} | {r['pattern']} | {r['ppl']:.2f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} "
              f"| {extra} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "argv": sys.argv, "budget_bytes": budget}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
