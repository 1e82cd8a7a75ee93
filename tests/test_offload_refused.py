"""Models whose weights are not all in memory (accelerate's offload hooks, meta weights) are refused by the in-memory
entry points with an error pointing to --stream, and nothing changes."""

from __future__ import annotations

import pytest
import torch
from accelerate import cpu_offload

import hfprune
from tests.conftest import make_model


def _offloaded():
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cpu_offload(model, execution_device=torch.device("cpu"))
    return model, before


def _batches():
    return [{"input_ids": torch.randint(1, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]


CALLS = {
    "sparsify": lambda m: hfprune.sparsify(m, 0.5, criterion="wanda", dataloader=_batches()),
    "sparsify magnitude": lambda m: hfprune.sparsify(m, 0.5),
    "prune": lambda m: hfprune.prune(m, hfprune.PruningPlan(heads={0: [0]})),
    "head_importance": lambda m: hfprune.head_importance(m, criterion="magnitude"),
    "layer_importance": lambda m: hfprune.layer_importance(m, _batches(), method="angular"),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_accelerate_cpu_offload_is_refused_pointing_to_stream(call):
    model, _ = _offloaded()
    with pytest.raises(ValueError, match="--stream") as err:
        CALLS[call](model)
    assert "offload hook" in str(err.value)


def test_meta_weights_are_refused_and_named():
    model = make_model("llama")
    model.model.layers[1].mlp.up_proj.weight = torch.nn.Parameter(torch.empty(4, 4, device="meta"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*meta"):
        hfprune.sparsify(model, 0.5)


def test_a_hook_without_offload_is_accepted():
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    model = make_model("llama")
    add_hook_to_module(model, AlignDevicesHook(execution_device=torch.device("cpu")))
    handle = hfprune.sparsify(model, 0.5)
    assert handle.sparsity() == pytest.approx(0.5, abs=0.01)
