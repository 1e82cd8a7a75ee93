"""Width to a parameter target on SmolLM2-135M: depth only, heads + FFN, hidden + heads + FFN (`select_width`), the
same with FLAP compensation, and Torch-Pruning's LLM recipe as the peer; each without recovery, after LM-loss
recovery and after logit distillation from the dense model at the same token budget.

    nice -n 10 env OMP_NUM_THREADS=2 python benchmarks/llm_width.py --out /work/runs/llm_width

Recovery text: SST-2 train sentences (../shared/data/glue); perplexity: MRPC dev sentences. Each row is written as
JSON to `--out/<row>.json` when done; a rerun skips the rows that exist. Torch-Pruning (`pip install
torch-pruning==1.6.0 --no-deps`, benchmark only) could not build its groups for the whole 30-layer model in 28
CPU-minutes, so its row and the hfprune row it is compared with run on a shallower copy (the first 8 layers).
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smollm import smollm2_folder  # noqa: E402

import hfprune  # noqa: E402
from hfprune.calibration import token_stream  # noqa: E402

GLUE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue"
ROWS = ("heads_ffn", "hidden_heads_ffn", "hidden_heads_ffn_comp", "depth", "shallow_hfprune", "shallow_tp")


def sentences(task_file: str, columns: tuple[str, ...]) -> list[str]:
    with open(GLUE / task_file, encoding="utf-8-sig", newline="") as f:
        return [row[c].strip() for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                for c in columns if row.get(c)]


def windows(stream: torch.Tensor, seq_len: int, count: int, batch: int = 1) -> list[dict]:
    count = min(count, stream.numel() // (seq_len * batch))
    ids = stream[:count * seq_len * batch].reshape(count, batch, seq_len)
    return [{"input_ids": ids[i]} for i in range(count)]


def train(model, teacher, batches, lr: float) -> float:
    """AdamW over `batches` (one step each); LM loss, or KL(teacher || student) at T=1 when `teacher` is given."""
    start = time.perf_counter()
    embed = model.get_input_embeddings().weight
    embed.requires_grad_(False)  # embeddings / tied head frozen, as in llm_structured.py
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for batch in batches:
        ids = batch["input_ids"]
        if teacher is None:
            loss = model(input_ids=ids, labels=ids).loss
        else:
            with torch.no_grad():
                target = torch.log_softmax(teacher(input_ids=ids).logits.float(), -1)
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
            loss = torch.nn.functional.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    embed.requires_grad_(True)
    return time.perf_counter() - start


def shallow(model, layers: int):
    small = copy.deepcopy(model)
    small.model.layers = small.model.layers[:layers]
    small.config.num_hidden_layers = layers
    small.config.layer_types = small.config.layer_types[:layers] if getattr(small.config, "layer_types", None) \
        else None
    return small


def torch_pruning_recipe(model, calib, ratio: float):
    """Torch-Pruning 1.6.0's examples/LLMs/prune_llm.py: MetaPruner, GroupMagnitudeImportance(p=2), hidden + heads +
    FFN at one ratio (lm_head ignored), then the config updated as the example does."""
    import torch_pruning as tp

    config = model.config
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = config.num_attention_heads
            num_heads[m.k_proj] = config.num_key_value_heads
            num_heads[m.v_proj] = config.num_key_value_heads
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=calib[0]["input_ids"][:1, :64], importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=False, output_transform=lambda x: x.logits, pruning_ratio=ratio,
        ignored_layers=[model.lm_head], num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=ratio, round_to=4)
    pruner.step()
    for m in model.modules():
        if hasattr(m, "q_proj") and hasattr(m, "num_key_value_groups"):
            m.num_heads = m.q_proj.weight.shape[0] // m.head_dim
            m.num_key_value_heads = m.k_proj.weight.shape[0] // m.head_dim
            m.num_key_value_groups = m.num_heads // m.num_key_value_heads
    config.hidden_size = model.model.embed_tokens.weight.shape[1]
    config.intermediate_size = model.model.layers[0].mlp.gate_proj.weight.shape[0]
    config.num_attention_heads = model.model.layers[0].self_attn.num_heads
    config.num_key_value_heads = model.model.layers[0].self_attn.num_key_value_heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/work/runs/llm_width")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--params", type=float, default=0.75)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--calib", type=int, default=4, help="calibration windows (of --seq-len, batch 1)")
    parser.add_argument("--eval", type=int, default=24, help="MRPC dev windows (of --seq-len)")
    parser.add_argument("--shallow-layers", type=int, default=8)
    parser.add_argument("--table", action="store_true", help="print the markdown table of the rows in --out and stop")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        return print_table(out, args.rows.split(","))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    folder = smollm2_folder()
    dense = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    sst2 = token_stream(tokenizer, sentences("SST-2/train.tsv", ("sentence",)))
    evals = windows(token_stream(tokenizer, sentences("MRPC/dev.tsv", ("#1 String", "#2 String"))), args.seq_len,
                    args.eval)
    calib = windows(sst2, args.seq_len, args.calib)
    recovery = windows(sst2[args.calib * args.seq_len:], args.seq_len, args.steps, args.batch_size)
    tokens = sum(b["input_ids"].numel() for b in recovery)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; recovery {tokens} tokens, eval "
          f"{len(evals)} x {args.seq_len}", flush=True)
    rows = {}
    for name in args.rows.split(","):  # phase 1: every row pruned and measured without recovery
        path = out / f"{name}.json"
        done = json.loads(path.read_text()) if path.exists() else {}
        if "ppl_distill" in done:
            print(f"{name}: done before, {path}", flush=True)
            continue
        try:
            rows[name] = prune_row(name, dense, calib, evals, args)
        except Exception as error:  # a peer that fails is reported, the other rows go on
            print(f"  {name}: FAILED {type(error).__name__}: {error}", flush=True)
            path.write_text(json.dumps({"row": name, "error": f"{type(error).__name__}: {error}"}, indent=1))
            continue
        rows[name][0].update(recovery_tokens=tokens, date=f"{datetime.date.today()}")
        path.write_text(json.dumps(rows[name][0], indent=1))
    for name, (row, model, base) in rows.items():  # phase 2: recovery, LM loss then distillation
        for kind, teacher in (("lm", None), ("distill", base)):
            student = copy.deepcopy(model)
            seconds = train(student, teacher, recovery, args.lr)
            row[f"ppl_{kind}"] = hfprune.perplexity(student, evals)
            row[f"{kind}_s"] = seconds
            print(f"  {name}: after {kind} recovery ppl {row[f'ppl_{kind}']:.2f} ({seconds:.0f} s)", flush=True)
            del student
            (out / f"{name}.json").write_text(json.dumps(row, indent=1))


LABELS = {"depth": "depth only (block influence)", "heads_ffn": "heads + FFN (select_width)",
          "hidden_heads_ffn": "hidden + heads + FFN (select_width)",
          "hidden_heads_ffn_comp": "hidden + heads + FFN, FLAP compensation",
          "shallow_hfprune": "8 layers: hidden + heads + FFN (select_width)",
          "shallow_tp": "8 layers: Torch-Pruning 1.6.0 LLM recipe"}


def print_table(out: Path, names: list[str]) -> None:
    def cell(row, key):
        return f"{row[key]:.1f}" if key in row else "not run"

    print("| row | params | shape (hidden / heads / KV / FFN) | dense ppl | ppl | after LM loss | after distillation |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        path = out / f"{name}.json"
        if not path.exists():
            print(f"| {LABELS.get(name, name)} | not run | | | | | |")
            continue
        row = json.loads(path.read_text())
        if "error" in row:
            print(f"| {LABELS.get(name, name)} | failed: {row['error'][:80]} | | | | | |")
            continue
        sel = row.get("plan_meta", {}).get("selection", {})
        shape = sel.get("shape") if sel.get("units") == "width" else None
        shape = "{hidden_size} / {heads} / {kv_heads} / {ffn}".format(**shape) if shape else (
            f"{len(row['layers'])} layers removed" if row.get("layers") else "as the recipe gives")
        print(f"| {LABELS.get(name, name)} | {row['params'] / 1e6:.1f}M ({row['params'] / row['dense_params']:.3f}) "
              f"| {shape} | {row['dense_ppl']:.1f} | {cell(row, 'ppl')} | {cell(row, 'ppl_lm')} | "
              f"{cell(row, 'ppl_distill')} |")


PLANS: dict = {}


def prune_row(name, dense, calib, evals, args) -> tuple[dict, object, object]:
    base = shallow(dense, args.shallow_layers) if name.startswith("shallow") else dense
    teacher_params = sum(p.numel() for p in base.parameters())
    row = {"row": name, "dense_params": teacher_params, "dense_ppl": hfprune.perplexity(base, evals)}
    print(f"{name}: dense {teacher_params / 1e6:.1f}M params, ppl {row['dense_ppl']:.2f}", flush=True)
    t0 = time.perf_counter()
    model = copy.deepcopy(base)
    if name == "shallow_tp":
        torch_pruning_recipe(model, calib, 1.0 - args.params)
    else:
        axes = {"heads_ffn": ("heads", "ffn"), "depth": ()}.get(name, ("hidden", "heads", "ffn"))
        if axes:
            key = (name.startswith("shallow"), axes)  # the compensated row reuses its uncompensated twin's plan
            if key not in PLANS:
                PLANS[key] = hfprune.select_width(model, calib, params=args.params, axes=axes)
            plan = PLANS[key]
        else:
            layers = len(model.model.layers)
            influence = hfprune.layer_importance(model, calib, method="block_influence", show_progress=False)
            count = next(k for k in range(1, layers) if hfprune.selection.width.count_params(
                model, hfprune.PruningPlan(layers=list(range(k)))) <= args.params * teacher_params)
            plan = hfprune.select_layers(influence, count=count)
        row["plan_meta"], row["layers"] = plan.meta, list(plan.layers)
        hfprune.prune(model, plan, compensate=calib if name.endswith("comp") else None)
    row["select_s"] = time.perf_counter() - t0
    row["params"] = sum(p.numel() for p in model.parameters())
    row["ppl"] = hfprune.perplexity(model, evals)
    print(f"  {name}: {row['params'] / 1e6:.2f}M params ({row['params'] / teacher_params:.3f}), ppl {row['ppl']:.2f}"
          f" (select {row['select_s']:.0f} s)", flush=True)
    return row, model, base


if __name__ == "__main__":
    main()
