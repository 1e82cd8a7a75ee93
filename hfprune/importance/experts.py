"""`expert_importance`: the dispatcher of the `experts` criteria (`hfprune.criteria`: `reap`, `frequency`,
`router_weight`, `random`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import get_adapter, unwrap_model
from ..criteria import check_call, get_criterion
from ..passes import scoring_mode
from ..units import supported_kind


def expert_importance(model: nn.Module, dataloader: Iterable | None = None, criterion: str = "reap", *,
                      max_batches: int | None = None, seed: int | None = None, distributed: bool = True,
                      **options) -> dict[int, torch.Tensor]:
    """Score every expert of every MoE layer (higher = more important), forward only and block by block.

    Args:
        model (`PreTrainedModel`): a mixture-of-experts model of a supported family (`hfprune.arch.moe`).
        dataloader: calibration batches (`input_ids`, optionally `attention_mask`: padding is not counted).
        criterion (`str`): `"reap"` (mean over routed tokens of gate value x expert output norm, Lasby et al.
            2025), `"frequency"` (share of tokens routed), `"router_weight"` (mean applied gate value) or
            `"random"` (needs `seed`).
        max_batches (`int`, *optional*): use only the first batches.
        distributed (`bool`): sum the statistics over torch.distributed processes (a no-op on one process).

    Returns:
        `dict[int, torch.Tensor]`: MoE layer index -> `[num_experts]` float64 scores on CPU.

    Example:
        ```python
        >>> scores = hfprune.expert_importance(model, batches, criterion="reap")
        >>> plan = hfprune.select_experts(scores, ratio=0.5)
        ```
    """
    model = unwrap_model(model)
    supported_kind("experts", get_adapter(model), model)
    found = get_criterion(criterion, "experts", caller="expert_importance")
    check_call(found, caller="expert_importance", dataloader=dataloader, seed=seed, options=options)
    with scoring_mode(model):
        scores = found.fn(model, dataloader, max_batches=max_batches, seed=seed, distributed=distributed,
                          **options)
    return {int(layer): s.detach().double().cpu() for layer, s in scores.items()}
