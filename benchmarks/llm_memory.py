"""Peak memory of one block-by-block Wanda / SparseGPT pass on SmolLM2-135M, in a fresh process.

Measured by `hfprune`'s own meter (`handle.info["peak_memory"]`): on CPU the process's resident high-water mark
during `sparsify`, minus the resident memory at its start (the model paged in first; glibc's free heap returned to the
OS first). Compared with the issue's budget: a third of the fp32 model plus the calibration activations.

    python benchmarks/llm_memory.py --criterion wanda          # one run per process (the meter is per process)
    python benchmarks/llm_memory.py --criterion sparsegpt --pattern 2:4
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from llm_sparsity import model_bytes, sentences  # noqa: E402
from smollm import smollm2_folder  # noqa: E402

import hfprune  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--criterion", default="wanda", choices=("wanda", "sparsegpt"))
    parser.add_argument("--pattern", default="unstructured")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    calib = hfprune.calibration_batches(tokenizer, sentences("SST-2/train.tsv", ("sentence",)),
                                        num_samples=args.calib_samples, seq_len=args.seq_len, model=model)
    handle = hfprune.sparsify(model, 0.5 if args.pattern == "unstructured" else None, criterion=args.criterion,
                              pattern=args.pattern, dataloader=calib, device=args.device, keep_original=False)
    info, mib = handle.info, 2**20
    size = model_bytes(model)
    budget = size / 3 + info["activation_bytes"]
    peak = info["peak_memory"]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}; "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"{args.criterion} {args.pattern}, {info['samples']} x {args.seq_len} tokens, device {info['device']}: "
          f"extra peak {peak['extra_bytes'] / mib:.0f} MiB (exact reset: {peak['exact']}); budget "
          f"{size / 3 / mib:.0f} (fp32 model {size / mib:.0f} / 3) + {info['activation_bytes'] / mib:.0f} "
          f"(activations) = {budget / mib:.0f} MiB -> {'below' if peak['extra_bytes'] < budget else 'ABOVE'}; "
          f"of which bool masks kept for the handle {info['mask_bytes'] / mib:.0f} MiB; {info['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
