"""The contract every family satisfies: masked logits == pruned logits == reloaded logits."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import logits_of, make_inputs, make_model

import hfprune
from hfprune import PruningPlan

TOL = 1e-4


def random_plan(model, rng: random.Random, allow_layers: bool = True) -> PruningPlan:
    """A random plan that always empties one layer's heads and (if allowed) removes one layer."""
    structure = hfprune.model_structure(model)
    n = structure["num_layers"]
    heads, neurons = {}, {}
    headless = rng.randrange(n)
    for layer in range(n):
        h = structure["heads"][layer]
        if layer == headless:
            heads[layer] = list(range(h))
        elif h > 1 and rng.random() < 0.8:
            heads[layer] = rng.sample(range(h), rng.randint(1, h - 1))
        f = structure["ffn"][layer]
        if f and rng.random() < 0.8:
            neurons[layer] = rng.sample(range(f), rng.randint(1, f))
    layers = [rng.randrange(n)] if allow_layers and n > 1 and rng.random() < 0.7 else []
    return PruningPlan(heads=heads, neurons=neurons, layers=layers)


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_equals_pruned_equals_reloaded(family, seed, tmp_path):
    model = make_model(family, seed=seed)
    inputs = make_inputs(model)
    rng = random.Random(f"{family}-{seed}")
    plan = random_plan(model, rng)
    dense = logits_of(model, inputs)
    with hfprune.masked(model, plan):
        masked = logits_of(model, inputs)
    assert torch.equal(logits_of(model, inputs), dense), "masks must leave no trace after the with-block"
    assert not torch.allclose(masked, dense), "the plan should change the output"

    hfprune.prune(model, plan)
    pruned = logits_of(model, inputs)
    assert (masked - pruned).abs().max().item() <= TOL

    model.save_pretrained(tmp_path / "out")
    reloaded = hfprune.load_pruned(tmp_path / "out")
    assert hfprune.model_structure(reloaded) == hfprune.model_structure(model)
    assert (logits_of(reloaded, inputs) - pruned).abs().max().item() <= TOL


def test_repeated_prune_composes(family, tmp_path):
    model = make_model(family, seed=3)
    inputs = make_inputs(model)
    rng = random.Random(family)
    first = random_plan(model, rng, allow_layers=False)
    hfprune.prune(model, first)
    second = random_plan(model, rng)
    with hfprune.masked(model, second):
        masked = logits_of(model, inputs)
    hfprune.prune(model, second)
    pruned = logits_of(model, inputs)
    assert (masked - pruned).abs().max().item() <= TOL
    record = model.config.hfprune
    assert len(record["history"]) == 2
    model.save_pretrained(tmp_path / "out")
    reloaded = hfprune.load_pruned(tmp_path / "out")
    assert (logits_of(reloaded, inputs) - pruned).abs().max().item() <= TOL


def test_prune_removes_parameters(family):
    model = make_model(family)
    before = sum(p.numel() for p in model.parameters())
    n_heads = hfprune.model_structure(model)["heads"][0]
    hfprune.prune(model, PruningPlan(heads={0: list(range(n_heads // 2))}, neurons={1: list(range(8))},
                                     layers=[2]))
    after = sum(p.numel() for p in model.parameters())
    assert after < before
    structure = hfprune.model_structure(model)
    assert structure["num_layers"] == 2
    assert structure["heads"][0] == n_heads - n_heads // 2
    assert structure["ffn"][1] == 48 - 8
    assert model.config.num_hidden_layers == 2
