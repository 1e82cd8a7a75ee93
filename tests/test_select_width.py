"""`select_width`: a uniform hidden / heads / FFN / depth plan to a parameter target, the split searched on
calibration loss; tiny random llama and qwen3."""

from __future__ import annotations

import pytest
import torch
import transformers

import hfprune
from hfprune.plan import PruningPlan
from hfprune.selection.width import count_params

VOCAB = 96
ROUND = {"hidden_round_to": 4, "ffn_round_to": 8}


def _llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return transformers.LlamaForCausalLM(config).eval()


def _qwen3(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return transformers.Qwen3ForCausalLM(config).eval()


def _batches(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (2, 12), generator=g)} for _ in range(3)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def _unit_cost(model, dense: int) -> int:
    """The most parameters one rounding unit of any axis holds (hidden 4 channels, one KV group, 8 FFN neurons)."""
    layers = range(model.config.num_hidden_layers)
    plans = [PruningPlan(hidden=list(range(4))), PruningPlan(heads={i: [0, 1] for i in layers}),
             PruningPlan(neurons={i: list(range(8)) for i in layers})]
    return max(dense - count_params(model, p) for p in plans)


@pytest.mark.parametrize("make", [_llama, _qwen3], ids=["llama", "qwen3"])
def test_target_met_within_one_unit_and_plain_reload(make, tmp_path):
    model, batches = make(), _batches()
    state = _state(model)
    dense = sum(p.numel() for p in model.parameters())
    plan = hfprune.select_width(model, batches, params=0.75, **ROUND)
    assert _same(model, state) and not model.training  # masks only, all undone
    meta = plan.meta["selection"]
    target = int(0.75 * dense)
    assert meta["dense_params"] == dense and meta["target_params"] == target
    assert target - _unit_cost(model, dense) < meta["pruned_params"] <= target
    hfprune.prune(model, plan)
    assert sum(p.numel() for p in model.parameters()) == meta["pruned_params"]
    structure = hfprune.model_structure(model)
    assert structure["hidden_size"] == meta["shape"]["hidden_size"]
    assert set(structure["ffn"]) == {meta["shape"]["ffn"]} and set(structure["heads"]) == {meta["shape"]["heads"]}
    assert meta["shape"]["ffn"] % ROUND["ffn_round_to"] == 0 and meta["shape"]["hidden_size"] % 4 == 0
    hfprune.save_pruned(model, tmp_path / "out")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_more_axes_never_worse_on_calibration_loss():
    model, batches = _llama(3), _batches(4)
    results = {}
    for axes in [("ffn",), ("heads", "ffn"), ("hidden", "ffn"), ("hidden", "heads", "ffn")]:
        plan = hfprune.select_width(model, batches, params=0.7, axes=axes, **ROUND)
        results[axes] = plan.meta["selection"]
    full = results[("hidden", "heads", "ffn")]
    for axes, meta in results.items():
        assert full["calibration_loss"] <= meta["calibration_loss"], axes
        assert meta["shape"]["ffn"] % ROUND["ffn_round_to"] == 0, axes  # grid points are rounded too
        assert full["rounds"][0]["candidates"] >= meta["rounds"][0]["candidates"]
    assert results[("heads", "ffn")]["calibration_loss"] <= results[("ffn",)]["calibration_loss"]
    assert full["rounds"][0]["candidates"] > results[("heads", "ffn")]["rounds"][0]["candidates"]
    # the search really compares: the chosen shape is not the FFN-only one
    assert results[("ffn",)]["shape"]["hidden_size"] == 64 and results[("ffn",)]["shape"]["heads"] == 4


def test_depth_and_iterations_with_recovery_between_rounds():
    model, batches = _llama(), _batches()
    dense = sum(p.numel() for p in model.parameters())
    calls = []

    def recover(m):
        calls.append(len(calls))
        assert m is model

    plan = hfprune.select_width(model, batches, params=0.6, depth=1, iterations=3, recover=recover, **ROUND)
    meta = plan.meta["selection"]
    assert len(calls) == 2 and len(meta["rounds"]) == 3 and len(plan.layers) == 1
    targets = [r["target_params"] for r in meta["rounds"]]
    assert targets == sorted(targets, reverse=True) and targets[-1] == int(0.6 * dense)
    assert all(r["params"] <= r["target_params"] for r in meta["rounds"])
    hfprune.prune(model, plan)
    assert sum(p.numel() for p in model.parameters()) == meta["pruned_params"] <= int(0.6 * dense)
    assert model.config.num_hidden_layers == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"params": 1.0}, "params must be"), ({"params": 0}, "params must be"), ({"params": 1.5}, "params must be"),
    ({"params": True}, "params must be"), ({"axes": ("hidden", "width")}, "unknown axis 'width'"),
    ({"axes": ()}, "axes must be"), ({"depth": 4}, "depth=4"), ({"iterations": 0}, "iterations must be"),
    ({"group_mode": "half"}, "group_mode"),
])
def test_bad_input_one_clear_error_model_untouched(kwargs, match):
    model, batches = _llama(), _batches()
    state = _state(model)
    with pytest.raises(ValueError, match=match):
        hfprune.select_width(model, batches, **{"params": 0.75, **kwargs})
    assert _same(model, state)


def test_axis_the_family_lacks_is_refused():
    from tests.cnn_models import make_cnn

    model = make_cnn("resnet_basic")
    state = _state(model)
    with pytest.raises(ValueError, match="has no 'heads' axis"):
        hfprune.select_width(model, [], params=0.75, axes=("heads",))
    assert _same(model, state)
