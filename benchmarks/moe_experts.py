"""MoE expert pruning test bed (issue 21): a small Qwen3-MoE trained here, then experts removed by each criterion.

No real MoE checkpoint is reachable offline, so the test bed is built. Two ways were possible: MoEfication of
SmolLM2 (split each FFN's 1536 neurons into experts by clustering, a router from the centroids, top-k of n; Zhang et
al. 2022) or training a small Qwen3-MoE on the shared text. **This script trains a Qwen3-MoE**, because:

- MoEfication sums the selected experts with weight 1, while every transformers MoE family multiplies expert j's
  output by its routing weight (softmax, top-k, renormalised). A MoEfied SmolLM2 in a v5 family only reproduces the
  dense FFN if the router is flattened (logits / temperature -> all top-k weights ~ 1/k, outputs scaled by k); the
  gate values then carry no information, REAP collapses onto the plain activation norm and `router_weight` onto
  `frequency`: the bed could not tell the criteria apart, which is its one job.
- A trained Qwen3-MoE has what REAP is about: a router learned jointly with its experts (with the load-balancing
  auxiliary loss of the real models, so frequencies are near-uniform as in Qwen3-30B-A3B) and the routing of the
  target checkpoint (softmax over experts, top-k, `norm_topk_prob=True`). It is one of the four supported families
  and uses the same code path (`Qwen3MoeExperts` fused tensors) as the 30B model.
- It needs nothing outside `../shared`: the tokenizer is all-MiniLM-L6-v2's WordPiece (uncased, 30,522 tokens),
  the text GLUE's; SmolLM2 would need the GGUF package and a 135M-parameter model on every scoring pass.
The price: a 4-layer, 16-expert model trained for minutes is far from a real LLM (perplexity in the hundreds), and
the figures say how criteria rank on it, not on Qwen3-30B-A3B.

Text: training = SST-2 train sentences + MRPC train sentences (both sides); calibration (scoring) = SST-2 dev
sentences, not trained on; evaluation = MRPC dev sentences (both sides), consecutive non-overlapping windows.
The trained model is a plain `Qwen3MoeForCausalLM` folder (config, safetensors, tokenizer, `testbed.json`) in
`--out` (default `$HFPRUNE_CACHE/moe-testbed-qwen3`), reused when present.

    python benchmarks/moe_experts.py             # build or reuse, then the table (build: 1500 steps at ~0.8 s
                                                 # per step on one core of the shared 2-core machine, ~20 min)
    python benchmarks/moe_experts.py --tiny      # smoke run in seconds (tests/test_moe_testbed.py)
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

import hfprune

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
TOKENIZER = SHARED / "models" / "all-MiniLM-L6-v2"
GLUE = SHARED / "data" / "glue"
CRITERIA = ("reap", "frequency", "router_weight", "random")
RATIOS = (0.25, 0.5)


@dataclasses.dataclass
class Settings:
    """Model shape and training budget of the test bed."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    experts: int = 16
    top_k: int = 2
    moe_intermediate: int = 128
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 1500
    lr: float = 2e-3
    aux_coef: float = 0.01
    max_sentences: int | None = None  # per training file; None: all
    calib_windows: int = 64
    eval_windows: int = 128
    seed: int = 0


TINY = Settings(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=8, top_k=2, moe_intermediate=16,
                seq_len=16, batch_size=8, steps=30, lr=1e-2, max_sentences=200, calib_windows=4, eval_windows=4)


def sentences(task_file: str, columns: tuple[str, ...], limit: int | None = None) -> list[str]:
    with open(GLUE / task_file, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows if limit is None else rows[:limit]
    return [row[c].strip() for row in rows for c in columns if row.get(c)]


def token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts tokenized without special tokens and joined by one [SEP]."""
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded + [tokenizer.sep_token_id])
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, seq_len: int, count: int, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """The first `count` consecutive non-overlapping windows, in batches of `batch_size` (the logits of a batch are
    batch x seq_len x 30,522 floats: 8 x 64 is 63 MB)."""
    count = min(count, stream.numel() // seq_len)
    ids = stream[:count * seq_len].reshape(count, seq_len)
    return [{"input_ids": ids[i:i + batch_size]} for i in range(0, count, batch_size)]


def testbed_config(settings: Settings, tokenizer) -> transformers.Qwen3MoeConfig:
    return transformers.Qwen3MoeConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden, num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads, num_key_value_heads=settings.kv_heads, head_dim=settings.head_dim,
        intermediate_size=4 * settings.hidden, moe_intermediate_size=settings.moe_intermediate,
        num_experts=settings.experts, num_experts_per_tok=settings.top_k, norm_topk_prob=True,
        router_aux_loss_coef=settings.aux_coef, max_position_embeddings=max(128, settings.seq_len),
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id)


def train(model, stream: torch.Tensor, settings: Settings) -> list[dict]:
    """AdamW with linear warm-up and cosine decay on random windows of the training stream; LM loss plus the
    router's load-balancing loss (`output_router_logits=True`), as the real MoE checkpoints are trained."""
    gen = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, settings.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    log, every = [], max(1, settings.steps // 10)
    model.train()
    for step in range(settings.steps):
        starts = torch.randint(0, stream.numel() - settings.seq_len, (settings.batch_size,), generator=gen)
        ids = torch.stack([stream[s:s + settings.seq_len] for s in starts.tolist()])
        out = model(input_ids=ids, labels=ids, output_router_logits=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % every == 0 or step == settings.steps - 1:
            log.append({"step": step, "loss": out.loss.item(), "aux_loss": out.aux_loss.item()})
            print(f"  step {step}: loss {out.loss:.3f} (aux {out.aux_loss:.3f})", flush=True)
    model.eval()
    return log


def build_testbed(settings: Settings, tokenizer, out: Path) -> transformers.PreTrainedModel:
    """Train the test bed and save it to `out` (a plain Qwen3-MoE folder + `testbed.json`)."""
    torch.manual_seed(settings.seed)
    texts = (sentences("SST-2/train.tsv", ("sentence",), settings.max_sentences)
             + sentences("MRPC/train.tsv", ("#1 String", "#2 String"), settings.max_sentences))
    stream = token_ids(tokenizer, texts)
    config = testbed_config(settings, tokenizer)
    config._attn_implementation = "sdpa"
    model = transformers.Qwen3MoeForCausalLM(config)
    print(f"training a Qwen3-MoE test bed: {model.num_parameters() / 1e6:.2f}M parameters, "
          f"{settings.experts} experts top-{settings.top_k} x {settings.layers} layers, {stream.numel()} tokens",
          flush=True)
    start = time.perf_counter()
    log = train(model, stream, settings)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {"settings": dataclasses.asdict(settings), "train_log": log, "train_s": time.perf_counter() - start,
            "train_tokens": stream.numel(), "date": _now(), "machine": platform.machine()}
    (out / "testbed.json").write_text(json.dumps(meta, indent=1))
    return model


def load_or_build(settings: Settings, out: Path, rebuild: bool):
    tokenizer = transformers.AutoTokenizer.from_pretrained(out if (out / "tokenizer.json").is_file() and not rebuild
                                                           else TOKENIZER)
    if (out / "config.json").is_file() and not rebuild:
        return transformers.AutoModelForCausalLM.from_pretrained(out).eval(), tokenizer
    return build_testbed(settings, tokenizer, out), tokenizer


def size_of(model) -> dict[str, int]:
    return {"params": sum(p.numel() for p in model.parameters()),
            "bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def prune_table(model, calib: list[dict], evaluation: list[dict], ratios=RATIOS,
               criteria=CRITERIA, seed: int = 0) -> list[dict]:
    """One row per (criterion, ratio): score the experts on the calibration windows, remove the lowest `ratio` of
    every layer (`uniform=True`: the same count everywhere, so the result stays a plain Qwen3-MoE config), then the
    held-out perplexity and the size of the pruned copy. `random` uses `seed`."""
    rows = []
    top_k = int(model.config.num_experts_per_tok)
    for criterion in criteria:
        start = time.perf_counter()
        scores = hfprune.expert_importance(model, calib, criterion=criterion, seed=seed)
        score_s = time.perf_counter() - start
        for ratio in ratios:
            plan = hfprune.select_experts(scores, ratio=ratio, uniform=True, min_keep=top_k)
            pruned = hfprune.prune(copy.deepcopy(model), plan)
            rows.append({"criterion": criterion, "ratio": ratio, "ppl": hfprune.perplexity(pruned, evaluation),
                         "score_s": score_s, "experts": hfprune.model_structure(pruned)["experts"],
                         **size_of(pruned)})
            print(f"  {criterion} {ratio:.0%}: ppl {rows[-1]['ppl']:.2f}", flush=True)
    return rows


def _now() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


def _print_table(dense: dict, rows: list[dict] | None) -> None:
    print("| criterion | experts removed | MRPC-dev ppl | parameters | bytes |")
    print("|---|---|---|---|---|")
    print(f"| (dense) | 0% | {dense['ppl']:.2f} | {dense['params']:,} | {dense['bytes']:,} |")
    for r in rows or []:
        print(f"| {r['criterion']} | {r['ratio']:.0%} | {r['ppl']:.2f} | {r['params']:,} | {r['bytes']:,} |")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run: a tiny model, a few steps, seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="test-bed folder (default $HFPRUNE_CACHE/moe-testbed-qwen3, or ~/.cache/hfprune/...)")
    parser.add_argument("--rebuild", action="store_true", help="train again even if --out holds a test bed")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 1500; --tiny: 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TINY if args.tiny else Settings()
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps)
    cache = Path(os.environ.get("HFPRUNE_CACHE", Path.home() / ".cache" / "hfprune"))
    out = args.out or cache / ("moe-testbed-qwen3" + ("-tiny" if args.tiny else ""))
    model, tokenizer = load_or_build(settings, out, args.rebuild)
    calib = windows(token_ids(tokenizer, sentences("SST-2/dev.tsv", ("sentence",))), settings.seq_len,
                    settings.calib_windows)
    evaluation = windows(token_ids(tokenizer, sentences("MRPC/dev.tsv", ("#1 String", "#2 String"))),
                         settings.seq_len, settings.eval_windows)
    dense = {"ppl": hfprune.perplexity(model, evaluation), **size_of(model)}
    rows = prune_table(model, calib, evaluation)
    print(f"\n{_now()}, {platform.machine()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"command: python benchmarks/moe_experts.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    _print_table(dense, rows)
    return {"out": out, "dense": dense, "rows": rows, "model": model}


if __name__ == "__main__":
    main()
