"""Re-estimating BatchNorm statistics after channel pruning (no weight changes).

Paper: Li et al., 2020, "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning" (adaptive BatchNorm).
Removing a channel removes its whole output, including the constant part (BatchNorm's beta, or a ReLU of it, when
|gamma| ~ 0 after Network Slimming); the next layers' stale running means then see a shifted input. A few forward
passes in training mode, without gradients, refresh every running mean and variance.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .passes import iter_batches


def refresh_batchnorm(model: nn.Module, dataloader: Iterable, *, max_batches: int | None = None) -> nn.Module:
    """Recompute the running statistics of every BatchNorm in `model` on `dataloader` (cumulative average).

    Only the BatchNorm buffers change (`running_mean`, `running_var`, `num_batches_tracked`); weights, the
    modules' `momentum` and the model's training mode are as before on return.

    Args:
        model (`nn.Module`): e.g. a CNN after `hfprune.prune`.
        dataloader (`Iterable[dict]`): batches with `pixel_values` (other keys are ignored).
        max_batches (`int`, *optional*): use at most this many batches.

    Returns:
        The same `model`.

    Raises:
        ValueError: the model has no BatchNorm, or the dataloader yields no batch (nothing changes then).

    Example:
        ```python
        >>> hfprune.prune(model, plan)
        >>> hfprune.refresh_batchnorm(model, train_batches, max_batches=8)
        ```
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        raise ValueError(f"refresh_batchnorm: {type(model).__name__} has no BatchNorm with running statistics")
    device = next(model.parameters()).device
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
        model.train()
        with torch.no_grad():
            for batch in iter_batches(dataloader, device, max_batches=max_batches, show_progress=False,
                                      need_labels=False, desc="batchnorm"):
                model(pixel_values=batch["pixel_values"])  # an empty dataloader raises here: restored below
    except BaseException:
        for m, _, mean, var, count in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        raise
    finally:
        for m, momentum, *_ in saved:
            m.momentum = momentum
        for module, training in modes:
            module.training = training
    return model
