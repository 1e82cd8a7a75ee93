"""Export the exact token windows of `benchmarks/llm_sparsity.py` to a .npz, for a run in another environment.

`benchmarks/llmcompressor_baseline.py` runs under llm-compressor's own venv (it pins transformers <= 5.17 and has no
hfprune); it reads this file so both tools calibrate on the same SST-2 train windows and are scored on the same
MRPC dev windows. Arrays: `calib` (samples, seq_len) and `eval` (windows, eval_seq_len), int64 token ids.

    python benchmarks/llm_data_export.py --out /tmp/smollm2_windows.npz      # prints the model folder too
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from llm_sparsity import eval_windows, sentences  # noqa: E402
from smollm import smollm2_folder  # noqa: E402

import hfprune  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # same calls and arguments as llm_sparsity.py (max_positions instead of loading the model for the check)
    calib = hfprune.calibration_batches(tokenizer, sentences("SST-2/train.tsv", ("sentence",)),
                                        num_samples=args.calib_samples, seq_len=args.seq_len, seed=0,
                                        max_positions=args.seq_len)
    held_out = eval_windows(tokenizer, args.eval_windows, args.eval_seq_len)
    calib_ids = torch.cat([b["input_ids"] for b in calib]).numpy().astype(np.int64)
    eval_ids = torch.cat([b["input_ids"] for b in held_out]).numpy().astype(np.int64)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, calib=calib_ids, eval=eval_ids)
    tmp.replace(out)
    print(f"model folder: {folder}")
    print(f"wrote {out}: calib {calib_ids.shape}, eval {eval_ids.shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
