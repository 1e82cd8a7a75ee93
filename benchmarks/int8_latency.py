"""CPU latency of SmolLM2-135M-Instruct: dense, uniformly pruned, and pruned + int8 dynamic quantization.

int8 paths: `hfprune.quantize_dynamic_int8` (torch.ao's fbgemm dynamic quantization, deprecated in favour of torchao)
and, if the `torchao` package is importable, torchao's `Int8DynamicActivationInt8WeightConfig` (the maintained API)
in eager mode. Pruning: 6 of 9 heads (one per KV group) and FFN 1152 in every layer, by weight magnitude (as
benchmarks/compressed_export.py, without calibration: only the shapes matter here). Median forward time of
`--repeats` rounds per shape, the variants taking turns in every round, one thread.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/int8_latency.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compressed_export import magnitude_plan, smollm2  # noqa: E402

SHAPES = [(1, 1, "decode step (1 x 1, 64 cached)"), (1, 128, "prefill 1 x 128"), (8, 128, "prefill 8 x 128")]


def interleaved_ms(models: list, batch: int, tokens: int, repeats: int) -> list[float]:
    """Median forward ms per model; the models take turns in every round (a shared machine's load hits all alike)."""
    ids = torch.randint(10, 1000, (batch, tokens), generator=torch.Generator().manual_seed(0))
    caches = [None] * len(models)
    with torch.inference_mode():
        if tokens == 1:  # a decode step against a 64-token cache
            context = torch.randint(10, 1000, (batch, 64))
            caches = [m(context, use_cache=True).past_key_values for m in models]
        times = [[] for _ in models]
        for r in range(repeats + 1):
            for i, model in enumerate(models):
                past = copy.deepcopy(caches[i]) if caches[i] is not None else None
                start = time.perf_counter()
                model(ids, past_key_values=past, use_cache=past is not None)
                if r:  # the first round warms up
                    times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def torchao_int8(model):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return None
    target = copy.deepcopy(model)
    quantize_(target, Int8DynamicActivationInt8WeightConfig())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore")
    import hfprune

    dense, _ = smollm2()
    pruned = copy.deepcopy(dense)
    hfprune.prune(pruned, magnitude_plan(pruned, "per-group"))
    variants = {"dense float32": dense, "pruned float32": pruned,
                "pruned + int8 (torch.ao, quantize_dynamic_int8)": hfprune.quantize_dynamic_int8(pruned)}
    ao = torchao_int8(pruned)
    if ao is not None:
        variants["pruned + int8 (torchao Int8DynamicActivationInt8Weight, eager)"] = ao
    columns = [interleaved_ms(list(variants.values()), b, t, args.repeats) for b, t, _ in SHAPES]
    rows = {name: [col[i] for col in columns] for i, name in enumerate(variants)}

    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores (shared), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; torchao {'absent' if ao is None else 'present'}; date {datetime.date.today()}")
    print()
    print("| model | " + " | ".join(label for _, _, label in SHAPES) + " |")
    print("|---|" + "---|" * len(SHAPES))
    base = rows["pruned float32"]
    for name, times in rows.items():
        cells = [f"{t:.1f} ms ({b / t:.2f}x)" for t, b in zip(times, base)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(x: speed relative to the pruned float32 model)")


if __name__ == "__main__":
    main()
