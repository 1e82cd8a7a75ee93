"""`python -m hfprune.demo`: the whole workflow on a built-in tiny model, no download needed."""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import transformers

    import hfprune

    torch.manual_seed(args.seed)
    config = transformers.BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                                     intermediate_size=1024, num_labels=2)
    model = transformers.BertForSequenceClassification(config).eval()
    batch = {"input_ids": torch.randint(0, 1000, (8, 128))}
    print(f"dense model: {hfprune.model_structure(model)}")

    plan = hfprune.PruningPlan(heads={i: list(range(0, 8, 2)) for i in range(4)},
                               neurons={i: list(range(0, 1024, 2)) for i in range(4)}, layers=[3])
    with torch.no_grad():
        dense = model(**batch).logits
        with hfprune.masked(model, plan):
            masked = model(**batch).logits
        t0 = time.perf_counter()
        for _ in range(3):
            model(**batch)
        t_dense = (time.perf_counter() - t0) / 3
        hfprune.prune(model, plan)
        pruned = model(**batch).logits
        t0 = time.perf_counter()
        for _ in range(3):
            model(**batch)
        t_pruned = (time.perf_counter() - t0) / 3
    print(f"pruned model: {hfprune.model_structure(model)}")
    print(f"max |masked - pruned| logits = {(masked - pruned).abs().max():.2e}; "
          f"max |dense - pruned| = {(dense - pruned).abs().max():.2e}")
    print(f"latency: dense {t_dense * 1000:.1f} ms, pruned {t_pruned * 1000:.1f} ms ({t_dense / t_pruned:.2f}x)")
    with tempfile.TemporaryDirectory() as out:
        hfprune.save_pruned(model, out)
        reloaded = hfprune.load_pruned(out)
        with torch.no_grad():
            diff = (reloaded(**batch).logits - pruned).abs().max()
    print(f"saved and reloaded with hfprune.load_pruned: max |diff| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
