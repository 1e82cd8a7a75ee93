"""Per-layer score vectors in layer order: what every head / neuron criterion returns."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..arch import get_adapter


def layer_rows(model: nn.Module, per_layer: Mapping[int, torch.Tensor], unit: str) -> list[torch.Tensor]:
    """One vector per layer, in layer order, from layer -> scores (a layer without units gets an empty vector).

    `unit` is "heads" or "neurons": the size of a missing layer's vector (0 for a headless / FFN-less layer).
    """
    adapter = get_adapter(model)
    rows = []
    for idx, block in enumerate(adapter.layers(model)):
        row = per_layer.get(idx)
        if row is None:
            size = adapter.num_heads(model, block) if unit == "heads" else adapter.intermediate_size(block)
            row = torch.zeros(size)
        rows.append(row)
    return rows
