"""Real-model check of `add_remote_code`: prune minilm-l6-sst2 non-uniformly, save, and reload it with plain
transformers (`trust_remote_code=True`) in a process where hfprune cannot be imported; print the logits difference.

    python benchmarks/remote_code_check.py [--model ../shared/models/minilm-l6-sst2] [--sentences 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_LOADER = r"""
import sys
sys.modules["hfprune"] = None  # hfprune cannot be imported in this process
import json, time
import torch
import transformers
from safetensors.torch import load_file, save_file

folder, inputs_file, out_file = sys.argv[1:4]
inputs = load_file(inputs_file)
result = {}
for attn in ("sdpa", "eager"):
    t0 = time.perf_counter()
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, trust_remote_code=True, attn_implementation=attn, output_loading_info=True)
    result[attn] = {"load_s": time.perf_counter() - t0, "class": type(model).__module__ + "." + type(model).__name__,
                    "loading_info": {k: sorted(map(str, v)) for k, v in info.items() if v}}
    with torch.no_grad():
        save_file({"logits": model.eval()(**inputs).logits}, out_file + "." + attn)
print("RESULT " + json.dumps(result))
"""


def random_plan(model, seed: int):
    """Layer 0 loses every head, layer 4 goes, the others lose a random number of heads and FFN neurons."""
    import hfprune

    rng = random.Random(seed)
    adapter = hfprune.get_adapter(model)
    layers = adapter.layers(model)
    heads, ffn = adapter.num_heads(model, layers[0]), adapter.intermediate_size(layers[0])
    plan_heads = {0: list(range(heads))}
    plan_neurons = {}
    for i in range(1, len(layers)):
        plan_heads[i] = sorted(rng.sample(range(heads), rng.randrange(0, heads)))
        plan_neurons[i] = sorted(rng.sample(range(ffn), rng.randrange(0, ffn)))
    return hfprune.PruningPlan(heads=plan_heads, neurons=plan_neurons, layers=[4] if len(layers) > 4 else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="../shared/models/minilm-l6-sst2")
    parser.add_argument("--data", default="../shared/data/glue/SST-2/dev.tsv")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hfprune
    from hfprune.remote import add_remote_code

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    with open(args.data, newline="", encoding="utf-8") as f:
        rows = list(islice(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE), args.sentences))
    inputs = dict(tokenizer([r["sentence"] for r in rows], padding=True, truncation=True, max_length=128,
                            return_tensors="pt"))
    hfprune.prune(model, random_plan(model, args.seed))
    structure = hfprune.model_structure(model)

    with tempfile.TemporaryDirectory(prefix="hfprune-remote-check-") as tmp:
        tmp = Path(tmp)
        folder = hfprune.save_pruned(model, tmp / "pruned", tokenizer=tokenizer)
        t0 = time.perf_counter()
        add_remote_code(folder)
        generate_s = time.perf_counter() - t0
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp / "inputs.safetensors"))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp / "modules")}
        proc = subprocess.run([sys.executable, "-c", _LOADER, str(folder), str(tmp / "inputs.safetensors"),
                               str(tmp / "logits")], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
        rows_out = []
        for attn in ("sdpa", "eager"):
            model.config._attn_implementation = attn
            with torch.no_grad():
                expected = model(**inputs).logits
            got = load_file(str(tmp / f"logits.{attn}"))["logits"]
            same_pred = bool(torch.equal(got.argmax(-1), expected.argmax(-1)))
            rows_out.append((attn, (got - expected).abs().max().item(), same_pred, result[attn]["load_s"],
                             result[attn]["loading_info"] or "none"))

    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}; date {datetime.date.today()}")
    print(f"model: {args.model}; pruned structure: heads {structure['heads']}, ffn {structure['ffn']}, "
          f"layers {structure['num_layers']}")
    print(f"add_remote_code: {generate_s:.2f} s; reload in a process without hfprune, {args.sentences} SST-2 dev "
          "sentences:\n")
    print("| attention | max abs logits diff | same predictions | load s | loading issues |")
    print("| --- | --- | --- | --- | --- |")
    for attn, diff, same, load_s, issues in rows_out:
        print(f"| {attn} | {diff:.2e} | {same} | {load_s:.2f} | {issues} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
