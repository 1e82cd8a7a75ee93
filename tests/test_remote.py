"""A pruned folder + `add_remote_code` loads with plain transformers (`trust_remote_code=True`) in a process where
hfprune cannot be imported, with the logits (and greedy generations) of the pruned model."""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import FAMILIES, logits_of, make_inputs, make_model
from safetensors.torch import save_file

import hfprune
from hfprune import PruningPlan
from hfprune.remote import add_remote_code
from hfprune.remote.generate import MODELING_FILE

# Runs with hfprune made unimportable *before* anything else is imported; loads every folder the test prepared.
_LOADER = r"""
import sys
sys.modules["hfprune"] = None
import json
from pathlib import Path
import torch
import transformers
from safetensors.torch import load_file

torch.set_num_threads(1)  # tiny models: threads only add contention

try:
    import hfprune  # noqa: F401
    raise SystemExit("hfprune is importable in the loader process")
except ImportError:
    pass

results = {}
for folder in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
    ref = load_file(str(folder) + ".safetensors")
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    task_key = next(k for k in auto_map if k != "AutoModel")
    model, info = getattr(transformers, task_key).from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True, attn_implementation="eager")
    model.eval()
    inputs = {k: ref[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in ref}
    with torch.no_grad():
        logits = model(**inputs).logits
        base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
        hidden = base.eval()(**inputs).last_hidden_state
        generated = None
        if "generated" in ref:
            generated = model.generate(ref["prompt"], max_new_tokens=4, do_sample=False, pad_token_id=0)
    results[folder.name] = {
        "task_class": f"{type(model).__module__}.{type(model).__name__}",
        "base_class": f"{type(base).__module__}.{type(base).__name__}",
        "loading_info": {k: sorted(map(str, v)) for k, v in info.items() if v},
        "logits_diff": (logits - ref["logits"]).abs().max().item(),
        "hidden_diff": (hidden - ref["hidden"]).abs().max().item(),
        "same_generation": None if generated is None else bool(torch.equal(generated, ref["generated"])),
    }
print("RESULTS " + json.dumps(results))
"""


def _random_plan(model, seed: int) -> PruningPlan:
    """Non-uniform: layer 0 loses every head and a random share of its FFN, layer 1 loses one random head (a partial
    GQA group, so KV heads get repeated) and its whole FFN, layer 2 goes."""
    rng = random.Random(seed)
    adapter = hfprune.get_adapter(model)
    layers = adapter.layers(model)
    heads = adapter.num_heads(model, layers[0])
    ffn = adapter.intermediate_size(layers[0])
    return PruningPlan(
        heads={0: list(range(heads)), 1: [rng.randrange(heads)]},
        neurons={0: rng.sample(range(ffn), rng.randrange(1, ffn)), 1: list(range(ffn))},
        layers=[2],
    )


def _prepare(family: str, seed: int, out) -> dict:
    model = make_model(family, seed)
    hfprune.prune(model, _random_plan(model, seed))
    structure = hfprune.model_structure(model)
    inputs = make_inputs(model)
    ref = {**inputs, "logits": logits_of(model, inputs)}
    with torch.no_grad():
        ref["hidden"] = model.base_model(**inputs).last_hidden_state
    if "input_ids" in inputs and hasattr(model, "generate") and model.can_generate():
        ref["prompt"] = inputs["input_ids"][1:].clone()  # the unpadded row: greedy decoding through the KV cache
        ref["generated"] = model.generate(ref["prompt"], max_new_tokens=4, do_sample=False, pad_token_id=0)
    folder = out / family
    hfprune.save_pruned(model, folder)
    add_remote_code(folder)
    save_file({k: v.contiguous() for k, v in ref.items()}, str(folder) + ".safetensors")
    return structure


def test_every_family_loads_without_hfprune(tmp_path):
    out = tmp_path / "folders"
    out.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention
    try:
        structures = {family: _prepare(family, seed, out) for seed, family in enumerate(FAMILIES)}
    finally:
        torch.set_num_threads(threads)
    # The plans do reach the hard cases: no head left in layer 0, no FFN in layer 1, a removed layer, and for GQA
    # models 3 query heads over 2 KV groups, i.e. a KV head repeated.
    for family, structure in structures.items():
        assert (structure["num_layers"], structure["heads"][0], structure["ffn"][1]) == (2, 0, 0), family
    assert all(structures[f]["kv_heads"][1] == 3 for f in ("llama", "mistral", "qwen2", "qwen3"))

    # The generated file must not depend on hfprune (the loader process would fail anyway; this names the line).
    for family in FAMILIES:
        tree = ast.parse((out / family / MODELING_FILE).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert imported <= {"__future__", "json", "torch", "transformers"}, (family, imported)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-I", "-c", _LOADER, str(out)], env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS "):])
    assert sorted(results) == sorted(FAMILIES)
    for family, res in results.items():
        # Loaded through the generated file, with nothing missing, unexpected or re-initialised.
        assert res["task_class"].startswith("transformers_modules.") and res["task_class"].endswith(
            json.loads((out / family / "config.json").read_text())["architectures"][0]), (family, res)
        assert res["base_class"].startswith("transformers_modules."), (family, res)
        assert res["loading_info"] == {}, (family, res["loading_info"])
        assert res["logits_diff"] <= 1e-6, (family, res)
        assert res["hidden_diff"] <= 1e-6, (family, res)
        assert res["same_generation"] in (None, True), (family, res)
    causal = [f for f, r in results.items() if r["same_generation"] is not None]
    assert {"gpt2", "llama", "qwen2"} <= set(causal)


def test_folder_still_loads_with_hfprune_and_regenerates(tmp_path):
    model = make_model("llama", 3)
    hfprune.prune(model, _random_plan(model, 3))
    inputs = make_inputs(model)
    hfprune.save_pruned(model, tmp_path / "m")
    first = add_remote_code(tmp_path / "m").read_text()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "modeling_hfprune.LlamaModel",
                                  "AutoModelForCausalLM": "modeling_hfprune.LlamaForCausalLM"}
    # Idempotent, and hfprune's own loader ignores the auto_map.
    assert add_remote_code(tmp_path / "m").read_text() == first
    reloaded = hfprune.load_pruned(tmp_path / "m", attn_implementation="eager")
    assert (logits_of(reloaded, inputs) - logits_of(model, inputs)).abs().max() <= 1e-6
    # A further prune + save makes the old file stale; regenerating follows the new structure.
    hfprune.prune(reloaded, PruningPlan(heads={1: [0]}))
    hfprune.save_pruned(reloaded, tmp_path / "m")
    assert add_remote_code(tmp_path / "m").read_text() != first
    assert not [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_stale_file_is_refused_by_name(tmp_path):
    from transformers import AutoConfig

    from hfprune.remote.generate import _import_file

    model = make_model("bert", 4)
    hfprune.prune(model, _random_plan(model, 4))
    hfprune.save_pruned(model, tmp_path / "m")
    generated = _import_file(add_remote_code(tmp_path / "m"))
    config = AutoConfig.from_pretrained(tmp_path / "m")
    config.hfprune["layers"][0]["ffn"] += 1  # as if the model had been re-pruned without regenerating the file
    with torch.device("meta"), pytest.raises(ValueError, match="add_remote_code"):
        generated.BertForSequenceClassification(config)


def test_bad_folders_are_refused_and_left_untouched(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        add_remote_code(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        add_remote_code(tmp_path / "empty")
    dense = make_model("bert", 5)
    dense.save_pretrained(tmp_path / "dense")
    before = sorted(p.name for p in (tmp_path / "dense").iterdir())
    with pytest.raises(ValueError, match="no 'hfprune' record"):
        add_remote_code(tmp_path / "dense")
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == before
    # Someone else's remote code is not overwritten.
    model = make_model("bert", 6)
    hfprune.prune(model, PruningPlan(heads={0: [1]}))
    hfprune.save_pruned(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.MyModel"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="modeling_custom.MyModel"):
        add_remote_code(tmp_path / "m")
    assert not (tmp_path / "m" / MODELING_FILE).exists()
