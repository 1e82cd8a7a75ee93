"""Dense vs pruned GLUE dev metrics of `hfprune prune` on all-MiniLM-L6-v2 (SST-2 and MRPC), as a table.

Runs (unless --from-results) the two documented commands: fine-tune the base model, remove 50% of the heads by Michel
importance, recover; then prints one row per task from each OUT/results.json, with the command, machine and date.

    python benchmarks/cli_glue.py                    # runs both (about 10 minutes each on 2 idle cores)
    python benchmarks/cli_glue.py --from-results     # only prints the table of out/sst2 and out/mrpc
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--model", "../shared/models/all-MiniLM-L6-v2", "--data-dir", "../shared/data/glue", "--heads", "0.5",
          "--criterion", "michel"]
RUNS = {
    "sst2": ["--finetune-steps", "250", "--recover-steps", "100"],
    "mrpc": ["--finetune-steps", "150", "--recover-steps", "50", "--learning-rate", "1e-4"],
}


def command(task: str, out: str) -> list[str]:
    return ["hfprune", "prune", "--task", task, *COMMON, *RUNS[task], "--output", out]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-results", action="store_true", help="do not run; read out/<task>/results.json")
    parser.add_argument("--tasks", default="sst2,mrpc")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    for task in tasks:
        if not args.from_results:
            subprocess.run(command(task, f"out/{task}"), cwd=ROOT, check=True)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}, "
          f"python {sys.version.split()[0]}")
    print("| task | metric | dense | pruned, before recovery | pruned | params | FLOPs | CPU speedup | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in tasks:
        r = json.loads((ROOT / "out" / task / "results.json").read_text())
        split = r["eval_split"]
        before = (r["pruned"]["metrics_before_recovery"] or {}).get(split, {})
        for m in r["metrics"]:
            print(f"| {task} | {m} | {r['dense']['metrics'][split][m]:.4f} | {before.get(m, float('nan')):.4f} | "
                  f"{r['pruned']['metrics'][split][m]:.4f} | {r['params_ratio']:.1%} | {r['flops_ratio']:.1%} | "
                  f"{r['speedup']:.2f}x | {r['wall_seconds'] / 60:.1f} min |")
    for task in tasks:
        r = json.loads((ROOT / "out" / task / "results.json").read_text())
        print(f"# {task}: {shlex.join(command(task, f'out/{task}'))}  "
              f"(run {r['date_utc']} UTC, {r['machine']['cpu_count']} CPUs, {r['machine']['torch_threads']} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
