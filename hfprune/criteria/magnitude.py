"""Weight-magnitude importance (no data): L1 norms of a unit's weights, or |w| of single weights.

Units: Li et al. (2017), "Pruning Filters for Efficient ConvNets" (ICLR 2017). A head's weights are its query rows,
the key/value rows of its KV group and its columns of the output projection; a neuron's are its rows in every FFN
input projection (`up` and `gate` for gated MLPs) and its column of the down projection. Biases are left out, as in
the paper. Sizes are equal within a layer, so norms are not rescaled.

Weights: |w|, Han et al. (2015), "Learning both Weights and Connections for Efficient Neural Networks".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import check_model
from . import register_criterion
from ._rows import layer_rows

if TYPE_CHECKING:
    from ..sparsity.targets import Target


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as `[out, in]` (transformers' Conv1D stores `[in, out]`)."""
    weight = module.weight.detach()
    return weight if isinstance(module, nn.Linear) else weight.t()


def _rows_l1(module: nn.Module, units: int, size: int, offset: int = 0) -> torch.Tensor:
    """`[units]`: L1 norm of consecutive blocks of `size` output rows, starting at row `offset`."""
    w = _weight_out_in(module)[offset:offset + units * size]
    return w.abs().float().reshape(units, size * w.shape[1]).sum(1)  # explicit width: units may be 0


def _cols_l1(module: nn.Module, units: int, size: int) -> torch.Tensor:
    w = _weight_out_in(module)[:, :units * size]
    return w.abs().float().reshape(w.shape[0], units, size).sum((0, 2))


@torch.no_grad()
def magnitude_head_scores(model: nn.Module) -> dict[int, torch.Tensor]:
    """Layer -> `[num_heads]` L1 weight norm of each head (GQA: a KV head counts for every query head it serves)."""
    adapter = get_adapter(model)
    head_dim = adapter.head_dim(model)
    scores: dict[int, torch.Tensor] = {}
    for idx, block in enumerate(adapter.layers(model)):
        n, n_kv = adapter.num_heads(model, block), adapter.num_kv_heads(model, block)
        if n == 0:
            continue
        total = _cols_l1(adapter.out_proj(block), n, head_dim)
        for seg in adapter.qkv_segments(block):
            if seg.role == "q":
                total = total + _rows_l1(seg.module, n, head_dim, seg.offset)
            else:
                kv = _rows_l1(seg.module, n_kv, head_dim, seg.offset)
                total = total + kv.repeat_interleave(n // n_kv)
        scores[idx] = total.cpu()
    return scores


@torch.no_grad()
def magnitude_neuron_scores(model: nn.Module) -> dict[int, torch.Tensor]:
    """Layer -> `[intermediate]` L1 weight norm of each FFN neuron (input rows + output column)."""
    adapter = get_adapter(model)
    scores: dict[int, torch.Tensor] = {}
    for idx, block in enumerate(adapter.layers(model)):
        size = adapter.intermediate_size(block)
        total = _cols_l1(adapter.ffn_out(block), size, 1)
        for module in adapter.ffn_in(block):
            total = total + _rows_l1(module, size, 1)
        scores[idx] = total.cpu()
    return scores


@register_criterion("magnitude", units=("heads",), order=30,
                    summary="L1 norm of the head's weights (Li et al., 2017)")
def magnitude_heads(model: nn.Module, dataloader=None, **common) -> list[torch.Tensor]:
    check_model(model, needs_grad=False)
    return layer_rows(model, magnitude_head_scores(model), "heads")


@register_criterion("magnitude", units=("neurons",), order=30,
                    summary="L1 norm of the neuron's weights (Li et al., 2017)")
def magnitude_neurons(model: nn.Module, dataloader=None, **common) -> list[torch.Tensor]:
    check_model(model, needs_grad=False)
    return layer_rows(model, magnitude_neuron_scores(model), "neurons")


@register_criterion("magnitude", units=("weights",), order=10, summary="|w| (Han et al., 2015)")
def magnitude_weights(model: nn.Module, dataloader=None, *, targets: list[Target], **common) -> dict[str, torch.Tensor]:
    return {t.name: t.weight.detach().abs() for t in targets}
