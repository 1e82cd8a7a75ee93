"""Selection: scores -> PruningPlan (ratio / count, global / per layer, minimum kept, rounding, iterative mode)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs, make_model

import hfprune

NAN = float("nan")
SCORES = torch.tensor([[0.9, 0.1, 0.5, 0.3],
                       [0.2, 0.8, 0.05, 0.7],
                       [0.6, 0.4, NAN, NAN]])  # layer 2 has two heads left


def test_global_count_removes_the_lowest_scores():
    plan = hfprune.select_heads(SCORES, count=3)
    assert plan.heads == {0: [1], 1: [0, 2]}
    assert plan.meta["selection"]["scope"] == "global"


def test_global_ratio_counts_existing_heads_only():
    plan = hfprune.select_heads(SCORES, ratio=0.5)  # 10 heads exist -> 5 go
    assert plan.num_heads() == 5
    assert plan.heads == {0: [1, 3], 1: [0, 2], 2: [1]}


def test_min_per_layer_is_respected():
    low = torch.tensor([[0.01, 0.02, 0.03, 0.04], [0.9, 0.8, 0.7, 0.6]])
    plan = hfprune.select_heads(low, count=4, min_per_layer=1)
    assert plan.heads == {0: [0, 1, 2], 1: [3]}
    assert hfprune.select_heads(low, count=4, min_per_layer=0).heads == {0: [0, 1, 2, 3]}
    with pytest.raises(ValueError, match="min_per_layer"):
        hfprune.select_heads(low, count=7, min_per_layer=1)


def test_layer_scope_removes_the_same_share_in_each_layer():
    plan = hfprune.select_heads(SCORES, ratio=0.5, scope="layer")
    assert plan.heads == {0: [1, 3], 1: [0, 2], 2: [1]}
    assert hfprune.select_heads(SCORES, count=1, scope="layer").heads == {0: [1], 1: [2], 2: [1]}


def test_ratio_outside_unit_interval_is_refused():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            hfprune.select_heads(SCORES, ratio=bad)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            hfprune.select_neurons([torch.rand(8)], ratio=bad)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            hfprune.select_layers(torch.rand(4), ratio=bad)
    with pytest.raises(ValueError, match="exactly one"):
        hfprune.select_heads(SCORES, ratio=0.5, count=2)
    with pytest.raises(ValueError, match="scope"):
        hfprune.select_heads(SCORES, ratio=0.5, scope="model")


def test_select_heads_checks_the_model():
    model = make_model("bert")
    scores = hfprune.head_importance(model, criterion="random", seed=0)
    plan = hfprune.select_heads(scores, ratio=0.25, model=model)
    assert plan.meta["model_structure"]["heads"] == [4, 4, 4]
    plan.validate(model)
    with pytest.raises(ValueError, match="heads per layer"):
        hfprune.select_heads(scores[:2], ratio=0.25, model=model)


def test_select_neurons_rounds_kept_widths():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(48, generator=g), torch.rand(48, generator=g), torch.rand(40, generator=g)]
    plan = hfprune.select_neurons(scores, ratio=0.3, round_to=8)
    kept = [len(s) - len(plan.neurons.get(i, [])) for i, s in enumerate(scores)]
    assert all(k % 8 == 0 and k > 0 for k in kept)
    assert abs(sum(len(s) for s in scores) - sum(kept) - 0.3 * 136) <= 8 * len(scores)
    for i, s in enumerate(scores):  # within a layer, the removed neurons are the lowest-scored ones
        removed = plan.neurons.get(i, [])
        if removed:
            kept_idx = [j for j in range(len(s)) if j not in removed]
            assert s[removed].max() <= s[kept_idx].min()
    exact = hfprune.select_neurons(scores, count=10, scope="layer")
    assert [len(exact.neurons[i]) for i in range(3)] == [10, 10, 10]
    with pytest.raises(ValueError, match="round_to"):
        hfprune.select_neurons(scores, ratio=0.3, round_to=0)


def test_select_layers_removes_the_lowest():
    scores = torch.tensor([0.3, 0.01, 0.2, 0.05])
    assert hfprune.select_layers(scores, count=2).layers == [1, 3]
    assert hfprune.select_layers(scores, ratio=0.25).layers == [1]
    with pytest.raises(ValueError, match="at least one"):
        hfprune.select_layers(scores, count=4)


def _batches(model, n=2):
    out = []
    for i in range(n):
        inputs = make_inputs(model, batch=4, seed=10 + i)
        inputs["labels"] = torch.arange(4) % 3
        out.append(inputs)
    return out


def test_iterative_pruning_rescores_under_the_mask():
    model = make_model("bert")
    batches = _batches(model)
    seen = []
    plan = hfprune.iterative_head_pruning(model, batches, step_ratio=0.25, target_ratio=0.5, show_progress=False,
                                          on_step=lambda p: seen.append(p.num_heads()))
    assert plan.num_heads() == 6 and seen == [3, 6]
    first = hfprune.select_heads(hfprune.head_importance(model, batches, show_progress=False), count=3)
    assert all(set(h) <= set(plan.heads.get(layer, [])) for layer, h in first.heads.items())
    # The second step is chosen by scores computed under the first step's mask.
    masked = hfprune.head_importance(model, batches, plan=first, show_progress=False)
    for layer, heads in first.heads.items():
        masked[layer, heads] = NAN
    second = hfprune.select_heads(masked, count=3)
    merged = {layer: sorted(set(first.heads.get(layer, [])) | set(second.heads.get(layer, [])))
              for layer in set(first.heads) | set(second.heads)}
    assert plan.heads == merged
    assert all(len(v) <= 3 for v in plan.heads.values())  # min_per_layer=1 of 4 heads
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_iterative_pruning_stops_before_the_metric_falls_too_far():
    model = make_model("bert")
    metrics = iter([1.0, 0.95, 0.8, 0.5, 0.4])  # dense, then after each step
    plan = hfprune.iterative_head_pruning(model, _batches(model, 1), step_ratio=0.25, eval_fn=lambda m: next(metrics),
                                          min_metric_fraction=0.7, show_progress=False)
    assert plan.num_heads() == 6  # the third step (0.5 < 0.7) is rejected
    assert [s["metric"] for s in plan.meta["iterative"]["steps"]] == [0.95, 0.8]
    with pytest.raises(ValueError, match="eval_fn"):
        hfprune.iterative_head_pruning(model, [], min_metric_fraction=0.9)
    with pytest.raises(ValueError, match="never stops"):
        hfprune.iterative_head_pruning(model, [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hfprune.iterative_head_pruning(model, [], target_ratio=2.0)


def test_gqa_heads_without_uniform_keep_equal_kv_groups_and_never_grow_the_model():
    model = make_model("llama")  # 4 query heads, 2 KV heads per layer: groups of 2
    scores = hfprune.head_importance(model, criterion="random", seed=0)
    before = sum(p.numel() for p in model.parameters())
    plan = hfprune.select_heads(scores, ratio=0.5, model=model)
    assert plan.meta["selection"]["kv_groups"] == "equal"
    assert sum(len(h) for h in plan.heads.values()) == 0.5 * sum(plan.meta["model_structure"]["heads"])
    for heads in plan.heads.values():  # one head from each group of two: KV heads 0 and 1 both keep one
        assert sorted(h // 2 for h in heads) == [0, 1]
    inputs = make_inputs(model)
    hfprune.prune(model, plan)
    structure = hfprune.model_structure(model)
    assert structure["kv_heads"] == [2] * len(structure["heads"])
    assert sum(p.numel() for p in model.parameters()) < before
    model(**inputs)


def test_gqa_heads_that_cannot_keep_equal_groups_are_refused_pointing_to_uniform():
    model = make_model("llama")
    scores = hfprune.head_importance(model, criterion="random", seed=0)
    with pytest.raises(ValueError, match="multiple of 2.*uniform=True"):
        hfprune.select_heads(scores, count=1, scope="layer", model=model)
    with pytest.raises(ValueError, match="uniform=True"):
        hfprune.select_heads(scores, ratio=0.9, model=model)  # would empty a KV group
    plan = hfprune.select_heads(scores, count=2, scope="layer", num_kv_heads=2)  # the layout without the model
    assert all(sorted(h // 2 for h in heads) == [0, 1] for heads in plan.heads.values())
