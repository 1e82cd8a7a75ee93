"""`hidden_importance`: one score per channel of a transformer's residual stream (its width), through the criterion
registry (`hfprune.criteria.hidden`: "activation", "magnitude", "taylor", or any other registered for "hidden")."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..plan import PruningPlan
from ..structure import model_structure
from .api import score_units
from .common import carry_structure


def hidden_importance(model: nn.Module, batches: Iterable | None = None, *, criterion: str = "activation",
                      max_batches: int | None = None, num_samples: int | None = None, show_progress: bool = True,
                      seed: int | None = None, plan: PruningPlan | None = None, distributed: bool = True,
                      **options) -> torch.Tensor:
    """Score every hidden channel (residual-stream channel) of `model`.

    Criteria: "activation" (Minitron, Muralidharan et al. 2024, as NVIDIA Model-Optimizer computes it: the output of
    every block's norms, |value| averaged over each sequence's non-padding tokens, L2 over the batch, summed over
    the norms of all layers; forward passes only, no labels), "magnitude" (the L2 norm of the channel's weights, no
    data) and "taylor" (|dL/dg| of the channel's gate on the stream, per token; batches with labels).

    Args:
        model (`PreTrainedModel`): a transformer of a family with hidden channels (llama, mistral, qwen2, qwen3,
            gpt2, the bert family, distilbert, vit).
        batches (`Iterable[dict]`, *optional*): calibration batches (`input_ids` / `pixel_values`, with `labels`
            for "taylor"); not needed for "magnitude".
        criterion (`str`, defaults to `"activation"`).
        max_batches, num_samples, show_progress, seed, distributed: as for `hfprune.head_importance`.
        plan (`PruningPlan`, *optional*): score under this mask.

    Returns:
        `torch.Tensor` `[hidden_size]`, float32 on CPU (higher = more important).

    Example:
        ```python
        >>> scores = hfprune.hidden_importance(model, batches, criterion="activation")
        >>> plan = hfprune.select_hidden(scores, ratio=0.25, round_to=8)
        ```
    """
    scores = score_units("hidden", "hidden_importance", model, batches, criterion, seed=seed, options=options,
                         plan=plan, max_batches=max_batches, num_samples=num_samples, show_progress=show_progress,
                         distributed=distributed)
    return carry_structure(torch.as_tensor(scores).detach().to("cpu", torch.float32), model_structure(model))
