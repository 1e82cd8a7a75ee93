"""Recovery of a width-pruned SmolLM2-135M at one token budget: the plain LM loss vs logit distillation from the
model before pruning (and, with `--variants ...,lora`, LoRA rank 16), through the shipped
`hfprune prune --task causal-lm`.

The same pruned model in every run: uniform heads 9 -> 6 (whole KV groups) and FFN 1536 -> 1152 (Minitron's
activation criterion on 32 calibration windows of SST-2 train sentences, seed 0). Recovery: `--steps` x
`--batch-size` x `--seq-len` tokens of SST-2 train sentences (the app's recovery windows: the whole text, none
sharing a token with the calibration windows), AdamW at a constant `--lr` on all weights; perplexity on MRPC dev
text (both sentences; another corpus: news).

    nice -n 10 python benchmarks/llm_recovery.py                    # lm, distill: 40 x 4 x 256 tokens
    nice -n 10 python benchmarks/llm_recovery.py --variants lm,distill,lora --steps 20
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm import smollm2_folder  # noqa: E402

from hfprune.app.cli.main import main as hfprune_main  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue"
VARIANTS = {"lm": [], "distill": ["--distill"], "lora": ["--lora", "16"]}


def sentences(task_file: str, columns: tuple[str, ...]) -> list[str]:
    with open(DATA / task_file, encoding="utf-8-sig", newline="") as f:
        return [row[c].strip() for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                for c in columns if row.get(c)]


def run_variant(name: str, model: Path, texts: Path, out: Path, args) -> dict:
    argv = ["prune", "--task", "causal-lm", "--model", str(model), "--text-file", str(texts / "train.txt"),
            "--eval-text-file", str(texts / "eval.txt"), "--num-samples", "32", "--seq-len", str(args.seq_len),
            "--batch-size", str(args.batch_size), "--eval-samples", str(args.eval_samples), "--heads", "0.33",
            "--ffn", "0.25", "--uniform", "--criterion", "activation", "--recover-steps", str(args.steps),
            "--learning-rate", str(args.lr), "--output", str(out / name), *VARIANTS[name]]
    start = time.perf_counter()
    rc = hfprune_main(argv)
    if rc != 0:
        sys.exit(f"{name}: hfprune prune failed ({rc})")
    results = json.loads((out / name / "results.json").read_text())
    results["seconds"] = time.perf_counter() - start
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="lm,distill", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant {unknown[0]} (known: {', '.join(VARIANTS)})")
    model = smollm2_folder()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llm-recovery-") as tmp:
        texts = Path(tmp)
        (texts / "train.txt").write_text("\n".join(sentences("SST-2/train.tsv", ("sentence",))) + "\n")
        (texts / "eval.txt").write_text("\n".join(sentences("MRPC/dev.tsv", ("#1 String", "#2 String"))) + "\n")
        for name in names:
            print(f"[{datetime.datetime.now():%H:%M:%S}] {name}: pruning + {args.steps} recovery steps ...",
                  flush=True)
            r = run_variant(name, model, texts, texts / "out", args)
            ppl, rec = r["perplexity"], r["recovery"]
            rows.append((name, ppl, r["before"]["params"], r["after"]["params"], rec["tokens"], r["seconds"]))
            print(f"  {name}: perplexity dense {ppl['dense']:.2f}, pruned {ppl['pruned']:.2f}, recovered "
                  f"{ppl['recovered']:.2f} ({rec['tokens']:,} tokens, {r['seconds']:.0f} s)", flush=True)
    print(f"\nSmolLM2-135M-Instruct, uniform heads 9->6 + FFN 1536->1152 (activation); {rows[0][2]:,} -> "
          f"{rows[0][3]:,} parameters; recovery {args.steps} x {args.batch_size} x {args.seq_len} = {rows[0][4]:,} "
          f"tokens of SST-2 train, AdamW lr {args.lr}; perplexity on MRPC dev text")
    print("| recovery | dense | pruned | recovered | seconds |\n|---|---|---|---|---|")
    for name, ppl, _, _, _, seconds in rows:
        print(f"| {name} | {ppl['dense']:.2f} | {ppl['pruned']:.2f} | {ppl['recovered']:.2f} | {seconds:.0f} |")
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"{datetime.date.today()}")


if __name__ == "__main__":
    main()
