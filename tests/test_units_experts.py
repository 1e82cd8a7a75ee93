"""The `experts` unit kind (issue 21) on tiny random qwen3_moe, qwen2_moe, mixtral and olmoe models: masked == pruned ==
load_pruned, a uniform plan reloads with plain transformers, the expert criteria against the independent reference
(tests/moe_reference.py), selection, and bad input."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import transformers
from moe_models import FAMILIES, NUM_EXPERTS, TOP_K, count_key, make_moe_model, moe_blocks, random_plan, token_batch
from moe_reference import reference_scores

import hfprune

IMPLEMENTATIONS = ("eager", "grouped_mm")


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _plan(model, seed: int, uniform: bool = False) -> hfprune.PruningPlan:
    """Random experts in every MoE layer, plus random heads where the family has head pruning."""
    gen = torch.Generator().manual_seed(seed + 100)
    heads = None
    if "heads" in hfprune.get_adapter(model).unit_kinds:
        n_layers = model.config.num_hidden_layers
        heads = {layer: sorted(torch.randperm(4, generator=gen)[:int(torch.randint(1, 4, (1,), generator=gen))]
                               .tolist()) for layer in range(n_layers)}
    return hfprune.PruningPlan(experts=random_plan(model, seed, uniform=uniform), heads=heads)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_masked_equals_pruned_equals_load_pruned(family, implementation, tmp_path):
    batch = token_batch(1)
    for seed in range(2):
        model = make_moe_model(family, seed=seed, experts_implementation=implementation)
        plan = _plan(model, seed)
        dense = _logits(model, batch)
        with hfprune.masked(model, plan):
            masked = _logits(model, batch)
        assert torch.equal(_logits(model, batch), dense)  # the gates are gone
        assert (masked - dense).abs().max() > 1e-2  # the plan changes the model (so equality below means something)
        hfprune.prune(model, plan)
        pruned = _logits(model, batch)
        assert (masked - pruned).abs().max() <= 1e-4
        structure = hfprune.model_structure(model)
        for layer, block in moe_blocks(model).items():
            kept = NUM_EXPERTS - len(plan.experts.get(layer, []))
            assert structure["experts"][layer] == kept == block.gate.weight.shape[0] == block.experts.num_experts
            assert block.experts.gate_up_proj.shape[0] == block.experts.down_proj.shape[0] == kept
        folder = tmp_path / f"{seed}"
        model.save_pretrained(folder)
        reloaded = hfprune.load_pruned(folder)
        reloaded.set_experts_implementation(implementation)
        assert hfprune.model_structure(reloaded) == structure
        assert (_logits(reloaded, batch) - pruned).abs().max() <= 1e-4


_PLAIN = r"""
import sys
sys.modules["hfprune"] = None  # hfprune cannot be imported here
import torch, transformers
from safetensors.torch import load_file
torch.set_num_threads(1)
ref = load_file(sys.argv[2])
remote = len(sys.argv) > 3
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=remote).eval()
with torch.no_grad():
    diff = (model(input_ids=ref["input_ids"]).logits - ref["logits"]).abs().max().item()
print(f"LOADED {type(model).__name__} {model.config.num_experts} {diff}")
"""


def _load_without_hfprune(folder, reference, *remote) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1",
           "HF_MODULES_CACHE": str(folder / "modules")}
    proc = subprocess.run([sys.executable, "-I", "-c", _PLAIN, str(folder), str(reference), *remote], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(x for x in proc.stdout.splitlines() if x.startswith("LOADED ")).split()


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_plan_reloads_with_plain_transformers(family, tmp_path):
    from safetensors.torch import save_file

    model = make_moe_model(family, seed=3)
    before = model.num_parameters()
    plan = hfprune.PruningPlan(experts=random_plan(model, 5, uniform=True))
    removed = {len(v) for v in plan.experts.values()}
    assert len(removed) == 1
    kept = NUM_EXPERTS - removed.pop()
    hfprune.prune(model, plan)
    config = model.config
    width = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    per_expert = 3 * width * config.hidden_size + config.hidden_size  # the fused tensors + the router row
    assert before - model.num_parameters() == plan.count("experts") * per_expert
    assert config.num_experts == kept and model.num_experts == kept
    model.save_pretrained(tmp_path / "plain")
    saved = transformers.AutoConfig.from_pretrained(tmp_path / "plain").to_dict()
    assert saved[count_key(family)] == kept
    batch = token_batch(2)
    save_file({"input_ids": batch["input_ids"], "logits": _logits(model, batch)}, str(tmp_path / "ref.safetensors"))
    _, name, count, diff = _load_without_hfprune(tmp_path / "plain", tmp_path / "ref.safetensors")
    assert name == type(model).__name__ and int(count) == kept and float(diff) <= 1e-4


def _padded_batches():
    batches = [token_batch(0), token_batch(1, batch=3, seq=9)]
    batches[1]["attention_mask"][0, :4] = 0  # left padding: not a calibration token
    batches[1]["attention_mask"][2, -2:] = 0
    return batches


@pytest.mark.parametrize("family", FAMILIES)
def test_criteria_equal_the_reference(family):
    model = make_moe_model(family, seed=1)
    batches = _padded_batches()
    reference = reference_scores(model, batches)
    for criterion in ("reap", "frequency", "router_weight"):
        scores = hfprune.expert_importance(model, batches, criterion=criterion)
        assert sorted(scores) == sorted(reference) == sorted(moe_blocks(model))
        for layer, row in scores.items():
            assert row.shape == (NUM_EXPERTS,)
            assert torch.allclose(row, reference[layer][criterion], rtol=0, atol=1e-6), (criterion, layer)
    freq = hfprune.expert_importance(model, batches, criterion="frequency")
    assert all(abs(float(row.sum()) - TOP_K) < 1e-9 for row in freq.values())


def test_random_is_seeded_and_needs_a_seed():
    model = make_moe_model("mixtral")
    a = hfprune.expert_importance(model, criterion="random", seed=4)
    assert all(torch.equal(a[k], v) for k, v in hfprune.expert_importance(model, criterion="random", seed=4).items())
    with pytest.raises(ValueError, match="seed"):
        hfprune.expert_importance(model, criterion="random")
    with pytest.raises(ValueError, match="needs data"):
        hfprune.expert_importance(model, criterion="reap")


def test_select_experts_uniform_and_over_layers():
    scores = {0: torch.tensor([5.0, 1.0, 3.0, 2.0]), 2: torch.tensor([10.0, 40.0, 30.0, 20.0])}
    plan = hfprune.select_experts(scores, ratio=0.5)
    assert plan.experts == {0: [1, 3], 2: [0, 3]}
    # Over layers, scores relative to their layer's mean: layer 0's [1, 2] and layer 2's [10] are lowest.
    plan = hfprune.select_experts(scores, ratio=0.375, uniform=False)
    assert plan.experts == {0: [1, 3], 2: [0]}
    plan = hfprune.select_experts(scores, ratio=1.0, uniform=False, min_keep=2)
    assert plan.experts == {0: [1, 3], 2: [0, 3]}
    with pytest.raises(ValueError, match="ratio"):
        hfprune.select_experts(scores, ratio=1.5)


def test_scores_to_plan_to_pruned_model_end_to_end():
    model = make_moe_model("qwen3_moe")
    batches = _padded_batches()
    scores = hfprune.expert_importance(model, batches, criterion="reap")
    plan = hfprune.select_experts(scores, ratio=0.5, min_keep=TOP_K)
    hfprune.prune(model, plan)
    assert hfprune.model_structure(model)["experts"] == [4, 0, 4]
    assert model.config.num_experts == 4 and model.config.mlp_only_layers == [1]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.config.to_json_string()


def _untouched(model, snapshot) -> bool:
    state, config = snapshot
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state) \
        and model.config.to_json_string() == config


@pytest.mark.parametrize("experts, message", [
    ({0: [1], 2: [NUM_EXPERTS]}, f"layer 2 index {NUM_EXPERTS} is out of range"),
    ({0: list(range(NUM_EXPERTS - TOP_K + 1))}, "layer 0 would keep 1 of 8 experts, fewer than num_experts_per_tok=2"),
    ({1: [0]}, "layer 1 is a dense MLP layer"),
    ({5: [0]}, "layer 5 is out of range"),
])
def test_bad_plans_name_the_layer_and_change_nothing(experts, message):
    model = make_moe_model("qwen3_moe")
    snapshot = _snapshot(model)
    plan = hfprune.PruningPlan(experts=experts)
    for call in (hfprune.prune, hfprune.mask):
        with pytest.raises(ValueError, match=message):
            call(model, plan)
        assert _untouched(model, snapshot)


def test_expert_plan_on_a_dense_model_is_refused():
    config = transformers.LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2)
    model = transformers.LlamaForCausalLM(config).eval()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match="has no MoE experts.*experts pruning supports.*mixtral"):
        hfprune.prune(model, hfprune.PruningPlan(experts={0: [1]}))
    assert _untouched(model, snapshot)
    with pytest.raises(ValueError, match="has no MoE experts"):
        hfprune.expert_importance(model, [token_batch()], criterion="reap")


def test_prune_refuses_while_expert_gates_are_attached():
    model = make_moe_model("olmoe")
    plan = hfprune.PruningPlan(experts={0: [1]})
    snapshot = _snapshot(model)
    with hfprune.masked(model, plan):
        with pytest.raises(ValueError, match="layer 0 still has experts gates"):
            hfprune.prune(model, plan)
    assert _untouched(model, snapshot)


def test_experts_compose_with_layer_removal_and_reload(tmp_path):
    model = make_moe_model("qwen3_moe", seed=2)
    batch = token_batch(3)
    hfprune.prune(model, hfprune.PruningPlan(experts={0: [1, 2], 2: [0]}, layers=[0]))
    assert hfprune.model_structure(model)["experts"] == [0, 7]
    assert model.config.mlp_only_layers == [0]  # the dense layer moved from index 1 to 0
    pruned = _logits(model, batch)
    model.save_pretrained(tmp_path)
    reloaded = hfprune.load_pruned(tmp_path)
    assert (_logits(reloaded, batch) - pruned).abs().max() <= 1e-4
    clone = copy.deepcopy(model)
    hfprune.prune(clone, hfprune.PruningPlan(experts={1: [6]}))
    assert clone.config.num_experts == 6


def test_flex_olmo_shares_the_olmoe_adapter(tmp_path):
    config = transformers.FlexOlmoConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=16, num_experts=8,
                                         num_experts_per_tok=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.FlexOlmoForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp." in name:
                p.normal_(0, 0.5)
    batch = token_batch(4)
    plan = hfprune.PruningPlan(experts={0: [1, 2, 3], 1: [0]})
    dense = _logits(model, batch)
    with hfprune.masked(model, plan):
        masked = _logits(model, batch)
    assert (masked - dense).abs().max() > 1e-2
    hfprune.prune(model, plan)
    assert (_logits(model, batch) - masked).abs().max() <= 1e-4
    model.save_pretrained(tmp_path)
    assert (_logits(hfprune.load_pruned(tmp_path), batch) - masked).abs().max() <= 1e-4


def test_non_uniform_plan_loads_without_hfprune_through_remote_code(tmp_path):
    from safetensors.torch import save_file

    model = make_moe_model("qwen2_moe", seed=6)
    hfprune.prune(model, hfprune.PruningPlan(experts={0: [1, 2, 3], 2: [0]}, heads={1: [0, 1]}))
    model.save_pretrained(tmp_path / "remote")
    hfprune.add_remote_code(tmp_path / "remote")
    batch = token_batch(5)
    save_file({"input_ids": batch["input_ids"], "logits": _logits(model, batch)}, str(tmp_path / "ref.safetensors"))
    _, name, _, diff = _load_without_hfprune(tmp_path / "remote", tmp_path / "ref.safetensors", "remote")
    assert name == "Qwen2MoeForCausalLM" and float(diff) <= 1e-4
