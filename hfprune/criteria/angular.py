"""Angular distance between the inputs of layer l and layer l + n (Gromov et al.): which block of n layers to drop.

Gromov et al. (2024), "The Unreasonable Ineffectiveness of the Deeper Layers": to remove n layers, find the start l*
that minimises d(x^(l), x^(l+n)) = arccos(cos(x^(l), x^(l+n))) / pi, the angular distance between the hidden state
entering layer l and the one entering layer l + n (the output of the last block for l + n = num_layers), averaged
over the calibration samples; then remove layers l*, ..., l* + n - 1. The paper measures it at the final token of
each sequence (`tokens="last"`, the last non-padding position); `tokens="all"` averages over every non-padding token.

Returned as one score per layer, so it fits `select_layers`: the score of layer j is the smallest distance of any
block of n consecutive layers that contains j. The block with the smallest distance then holds the n lowest scores,
all equal to that distance, and `select_layers(scores, count=n, contiguous=True)` (lowest window sum) removes exactly
it. `block_distances` gives the raw per-start distances. Sums and counts are added over torch.distributed processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import all_reduce_sum, block_input, block_output, forward_passes
from . import register_criterion
from ._tokens import cosine, token_mask

_TOKENS = ("last", "all")


def _last_positions(keep: torch.Tensor) -> torch.Tensor:
    """`[batch]`: index of the last kept token of each row (works for left and right padding)."""
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    return torch.where(keep, positions, torch.full_like(positions, -1)).max(1).values


def block_distances(model: nn.Module, dataloader: Iterable, *, n: int = 1, tokens: str = "last", plan=None,
                    max_batches=None, num_samples=None, show_progress=True, distributed=True) -> torch.Tensor:
    """Mean angular distance d(l, l + n) for every start l in `0 .. num_layers - n`.

    Returns:
        `torch.Tensor`: `[num_layers - n + 1]` float32 on CPU, in [0, 1].
    """
    if tokens not in _TOKENS:
        raise ValueError(f"angular: tokens must be one of {_TOKENS}, got {tokens!r}")
    blocks = get_adapter(model).layers(model)
    n_layers = len(blocks)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < n_layers:
        raise ValueError(f"angular: n (the number of consecutive layers to remove) must be an integer in "
                         f"[1, {n_layers - 1}] for this {n_layers}-layer model, got {n!r}")
    sums = torch.zeros(n_layers - n + 1, dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    state: dict = {}

    def pick(x: torch.Tensor) -> torch.Tensor:
        """The representations compared: `[samples, hidden]` (last token of each row, or every kept token)."""
        keep = token_mask(state["batch"], x.shape[:2]).to(x.device)
        if tokens == "all":
            return x[keep]
        last = _last_positions(keep)
        rows = (last >= 0).nonzero().flatten()
        return x[rows, last[rows]]

    def hook_for(layer: int):
        def hook(module, args, kwargs, output):
            state["reps"][layer] = pick(block_input(args, kwargs)).detach().double()
            if layer == n_layers - 1:
                state["reps"][n_layers] = pick(block_output(output)).detach().double()
        return hook

    def on_batch(batch: dict) -> None:
        finish_batch()
        state["batch"], state["reps"] = batch, {}

    def finish_batch() -> None:
        reps = state.get("reps")
        if not reps:
            return
        missing = [i for i in range(n_layers + 1) if i not in reps]
        if missing:
            raise RuntimeError(f"angular: no hidden state was seen at layer inputs {missing}")
        for start in range(n_layers - n + 1):
            cos = cosine(reps[start], reps[start + n]).clamp(-1.0, 1.0)
            sums[start] += float(torch.arccos(cos).sum() / math.pi)
        count.add_(reps[0].shape[0])
        state["reps"] = {}

    def attach() -> list:
        return [block.register_forward_hook(hook_for(i), with_kwargs=True) for i, block in enumerate(blocks)]

    forward_passes(model, dataloader, attach=attach, on_batch=on_batch, plan=plan,
                   desc="layer importance (angular)", max_batches=max_batches, num_samples=num_samples,
                   show_progress=show_progress)
    finish_batch()
    sums, total = all_reduce_sum([sums, count], enabled=distributed)
    if float(total) <= 0:
        raise ValueError("angular: the batches contain no non-padding token (attention_mask sums to 0)")
    return (sums / total).float().cpu()


def per_layer_scores(distances: torch.Tensor, n: int) -> torch.Tensor:
    """Score of layer j = min distance of the n-blocks that contain j (see the module docstring)."""
    n_layers = distances.numel() + n - 1
    out = torch.full((n_layers,), float("inf"))
    for start, d in enumerate(distances.tolist()):
        out[start:start + n] = torch.minimum(out[start:start + n], torch.tensor(d))
    return out


@register_criterion("angular", units=("layers",), order=40, needs="forward",
                    summary="angular distance between the inputs of layers l and l+n, forward only (Gromov 2024)")
def angular(model: nn.Module, dataloader: Iterable = None, *, n: int = 1, tokens: str = "last", plan=None,
            max_batches=None, num_samples=None, show_progress=True, distributed=True, **common) -> torch.Tensor:
    """Per-layer angular-distance scores for removing a block of `n` consecutive layers.

    Args:
        n (`int`, defaults to 1): the number of consecutive layers to remove (Gromov et al.'s block size).
        tokens (`str`, defaults to `"last"`): "last" (the final non-padding token, as in the paper) or "all".

    Returns:
        `torch.Tensor`: `[num_layers]` float32; `select_layers(scores, count=n, contiguous=True)` picks the block.
    """
    distances = block_distances(model, dataloader, n=n, tokens=tokens, plan=plan, max_batches=max_batches,
                                num_samples=num_samples, show_progress=show_progress, distributed=distributed)
    return per_layer_scores(distances, n)
