"""Does hardware-friendly rounding of a uniform structure pay on CPU? SmolLM2-shaped decoder blocks (hidden 576,
head_dim 64), random weights, timed with transformers' own LlamaModel.

- FFN width: 1152 (a multiple of 64/128, what `select_neurons(..., round_to=64)` gives) against 1150 / 1151 / 1153.
- KV heads for 6 kept query heads of 9 (3 KV groups of 3): removing a whole group (2 KV heads), one head per group
  (3 KV heads), or an uneven removal that forces hfprune to repeat KV heads (6 KV heads, groups of 1).

Median forward time of `--repeats` rounds of `--layers` blocks, one thread; the variants take turns in every round.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/hardware_rounding.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
import transformers

SHAPES = [(1, 1, "decode 1 x 1 (256 cached)"), (1, 128, "prefill 1 x 128"), (8, 128, "prefill 8 x 128")]
VARIANTS = [("FFN 1152 (multiple of 64)", 6, 3, 1152), ("FFN 1150", 6, 3, 1150), ("FFN 1151", 6, 3, 1151),
            ("FFN 1153", 6, 3, 1153), ("6 heads / 2 KV (whole KV group removed)", 6, 2, 1152),
            ("6 heads / 3 KV (one head per group)", 6, 3, 1152),
            ("6 heads / 6 KV (uneven removal, KV repeated)", 6, 6, 1152)]


def block_model(heads: int, kv: int, ffn: int, layers: int):
    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=576, num_hidden_layers=layers,
                                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=64,
                                      intermediate_size=ffn, max_position_embeddings=2048)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.LlamaModel(config).eval()


def interleaved_ms(models: list, batch: int, tokens: int, repeats: int) -> list[float]:
    """Median ms per model; the models take turns inside every repeat, so load changes on a shared machine hit all
    of them alike."""
    x = torch.randn(batch, tokens, 576, generator=torch.Generator().manual_seed(0))
    times = [[] for _ in models]
    with torch.inference_mode():
        caches = [None] * len(models)
        if tokens == 1:
            ctx = torch.randn(batch, 256, 576)
            caches = [m(inputs_embeds=ctx, use_cache=True).past_key_values for m in models]
        for r in range(repeats + 1):
            for i, model in enumerate(models):
                cache = caches[i]
                if cache is not None and cache.get_seq_length() > 256:
                    cache.crop(256 - cache.get_seq_length())  # the same 256-token cache for every decode step
                start = time.perf_counter()
                model(inputs_embeds=x, past_key_values=cache, use_cache=cache is not None)
                if r:  # the first round warms up
                    times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    models = [block_model(heads, kv, ffn, args.layers) for _, heads, kv, ffn in VARIANTS]
    columns = [interleaved_ms(models, b, t, args.repeats) for b, t, _ in SHAPES]
    rows = [(name, [col[i] for col in columns]) for i, (name, *_) in enumerate(VARIANTS)]
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores (shared), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, threads {torch.get_num_threads()}; date {datetime.date.today()}")
    print(f"{args.layers} SmolLM2-shaped blocks (hidden 576, head_dim 64), sdpa attention; median ms of "
          f"{args.repeats} interleaved rounds, and relative to the first row of its group")
    print()
    print("| structure | " + " | ".join(label for _, _, label in SHAPES) + " |")
    print("|---|" + "---|" * len(SHAPES))
    for i, (name, times) in enumerate(rows):
        ref = rows[0][1] if i < 4 else rows[5][1]
        print(f"| {name} | " + " | ".join(f"{t:.2f} ({t / r:.2f}x)" for t, r in zip(times, ref)) + " |")


if __name__ == "__main__":
    main()
