from __future__ import annotations

import torch
from conftest import logits_of, make_inputs, make_model

import hfprune
from hfprune import PruningPlan


def test_handle_form_is_reversible():
    model = make_model("bert")
    inputs = make_inputs(model)
    dense = logits_of(model, inputs)
    handle = hfprune.mask(model, PruningPlan(heads={0: [0, 1]}, neurons={1: [3]}, layers=[2]))
    assert not torch.allclose(logits_of(model, inputs), dense)
    handle.remove()
    assert torch.equal(logits_of(model, inputs), dense)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_removed_on_error():
    model = make_model("bert")
    try:
        with hfprune.masked(model, PruningPlan(heads={0: [0]})):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_all_ones_gates_change_nothing_and_gradients_flow():
    model = make_model("llama")
    inputs = make_inputs(model)
    dense = logits_of(model, inputs)
    with hfprune.attach_gates(model, heads=True, neurons=True, layers=True, requires_grad=True) as gates:
        out = model(**inputs).logits
        assert torch.allclose(out, dense, atol=1e-6)
        out.sum().backward()
        assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates.head_gates.values())
        assert all(g.grad is not None for g in gates.layer_gates.values())


def test_gqa_single_query_head_is_masked_alone():
    model = make_model("llama")  # 4 query heads share 2 KV heads
    inputs = make_inputs(model)
    with hfprune.masked(model, PruningPlan(heads={0: [1]})):
        one = logits_of(model, inputs)
    with hfprune.masked(model, PruningPlan(heads={0: [0, 1]})):
        group = logits_of(model, inputs)
    assert not torch.allclose(one, group)
    hfprune.prune(model, PruningPlan(heads={0: [1]}))
    attn = hfprune.get_adapter(model).attention(hfprune.get_adapter(model).layers(model)[0])
    # Groups of unequal size (1 and 2) -> every KV head is repeated to a group size of 1: exact and stock-compatible.
    assert hfprune.model_structure(model)["heads"][0] == 3
    assert hfprune.model_structure(model)["kv_heads"][0] == 3 and attn.num_key_value_groups == 1
    assert (logits_of(model, inputs) - one).abs().max() < 1e-5


def test_kv_head_removed_with_its_whole_group():
    model = make_model("qwen3")
    hfprune.prune(model, PruningPlan(heads={0: [0, 1], 1: [0, 2]}))
    structure = hfprune.model_structure(model)
    assert structure["heads"][:2] == [2, 2]
    assert structure["kv_heads"][:2] == [1, 2]


def test_layer_mask_is_exact_skip():
    model = make_model("gpt2")
    inputs = make_inputs(model)
    with hfprune.masked(model, PruningPlan(layers=[0, 1, 2])):
        skipped = model(**inputs, output_hidden_states=True).hidden_states
    assert torch.equal(skipped[0], skipped[2])


def test_prune_refuses_projections_that_still_carry_gates():
    # Pruning under a mask used to succeed and leave gates of the old size on the resized projections, so every
    # later forward failed with a shape error until the handle was removed. Now it is refused before any change.
    import pytest

    model = make_model("llama")
    inputs = make_inputs(model)
    plan = PruningPlan(heads={0: [0, 2]}, neurons={1: list(range(10))}, layers=[2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = hfprune.model_structure(model)
    with hfprune.masked(model, plan):
        masked = logits_of(model, inputs)
        with pytest.raises(ValueError, match="layer 0 still has heads gates attached"):
            hfprune.prune(model, plan)
        assert hfprune.model_structure(model) == structure
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        hfprune.prune(model, PruningPlan(layers=[2]))  # layer gates do not depend on sizes: allowed
    handle = hfprune.mask(model, PruningPlan(neurons={1: [0]}))
    with pytest.raises(ValueError, match="layer 1 still has neurons gates attached"):
        hfprune.prune(model, PruningPlan(neurons={1: list(range(10))}))
    handle.remove()
    hfprune.prune(model, PruningPlan(heads={0: [0, 2]}, neurons={1: list(range(10))}))
    assert torch.allclose(logits_of(model, inputs), masked, atol=1e-5)
