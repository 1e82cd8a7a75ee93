from __future__ import annotations

import pytest
import torch
from conftest import logits_of, make_inputs, make_model

import hfprune
from hfprune import PruningPlan


def test_json_round_trip(tmp_path):
    plan = PruningPlan(heads={0: [3, 1]}, neurons={2: [5, 0, 9]}, layers=[1], meta={"criterion": "michel"})
    assert PruningPlan.from_json(plan.to_json()) == plan
    plan.to_json(tmp_path / "plan.json")
    again = PruningPlan.from_json(tmp_path / "plan.json")
    assert again == plan and again.heads == {0: [1, 3]}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"heads": {0: [1, 1]}}, "layer 0 lists index 1 more than once"),
        ({"heads": {0: [-1]}}, "negative"),
        ({"neurons": {-2: [0]}}, "negative"),
        ({"layers": [0, 0]}, "more than once"),
        ({"heads": {"x": [0]}}, "layer key 'x'"),
        ({"heads": {0: [0.5]}}, "integers"),
    ],
)
def test_malformed_plans_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningPlan(**kwargs)


def test_unknown_json_key():
    with pytest.raises(ValueError, match="unknown key 'head'"):
        PruningPlan.from_dict({"head": {}})


@pytest.mark.parametrize(
    "plan, message",
    [
        (PruningPlan(heads={0: [4]}), "layer 0 index 4 is out of range"),
        (PruningPlan(heads={7: [0]}), "layer 7 is out of range"),
        (PruningPlan(neurons={1: [48]}), "layer 1 index 48 is out of range"),
        (PruningPlan(layers=[3]), "layer 3 is out of range"),
    ],
)
def test_out_of_range_leaves_model_untouched(plan, message):
    model = make_model("bert")
    inputs = make_inputs(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = logits_of(model, inputs)
    for action in (hfprune.prune, hfprune.mask):
        with pytest.raises(ValueError, match=message):
            action(model, plan)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(model.config, "hfprune")
    assert torch.equal(logits_of(model, inputs), logits)


def test_plan_for_a_different_model():
    small = make_model("bert")
    plan = PruningPlan(heads={0: [1]}, meta={"model_structure": hfprune.model_structure(small)})
    hfprune.prune(small, PruningPlan(neurons={0: [1, 2]}))
    with pytest.raises(ValueError, match="made for a model with structure"):
        hfprune.prune(small, plan)


def test_unsupported_architecture():
    import transformers

    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match=r"model_type='t5'.*Supported: bert"):
        hfprune.prune(model, PruningPlan(heads={0: [0]}))


@pytest.mark.parametrize(
    "layers, error, message",
    [
        ([2, 0, 2], ValueError, r"^PruningPlan.layers lists layer 2 more than once$"),  # was "layer 0 lists index 2"
        ([1.5], ValueError, r"layers must hold integer layer indices, got \[1.5\]"),
        (["a"], ValueError, r"layers must hold integer layer indices"),
        ("12", TypeError, r"layers must be a list of layer indices, got '12'"),  # was "layers[0] must hold integers"
        (3, TypeError, r"layers must be a list of layer indices, got 3"),  # was "'int' object is not iterable"
    ],
)
def test_malformed_layer_lists_are_named_as_layer_lists(layers, error, message):
    with pytest.raises(error, match=message):
        PruningPlan(layers=layers)
    assert PruningPlan(layers=(3, 1)).layers == [1, 3]


def test_removing_every_layer_is_refused():
    model = make_model("bert")
    with pytest.raises(ValueError, match="removes all 3 layers"):
        hfprune.prune(model, PruningPlan(layers=[0, 1, 2]))
    assert hfprune.model_structure(model)["num_layers"] == 3
