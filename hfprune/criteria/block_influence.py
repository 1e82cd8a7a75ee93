"""Block Influence (ShortGPT): how much a block changes the residual stream, forward passes only.

Men et al. (2024), "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect": the importance of
block i is BI_i = 1 - E[cos(x_i, x_{i+1})], the expected cosine similarity between the hidden state entering and
the one leaving the block, over the tokens of a calibration set (here: every non-padding token, token-weighted over
all batches). A block that barely rotates its input (BI near 0) is the first to remove. The sums and token counts
are added over torch.distributed processes before dividing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import all_reduce_sum, block_input, block_output, forward_passes
from . import register_criterion
from ._tokens import cosine, token_mask


@register_criterion("block_influence", units=("layers",), order=30, needs="forward",
                    summary="1 - cos(block input, block output) over tokens, forward only (ShortGPT, Men 2024)")
def block_influence(model: nn.Module, dataloader: Iterable = None, *, plan=None, max_batches=None,
                    num_samples=None, show_progress=True, distributed=True, **common) -> torch.Tensor:
    """Block Influence of every block: 1 - mean cosine similarity of its input and output hidden states.

    Returns:
        `torch.Tensor`: `[num_layers]` float32 on CPU, higher = more important.
    """
    blocks = get_adapter(model).layers(model)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    tokens = torch.zeros((), dtype=torch.float64)
    state: dict = {}

    def hook_for(layer: int):
        def hook(module, args, kwargs, output):
            x_in, x_out = block_input(args, kwargs), block_output(output)
            keep = token_mask(state["batch"], x_in.shape[:2]).to(x_in.device)
            sums[layer] += float(((1.0 - cosine(x_in, x_out)) * keep).sum())
            if layer == 0:
                tokens.add_(float(keep.sum()))
        return hook

    def on_batch(batch: dict) -> None:
        state["batch"] = batch

    def attach() -> list:
        return [block.register_forward_hook(hook_for(i), with_kwargs=True) for i, block in enumerate(blocks)]

    forward_passes(model, dataloader, attach=attach, on_batch=on_batch, plan=plan,
                   desc="layer importance (block influence)", max_batches=max_batches, num_samples=num_samples,
                   show_progress=show_progress)
    sums, total = all_reduce_sum([sums, tokens], enabled=distributed)
    if float(total) <= 0:
        raise ValueError("block_influence: the batches contain no non-padding token (attention_mask sums to 0)")
    return (sums / total).float().cpu()
