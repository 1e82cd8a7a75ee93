"""Repeated 2-process gloo scoring runs under `torchrun`, beside busy-loop processes: does a run ever die at teardown
("terminate called without an active exception", issue 17)?

Each run: `torchrun --nproc_per_node 2 THIS --worker`; every rank loads MiniLM-L6 (SST-2) from ../shared, scores
attention heads with `hfprune.head_importance` over its half of 8 batches (tqdm bar on, as a user would have it),
checks that both ranks got the same scores, calls `destroy_process_group()` and exits normally (full interpreter
teardown: that is where the crash was seen). The driver counts runs, failures and the ones whose output carries
the message, and prints one JSON line.

    python benchmarks/gloo_teardown.py --runs 20 --busy 2
    python benchmarks/gloo_teardown.py --runs 5 --busy 2 --variant plain   # the same collectives, no hfprune
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "models" / "minilm-l6-sst2"
MESSAGE = "terminate called without an active exception"


def _native_threads() -> list[str]:
    """Names of this process's OS threads (gloo's are `gloo_tcp_loop` and `pt_gloo_runloop`)."""
    tasks = Path("/proc/self/task")
    return sorted((t / "comm").read_text().strip() for t in tasks.iterdir()) if tasks.is_dir() else []


def _worker(variant: str, dynamo_first: bool) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if dynamo_first:  # the workaround: torch._dynamo imported after init_process_group keeps the group alive
        import torch._dynamo  # noqa: F401
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if variant == "plain":  # the collectives head_importance makes, without hfprune or a model
        scores = torch.zeros(6, 12)
        for _ in range(3):
            dist.all_reduce(scores)
    else:
        import transformers

        import hfprune

        model = transformers.AutoModelForSequenceClassification.from_pretrained(MODEL, use_safetensors=True).eval()
        g = torch.Generator().manual_seed(0)
        batches = [{"input_ids": torch.randint(1000, 20000, (4, 32), generator=g),
                    "attention_mask": torch.ones(4, 32, dtype=torch.long),
                    "labels": torch.randint(0, 2, (4,), generator=g)} for _ in range(8)]
        scores = hfprune.head_importance(model, batches[rank::world], show_progress=variant != "quiet")
    gathered = [torch.zeros_like(scores) for _ in range(world)]
    dist.all_gather(gathered, scores)
    assert all(torch.equal(gathered[0], g) for g in gathered), "ranks disagree"
    dist.destroy_process_group()
    gloo = [name for name in _native_threads() if "gloo" in name]
    print(f"rank {rank} ok; gloo threads alive after destroy_process_group: {gloo}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_run(variant: str, dynamo_first: bool, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), __file__, "--worker", "--variant", variant, *(["--dynamo-first"] * dynamo_first)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, output = "timeout", f"{err.stdout or ''}{err.stderr or ''}"
    lingering = sum("gloo threads alive" in line and "[]" not in line for line in output.splitlines())
    return {"rc": code, "seconds": round(time.perf_counter() - start, 1), "message": MESSAGE in output,
            "ranks_with_gloo_threads_after_destroy": lingering,
            "tail": output[-1500:] if code != 0 or MESSAGE in output else ""}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--variant", default="hfprune", choices=["hfprune", "quiet", "plain"])
    parser.add_argument("--dynamo-first", action="store_true", help="import torch._dynamo before init_process_group")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the runs")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.variant, args.dynamo_first)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    runs = []
    try:
        for index in range(args.runs):
            runs.append(_one_run(args.variant, args.dynamo_first, args.timeout))
            print(json.dumps({"run": index, **{k: v for k, v in runs[-1].items() if k != "tail"}}), flush=True)
            if runs[-1]["tail"]:
                print(runs[-1]["tail"], file=sys.stderr, flush=True)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    failed = [r for r in runs if r["rc"] != 0]
    print(json.dumps({"variant": args.variant, "dynamo_first": args.dynamo_first, "busy": args.busy,
                      "runs": len(runs), "failed": len(failed),
                      "with_message": sum(r["message"] for r in runs),
                      "ranks_with_gloo_threads_after_destroy": sum(r["ranks_with_gloo_threads_after_destroy"]
                                                                   for r in runs),
                      "median_seconds": sorted(r["seconds"] for r in runs)[len(runs) // 2]}))


if __name__ == "__main__":
    main()
