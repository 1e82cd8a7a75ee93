"""FLAP compensation (An et al. 2024) for transformers: the removed heads', FFN neurons' and hidden channels' mean
contribution goes into the consumers' biases; masked == pruned == load_pruned with it; Llama gets its biases from
the stock `attention_bias` / `mlp_bias` flags, so the folder stays plain; it lowers the output error."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from conftest import logits_of, make_inputs, make_model

import hfprune

TOL = 1e-4


def _calib(model, n=4):
    return [make_inputs(model, batch=4, seq=12, seed=100 + i) for i in range(n)]


def _plan(kinds: str, seed: int = 0) -> hfprune.PruningPlan:
    rng = random.Random(seed)
    plan = hfprune.PruningPlan()
    if "heads" in kinds:
        plan.heads = {i: [rng.randrange(4)] for i in range(3)}
    if "ffn" in kinds:
        plan.neurons = {i: rng.sample(range(48), 24) for i in range(3)}
    if "hidden" in kinds:
        plan.hidden = rng.sample(range(32), 8)
    return plan


def _error(model, calib, dense) -> float:
    return sum(float((logits_of(model, b) - d).pow(2).mean()) for b, d in zip(calib, dense))


@pytest.mark.parametrize("family, kinds", [
    ("llama", "heads+ffn"), ("gpt2", "heads+ffn"), ("bert", "heads+ffn"), ("vit", "heads+ffn"),
    ("distilbert", "heads+ffn"), ("vit", "hidden"), ("bert", "hidden"), ("llama", "heads+ffn+hidden"),
])
def test_compensation_lowers_the_output_error_on_calibration_data(family, kinds):
    model = make_model(family)
    calib = _calib(model)
    dense = [logits_of(model, b) for b in calib]
    plan = _plan(kinds)
    with hfprune.masked(model, plan):
        plain = _error(model, calib, dense)
    with hfprune.masked(model, plan, compensate=calib):
        compensated = _error(model, calib, dense)
    assert compensated < plain, (plain, compensated)  # deterministic (seeded models and data)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2", "bert", "vit", "distilbert"])
def test_masked_equals_pruned_equals_reloaded_with_compensation(family, tmp_path):
    model = make_model(family)
    calib = _calib(model, 2)
    kinds = "hidden" if family == "qwen3" else "heads+ffn+hidden"  # qwen3 has no flag for an FFN bias
    plan = _plan(kinds, seed=3)
    plan.layers = [2]
    comp = hfprune.measure_compensation(model, plan, calib)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    with hfprune.masked(model, plan, compensate=comp):
        masked = logits_of(model, calib[0])
    assert model.state_dict().keys() == dense_state.keys() and model.config.to_dict() == config  # biases dropped
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in dense_state.items())
    hfprune.prune(model, plan, compensate=comp)
    pruned = logits_of(model, calib[0])
    assert (masked - pruned).abs().max() < TOL
    hfprune.save_pruned(model, tmp_path / "out")
    assert (logits_of(hfprune.load_pruned(tmp_path / "out"), calib[0]) - pruned).abs().max() < TOL


def test_llama_gets_its_biases_through_the_stock_flags_and_reloads_plainly(tmp_path):
    model = make_model("llama")
    calib = _calib(model, 2)
    plan = hfprune.PruningPlan(heads={i: [2] for i in range(3)}, neurons={i: list(range(0, 48, 3)) for i in range(3)},
                               hidden=[0, 4, 9, 13, 17, 22, 26, 31])
    hfprune.prune(model, plan, compensate=calib)
    assert model.config.attention_bias is True and model.config.mlp_bias is True
    layer = model.model.layers[0]
    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                 layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
        assert proj.bias is not None
    assert layer.self_attn.o_proj.bias.abs().sum() > 0 and layer.mlp.down_proj.bias.abs().sum() > 0
    folder = tmp_path / "plain"
    hfprune.save_pruned(model, folder)
    ids = calib[0]["input_ids"]
    torch.save({"ids": ids, "logits": logits_of(model, {"input_ids": ids})}, tmp_path / "ref.pt")
    script = (
        "import sys, torch, transformers\n"
        "sys.modules['hfprune'] = None\n"
        f"ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()\n"
        "with torch.no_grad():\n"
        "    print('DIFF', (m(input_ids=ref['ids']).logits - ref['logits']).abs().max().item())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split("DIFF")[-1]) < TOL


@pytest.mark.parametrize("family, plan, match", [
    ("mistral", hfprune.PruningPlan(heads={0: [1]}), "self_attn.o_proj has no bias and the mistral config has no"),
    ("qwen3", hfprune.PruningPlan(neurons={0: [1]}), "mlp.down_proj has no bias and the qwen3 config"),
    ("mistral", hfprune.PruningPlan(hidden=[1]), "nowhere to fold"),
])
def test_nowhere_to_fold_is_refused_and_changes_nothing(family, plan, match):
    model = make_model(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    for action in (hfprune.prune, hfprune.mask):
        with pytest.raises(ValueError, match=match):
            action(model, plan, compensate=_calib(model, 1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()) and model.config.to_dict() == config


def test_a_compensation_for_another_plan_or_structure_is_refused():
    model = make_model("gpt2")
    calib = _calib(model, 1)
    comp = hfprune.measure_compensation(model, _plan("heads"), calib)
    with pytest.raises(ValueError, match="measured for a different plan"):
        hfprune.prune(model, _plan("ffn"), compensate=comp)
    hfprune.prune(model, hfprune.PruningPlan(neurons={1: [0]}))  # the heads plan still fits, the model changed
    with pytest.raises(ValueError, match="structure has changed"):
        hfprune.prune(model, _plan("heads"), compensate=comp)
    with pytest.raises(ValueError, match="must be a dict with 'input_ids'"):
        hfprune.measure_compensation(model, _plan("heads"), [{"pixel_values": torch.zeros(1, 3, 8, 8)}])
