"""Perplexity of a causal language model: exp of the mean next-token negative log-likelihood over all tokens."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .passes import iter_batches, max_positions

IGNORE = -100


def _windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) triples of a sliding window: each window scores only its last `scored` tokens, those
    the previous window did not score, so every token is counted once with up to `max_length - 1` of context."""
    windows, prev_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + max_length, length)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == length:
            break
    return windows


def _nll(model: nn.Module, input_ids, attention_mask, labels) -> tuple[float, int]:
    """Summed next-token NLL and the number of scored tokens of one window."""
    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
    return nll_of_logits(model(input_ids=input_ids, use_cache=False, **kwargs).logits, attention_mask, labels)


def nll_of_logits(logits: torch.Tensor, attention_mask, labels) -> tuple[float, int]:
    """Summed next-token NLL of a window's logits and the number of scored tokens (`-100` labels and padding are not
    scored)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if attention_mask is not None:  # padding positions are never targets
        shift_labels = shift_labels.masked_fill(attention_mask[:, 1:] == 0, IGNORE)
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return float(loss), int((shift_labels != IGNORE).sum())


def perplexity(model: nn.Module, batches: Iterable | Mapping | torch.Tensor, stride: int | None = None,
               max_length: int | None = None, max_batches: int | None = None) -> float:
    """Token-weighted perplexity: exp(sum of next-token NLL / number of predicted tokens) over all batches.

    Every predicted token counts the same (a batch of long sequences weighs more than a short one), which is the
    definition used for WikiText-2 in the Wanda and SparseGPT papers. Runs in eval mode without gradients and
    restores the training mode afterwards; the model is not changed.

    Args:
        model (`nn.Module`): a causal LM returning `.logits` (batch, seq, vocab).
        batches: batch dicts with `input_ids` (and optionally `attention_mask`; `labels`, where `-100` marks tokens
            not scored, default to `input_ids`), a single dict, or a tensor of token ids.
        stride (`int`, *optional*): score sequences longer than `max_length` with a sliding window that moves by
            `stride` tokens (each token is scored once, with the preceding window as context). `None`: each
            sequence in one forward pass.
        max_length (`int`, *optional*): window length for `stride` (default: the model's positions).
        max_batches (`int`, *optional*): stop after this many batches.

    Returns:
        `float`: the perplexity.

    Raises:
        ValueError: a sequence longer than the model's positions without `stride`, no tokens to score, or a bad
            `stride` / `max_length`.

    Example:
        ```python
        >>> import torch, transformers, hfprune
        >>> torch.manual_seed(0)
        >>> model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        ...     vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        ...     num_key_value_heads=2, max_position_embeddings=64))
        >>> batch = {"input_ids": torch.randint(0, 64, (2, 32))}
        >>> ppl = hfprune.perplexity(model, [batch])
        >>> windowed = hfprune.perplexity(model, [batch], stride=8, max_length=16)
        ```
    """
    window = window_length(model, stride, max_length)
    was_training = model.training
    total_nll, total_tokens = 0.0, 0
    try:
        model.eval()
        with torch.no_grad():
            for ids, mask, target in evaluation_windows(model, batches, next(model.parameters()).device, stride,
                                                        window, max_batches):
                nll, count = _nll(model, ids, mask, target)
                total_nll += nll
                total_tokens += count
    finally:
        model.train(was_training)
    return from_nll(total_nll, total_tokens)


def window_length(model: nn.Module, stride: int | None, max_length: int | None) -> int | None:
    """The sliding window's length (`max_length`, else the model's positions), with `stride` checked against it."""
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
        raise ValueError(f"stride must be a positive integer or None; got {stride!r}")
    window = max_length if max_length is not None else max_positions(model)
    if stride is not None:
        if window is None:
            raise ValueError("stride= needs max_length= (the model's config does not give its positions)")
        if stride > window:
            raise ValueError(f"stride={stride} is larger than the window max_length={window}: tokens would be skipped")
    return window


def from_nll(total_nll: float, total_tokens: int) -> float:
    """exp(mean NLL); no token scored raises."""
    if total_tokens == 0:
        raise ValueError("perplexity: the batches contain no token to predict (sequences of length >= 2 needed)")
    return math.exp(total_nll / total_tokens)


def evaluation_windows(model: nn.Module, batches, device, stride: int | None, window: int | None,
                       max_batches: int | None):
    """Yield `(input_ids, attention_mask or None, labels)` of every window `perplexity` scores, on `device` (context
    tokens, scored by the previous window, are labelled -100); `model` only gives the positions checked."""
    if isinstance(batches, (Mapping, torch.Tensor)):  # one batch
        batches = [batches]
    for batch in iter_batches(batches, max_batches=max_batches, show_progress=False, need_labels=False,
                              positions_of=None if stride is not None else model):
        ids = batch["input_ids"].to(device)
        mask = batch.get("attention_mask")
        mask = mask.to(device) if mask is not None else None
        labels = batch.get("labels")
        labels = labels.to(device) if labels is not None else ids
        spans = [(0, ids.shape[1], ids.shape[1])] if stride is None else _windows(ids.shape[1], window, stride)
        for begin, end, scored in spans:
            target = labels[:, begin:end].clone()
            target[:, : end - begin - scored] = IGNORE  # context tokens, scored by the previous window
            yield ids[:, begin:end], None if mask is None else mask[:, begin:end], target


__all__ = ["perplexity"]
