"""GPU serving checks on SmolLM2-135M-Instruct (run only on a machine with an NVIDIA GPU; it refuses elsewhere).

1. 2:4 semi-structured sparsity: `hfprune.sparsify(pattern="2:4")` + `to_sparse_semi_structured` against the dense
   model, float16, forward latency over a batch x tokens sweep (and the SmolLM2 FFN matmul alone).
2. Uniform structured pruning (6 of 9 heads, one per KV group; FFN 1152) against dense, float16, in transformers:
   forward latency over the same sweep and greedy generation tokens/s.
3. If vLLM is importable: load the uniformly pruned folder (`save_pruned`) and the compressed-tensors int8 folder
   (`export_compressed_tensors`) in vLLM, each in its own process, and generate.

    PYTHONPATH=$PWD python benchmarks/gpu_serving.py [--out gpu_serving.json] [--quick]

Prints markdown tables (command, GPU, versions, date) and writes every figure to --out (JSON). Each section catches
its own failure and records it, so one broken part does not hide the others.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SWEEP = [(1, 128), (1, 1024), (8, 128), (8, 512), (32, 128), (32, 512)]
QUICK_SWEEP = [(1, 128), (8, 512)]

# vLLM in a fresh process per folder: its engine keeps GPU memory until the process ends.
_VLLM = r"""
import json, sys, time
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype=sys.argv[2], gpu_memory_utilization=0.3, max_model_len=1024, enforce_eager=True)
prompts = ["The capital of France is", "def fibonacci(n):", "Pruning a neural network means"] * 8
start = time.perf_counter()
outs = llm.generate(prompts, SamplingParams(max_tokens=64, temperature=0.0))
seconds = time.perf_counter() - start
tokens = sum(len(o.outputs[0].token_ids) for o in outs)
print("RESULT " + json.dumps({"tokens_per_s": tokens / seconds, "sample": outs[0].outputs[0].text[:120]}))
"""


def refuse_without_gpu() -> None:
    if not torch.cuda.is_available():
        print("gpu_serving.py needs an NVIDIA GPU (torch.cuda.is_available() is False here); nothing was run. "
              "Run it on a GPU machine: PYTHONPATH=$PWD python benchmarks/gpu_serving.py", file=sys.stderr)
        raise SystemExit(2)


def cuda_ms(fn, repeats: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of `fn()` timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def forward_fn(model, batch: int, tokens: int):
    ids = torch.randint(10, 1000, (batch, tokens), device="cuda", generator=torch.Generator("cuda").manual_seed(0))

    def run():
        with torch.inference_mode():
            model(ids, use_cache=False)

    return run


def load_fp16():
    from compressed_export import smollm2

    model, tokenizer = smollm2()
    return model.to("cuda", torch.float16).eval(), tokenizer


def section_two_four(sweep, results: dict) -> None:
    from torch.sparse import to_sparse_semi_structured

    import hfprune
    from hfprune.sparsity import to_semi_structured

    # The FFN up projection alone (576 -> 1536), the matmul the kernels accelerate.
    w = torch.randn(1536, 576, device="cuda", dtype=torch.float16)
    mask = torch.zeros_like(w, dtype=torch.bool).reshape(-1, 4)
    mask[:, :2] = True
    w24 = w * mask.reshape(w.shape)
    sparse_w = to_sparse_semi_structured(w24)
    rows = []
    for batch, tokens in sweep:
        x = torch.randn(batch * tokens, 576, device="cuda", dtype=torch.float16)
        dense = cuda_ms(lambda x=x: torch.nn.functional.linear(x, w24))
        sparse = cuda_ms(lambda x=x: torch.nn.functional.linear(x, sparse_w))
        rows.append({"batch": batch, "tokens": tokens, "dense_ms": dense, "sparse_ms": sparse})
    results["two_four_matmul_576x1536"] = rows

    model, _ = load_fp16()
    dense_times = {(b, t): cuda_ms(forward_fn(model, b, t)) for b, t in sweep}
    handle = hfprune.sparsify(model, pattern="2:4")
    handle.finalize()
    ids = torch.randint(10, 1000, (2, 32), device="cuda")
    with torch.inference_mode():
        masked_logits = model(ids).logits.float()
    converted = to_semi_structured(model)
    with torch.inference_mode():
        sparse_logits = model(ids).logits.float()
    rows = []
    for b, t in sweep:
        rows.append({"batch": b, "tokens": t, "dense_ms": dense_times[(b, t)],
                     "two_four_ms": cuda_ms(forward_fn(model, b, t))})
    results["two_four_model"] = {"converted_layers": len(converted), "rows": rows,
                                 "max_logit_diff_vs_masked": (sparse_logits - masked_logits).abs().max().item()}
    del model
    torch.cuda.empty_cache()


def section_uniform(sweep, results: dict, work: Path) -> None:
    from compressed_export import magnitude_plan, mrpc_batches

    import hfprune

    model, tokenizer = load_fp16()
    dense = {(b, t): cuda_ms(forward_fn(model, b, t)) for b, t in sweep}
    dense_gen = generate_tps(model, tokenizer)
    calibration = mrpc_batches(tokenizer, 2000, split="train")
    hfprune.prune(model, magnitude_plan(model, "per-group", calibration=calibration))
    rows = [{"batch": b, "tokens": t, "dense_ms": dense[(b, t)], "pruned_ms": cuda_ms(forward_fn(model, b, t))}
            for b, t in sweep]
    results["uniform_pruned"] = {"structure": "6 heads / 3 KV / FFN 1152 per layer", "rows": rows,
                                 "generate_tokens_per_s": {"dense": dense_gen, "pruned": generate_tps(model,
                                                                                                      tokenizer)}}
    # Folders for vLLM: float16 pruned (plain Llama config) and int8 compressed-tensors.
    hfprune.save_pruned(model, work / "pruned", tokenizer=tokenizer)
    float_model = model.float().cpu()
    hfprune.export_compressed_tensors(float_model, work / "pruned-int8", bits=8, tokenizer=tokenizer)
    del model, float_model
    torch.cuda.empty_cache()


def generate_tps(model, tokenizer, batch: int = 8, new_tokens: int = 128) -> float:
    ids = tokenizer(["The history of the city"] * batch, return_tensors="pt").to("cuda")
    with torch.inference_mode():
        model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        torch.cuda.synchronize()
        start = datetime.datetime.now()
        out = model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
        torch.cuda.synchronize()
    seconds = (datetime.datetime.now() - start).total_seconds()
    return (out.shape[1] - ids["input_ids"].shape[1]) * batch / seconds


def section_vllm(results: dict, work: Path) -> None:
    try:
        import vllm
    except ImportError as err:
        results["vllm"] = {"ran": False, "why": f"vllm not importable ({err})"}
        return
    runs = {}
    for name, dtype in (("pruned", "float16"), ("pruned-int8", "float16")):
        folder = work / name
        if not folder.is_dir():
            runs[name] = {"ok": False, "why": "folder not written (the uniform section failed)"}
            continue
        proc = subprocess.run([sys.executable, "-c", _VLLM, str(folder), dtype], capture_output=True, text=True,
                              timeout=900)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        runs[name] = ({"ok": True, **json.loads(line[len("RESULT "):])} if line else
                      {"ok": False, "rc": proc.returncode, "stderr_tail": proc.stderr[-2000:]})
    results["vllm"] = {"ran": True, "version": vllm.__version__, "runs": runs}


def print_tables(results: dict) -> None:
    for key, label, a, b in (("two_four_matmul_576x1536", "2:4 matmul (576 -> 1536, fp16)", "dense_ms", "sparse_ms"),):
        if key in results:
            print(f"\n{label}\n\n| batch x tokens | dense ms | 2:4 ms | speedup |\n|---|---|---|---|")
            for r in results[key]:
                print(f"| {r['batch']} x {r['tokens']} | {r[a]:.3f} | {r[b]:.3f} | {r[a] / r[b]:.2f}x |")
    if "two_four_model" in results:
        m = results["two_four_model"]
        print(f"\n2:4 whole model ({m['converted_layers']} Linear layers converted; max |logit diff| vs the masked "
              f"model {m['max_logit_diff_vs_masked']:.3g})\n\n| batch x tokens | dense ms | 2:4 ms | speedup |\n"
              "|---|---|---|---|")
        for r in m["rows"]:
            print(f"| {r['batch']} x {r['tokens']} | {r['dense_ms']:.2f} | {r['two_four_ms']:.2f} | "
                  f"{r['dense_ms'] / r['two_four_ms']:.2f}x |")
    if "uniform_pruned" in results:
        u = results["uniform_pruned"]
        print(f"\nUniformly pruned ({u['structure']}) vs dense, fp16 forward\n\n| batch x tokens | dense ms | "
              "pruned ms | speedup |\n|---|---|---|---|")
        for r in u["rows"]:
            print(f"| {r['batch']} x {r['tokens']} | {r['dense_ms']:.2f} | {r['pruned_ms']:.2f} | "
                  f"{r['dense_ms'] / r['pruned_ms']:.2f}x |")
        g = u["generate_tokens_per_s"]
        print(f"\ngreedy generate, batch 8 x 128 new tokens: dense {g['dense']:.0f} tok/s, pruned {g['pruned']:.0f} "
              "tok/s")
    if "vllm" in results:
        print(f"\nvLLM: {json.dumps(results['vllm'], indent=1)[:3000]}")
    for key, err in results.get("errors", {}).items():
        print(f"\n{key} FAILED:\n{err[-1500:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_serving.json", help="where to write every figure (JSON)")
    parser.add_argument("--quick", action="store_true", help="two sweep points only")
    parser.add_argument("--skip", action="append", default=[], choices=["two_four", "uniform", "vllm"])
    args = parser.parse_args()
    refuse_without_gpu()
    sweep = QUICK_SWEEP if args.quick else SWEEP
    results = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "errors": {}}
    import transformers

    results["transformers"] = transformers.__version__
    with tempfile.TemporaryDirectory(prefix="gpu-serving-") as tmp:
        work = Path(tmp)
        for name, section in (("two_four", lambda: section_two_four(sweep, results)),
                              ("uniform", lambda: section_uniform(sweep, results, work)),
                              ("vllm", lambda: section_vllm(results, work))):
            if name in args.skip:
                continue
            try:
                section()
            except Exception:  # noqa: BLE001  (record and go on: one failure must not hide the other figures)
                results["errors"][name] = traceback.format_exc()
            Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"command: {results['command']}\ngpu: {results['gpu']}; torch {results['torch']}, transformers "
          f"{results['transformers']}; {results['date']}; host {platform.node()} ({os.cpu_count()} CPU cores)")
    print_tables(results)


if __name__ == "__main__":
    main()
