"""`perplexity_checkpoint`: the perplexity of a checkpoint's causal LM, one block in memory at a time.

The evaluation windows are those of `hfprune.perplexity` (same sliding windows, same labels); they go through the
embeddings once, then through every block in turn (each materialized, run on every window, freed), and last through
the final norm and head: the model's own forward with its blocks replaced by a replay of the last block's outputs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import nn

from ..lm_perplexity import evaluation_windows, from_nll, nll_of_logits, window_length
from ..passes.blocks import capture_block_inputs, run_block, with_hidden
from ..passes.forward import block_input
from .model import StreamedModel


class _Replay(nn.Module):
    """Stands in for a block: returns its hidden-states input, or `value` when one is set (the last block)."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.value is None else self.value


@contextmanager
def _replayed(model: nn.Module, layers_path: str):
    """Every block of `model` replaced by a `_Replay` for the length of a `with`; yields the last one."""
    layers = model.get_submodule(layers_path)
    original = list(layers)
    for index in range(len(layers)):
        layers[index] = _Replay()
    try:
        yield layers[len(layers) - 1]
    finally:
        for index, block in enumerate(original):
            layers[index] = block


def perplexity_checkpoint(source: str | os.PathLike | StreamedModel, batches, stride: int | None = None,
                          max_length: int | None = None, max_batches: int | None = None,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """`hfprune.perplexity` of the checkpoint `source`, computed block by block (never the whole model in memory).

    Args:
        source (`str`, `os.PathLike` or `StreamedModel`): the checkpoint folder.
        batches, stride, max_length, max_batches: as for `hfprune.perplexity`.
        device, dtype: where and in which dtype each block is computed.

    Returns:
        `float`: the perplexity.
    """
    stream = source if isinstance(source, StreamedModel) else StreamedModel(source, device=device, dtype=dtype)
    window = window_length(stream.model, stride, max_length)
    windows = list(evaluation_windows(stream.model, batches, stream.device, stride, window, max_batches))
    with torch.no_grad():
        with stream.outside() as model:
            inputs = [capture_block_inputs(model, stream.block(0), [_batch(ids, mask)], stream.device)[0]
                      for ids, mask, _ in windows]
        for _, block in stream.blocks():
            inputs = [with_hidden(a, k, run_block(block, a, k)) for a, k in inputs]
        hidden = [block_input(a, k) for a, k in inputs]
        del inputs
        total_nll, total_tokens = 0.0, 0
        with stream.outside() as model, _replayed(model, stream.layers_path) as last:
            for (ids, mask, target), value in zip(windows, hidden):
                last.value = value
                logits = model(**_batch(ids, mask), use_cache=False).logits
                nll, count = nll_of_logits(logits, mask, target)
                total_nll += nll
                total_tokens += count
    return from_nll(total_nll, total_tokens)


def _batch(ids, mask) -> dict:
    return {"input_ids": ids} if mask is None else {"input_ids": ids, "attention_mask": mask}


__all__ = ["perplexity_checkpoint"]
