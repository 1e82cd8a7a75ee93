"""Layer importance: how much the loss (or a metric) suffers when a whole block is skipped.

The methods are the criteria registered for "layers" in `hfprune.criteria`: "ablation" (`criteria/ablation.py`,
the LayerDrop view of Fan et al., 2020) and "gate" (`criteria/gate.py`, its first-order estimate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..arch import check_not_offloaded, unwrap_model
from ..criteria import check_call, get_criterion
from ..structure import model_structure
from .api import check_scorer_args
from .common import carry_structure


def layer_importance(model: nn.Module, dataloader: Iterable, *, method: str = "ablation",
                     max_batches: int | None = None, num_samples: int | None = None, show_progress: bool = True,
                     metric_fn: Callable | None = None, distributed: bool = True, **options) -> torch.Tensor:
    """Score every block of `model`; higher means more important.

    Fan et al. (2020), "Reducing Transformer Depth on Demand with Structured Dropout" (skipping blocks); the "gate"
    variant is the first-order estimate of the same quantity, as Michel et al. (2019) do for heads.

    Args:
        model (`PreTrainedModel`): a model of a supported family; its weights are not changed.
        dataloader (`DataLoader` or iterable of dicts): batches with `labels`.
        method (`str`, defaults to `"ablation"`): "ablation" (loss increase when each block is skipped; one forward
            per layer per batch), "gate" (|dL/dg| of a per-block gate; one forward + backward per batch), or any
            other criterion registered for "layers" (`hfprune.criteria.criterion_names("layers")`).
        max_batches (`int`, *optional*): stop after this many batches.
        num_samples (`int`, *optional*): stop after this many examples.
        show_progress (`bool`, defaults to `True`): show a tqdm progress bar.
        metric_fn (`Callable[[outputs, batch], float]`, *optional*): ablation only: score the drop of this metric
            (higher is better, e.g. batch accuracy) instead of the loss increase; then batches need no labels.
        distributed (`bool`, defaults to `True`): sum statistics over processes when torch.distributed is running.
        options: options of the chosen method's criterion (see `hfprune.head_importance`).

    Returns:
        `torch.Tensor`: `[num_layers]` float32 on CPU.

    Example:
        ```python
        >>> scores = hfprune.layer_importance(model, dataloader, method="ablation", max_batches=8)
        >>> plan = hfprune.select_layers(scores, count=2)   # drop the two least important blocks
        ```
    """
    check_scorer_args("layer_importance", model, dataloader, method)
    found = get_criterion(method, "layers", caller="layer_importance: method")
    if metric_fn is not None:
        options = {"metric_fn": metric_fn, **options}
    check_call(found, caller="layer_importance", dataloader=dataloader, options=options)
    check_not_offloaded(unwrap_model(model), "layer_importance")
    # The model inside a DDP / accelerate wrapper, for the reason given in `api.score_units`.
    scores = found.fn(unwrap_model(model), dataloader, plan=None, max_batches=max_batches, num_samples=num_samples,
                      show_progress=show_progress, distributed=distributed, seed=None, **options)
    return carry_structure(scores.detach().to("cpu", torch.float32), model_structure(model))
