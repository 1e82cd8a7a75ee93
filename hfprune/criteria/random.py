"""Random scores: the baseline every criterion should beat (seeded, so that a run is reproducible; no data)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..arch import get_adapter
from . import register_criterion

if TYPE_CHECKING:
    from ..sparsity.targets import Target


def _uniform(sizes: list[int], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(int(seed))
    return [torch.rand(n, generator=generator) for n in sizes]


@register_criterion("random", units=("heads",), needs_seed=True, order=90,
                    summary="uniform random scores (a baseline)")
def random_heads(model: nn.Module, dataloader=None, *, seed: int, **common) -> list[torch.Tensor]:
    adapter = get_adapter(model)
    return _uniform([adapter.num_heads(model, block) for block in adapter.layers(model)], seed)


@register_criterion("random", units=("neurons",), needs_seed=True, order=90,
                    summary="uniform random scores (a baseline)")
def random_neurons(model: nn.Module, dataloader=None, *, seed: int, **common) -> list[torch.Tensor]:
    adapter = get_adapter(model)
    return _uniform([adapter.intermediate_size(block) for block in adapter.layers(model)], seed)


@register_criterion("random", units=("weights",), needs_seed=True, order=90,
                    summary="uniform random scores (a baseline)")
def random_weights(model: nn.Module, dataloader=None, *, targets: list[Target], seed: int = 0,
                   **common) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {t.name: torch.rand(t.weight.shape, generator=generator).to(t.weight.device) for t in targets}


@register_criterion("random", units=("experts",), needs_seed=True, order=90,
                    summary="uniform random scores (a baseline)")
def random_experts(model: nn.Module, dataloader=None, *, seed: int, **common) -> dict[int, torch.Tensor]:
    adapter = get_adapter(model)
    layers = [i for i, block in enumerate(adapter.layers(model)) if adapter.is_moe(block)]
    scores = _uniform([adapter.num_experts(adapter.layers(model)[i]) for i in layers], seed)
    return dict(zip(layers, scores))
