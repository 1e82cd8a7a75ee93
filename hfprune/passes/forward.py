"""Forward-only passes: the activation-based criteria (Minitron heads / neurons, block influence, angular) read
hooks filled by these.

No gradient, no labels: the model runs in eval mode under `torch.no_grad()` (parameters frozen and restored by
`scoring_mode`), optionally under the mask of a plan, and each batch is handed to the caller before its forward so
the criterion's hooks can read its attention mask. Labels are dropped before the forward (the loss is not needed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..masking import mask
from ..plan import PruningPlan
from .batches import check_model, iter_batches
from .modes import scoring_mode


def forward_passes(model: nn.Module, dataloader: Iterable, *, attach: Callable[[], list], on_batch: Callable,
                   plan: PruningPlan | None = None, max_batches: int | None = None, num_samples: int | None = None,
                   show_progress: bool = True, desc: str = "scoring") -> None:
    """Run the model's forward on each batch (no grad, eval mode, `plan` masked), calling `on_batch(batch)` first.

    Args:
        attach (`Callable[[], list]`): registers the criterion's hooks and returns their handles; called after the
            plan's mask is attached, so a pre-hook on a gated projection sees the gated input. Removed on exit.
        on_batch (`Callable[[dict], None]`): called with each batch (on the model's device) before its forward, so
            the hooks can read its attention mask.
    """
    device = check_model(model, needs_grad=False)
    with scoring_mode(model), torch.no_grad():
        gates = mask(model, plan) if plan is not None and not plan.is_empty() else None
        handles = []
        try:
            handles = attach()
            for batch in iter_batches(dataloader, device, max_batches=max_batches, num_samples=num_samples,
                                      show_progress=show_progress, desc=desc, need_labels=False):
                on_batch(batch)
                model(**{k: v for k, v in batch.items() if k != "labels"})
        finally:
            for handle in handles:
                handle.remove()
            if gates is not None:
                gates.remove()


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block received (first positional argument or `hidden_states=`)."""
    return args[0] if args else kwargs["hidden_states"]


def block_output(output) -> torch.Tensor:
    """The hidden states a block returned (v5 decoder layers return a tensor, older ones a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output
