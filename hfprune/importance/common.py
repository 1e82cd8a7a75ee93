"""Shared machinery of the scorers: batch handling, the scoring mode, token counting and distributed reduction.

Every scorer follows the same contract: eval mode (dropout off), no weight changes, parameters frozen while scoring
(so no `.grad` is ever written on them), and `requires_grad` flags, gradients and per-module training flags
restored on exit, also when a batch raises.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter

_LABEL_ALIASES = ("label", "label_ids")


@dataclass
class ImportanceResult:
    """Scores plus the secondary statistics gathered in the same pass.

    Args:
        scores (`torch.Tensor`): `[num_layers, max_heads]` importance (NaN where a layer has fewer heads).
        entropy (`torch.Tensor`, *optional*): `[num_layers, max_heads]` mean attention entropy per non-padding query
            token (nats), as in Michel et al. (2019), Section 6.
        num_tokens (`int`): the non-padding tokens the statistics are divided by (summed over processes).
    """

    scores: torch.Tensor
    entropy: torch.Tensor | None = None
    num_tokens: int = 0


# ----- input checks ---------------------------------------------------------------------------------------------------
def check_model(model: nn.Module, needs_grad: bool = True) -> torch.device:
    """The model's device; refuses float16 weights on CPU (no reliable half-precision backward there)."""
    try:
        param = next(model.parameters())
    except StopIteration:
        raise ValueError(f"{type(model).__name__} has no parameters to score") from None
    if needs_grad and param.device.type == "cpu" and any(p.dtype == torch.float16 for p in model.parameters()):
        raise ValueError(
            f"{type(model).__name__} is in float16 on CPU: gradient-based importance needs float32 or bfloat16 "
            "there. Call model.float() first, or score on a GPU."
        )
    return param.device


def check_ratio(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


# ----- batches --------------------------------------------------------------------------------------------------------
def _batch_size(batch: Mapping) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError(f"batch has no tensor to read a batch size from (keys: {sorted(batch)})")


def _prepare(batch, index: int, device: torch.device, need_labels: bool) -> dict:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"batch {index} is a {type(batch).__name__}; importance scorers expect dicts of tensors "
            "(a DataLoader with a Hugging Face data collator, or a list of dicts)"
        )
    batch = dict(batch)
    if "labels" not in batch:
        for alias in _LABEL_ALIASES:
            if alias in batch:
                batch["labels"] = batch.pop(alias)  # what the Trainer's collators do
                break
    if need_labels and batch.get("labels") is None:
        raise ValueError(
            f"batch {index} has no 'labels' (keys: {sorted(batch)}): importance is the gradient of the model's own "
            "loss, so the batches must carry labels (for causal LMs: labels=input_ids)"
        )
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _truncate(batch: dict, size: int) -> dict:
    full = _batch_size(batch)
    return {k: v[:size] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == full else v
            for k, v in batch.items()}


def iter_batches(dataloader: Iterable, device: torch.device, *, max_batches: int | None = None,
                 num_samples: int | None = None, show_progress: bool = True, desc: str = "scoring",
                 need_labels: bool = True) -> Iterator[dict]:
    """Yield batches as dicts on `device`, stopping after `max_batches` batches or `num_samples` examples.

    Accepts a `DataLoader` or any iterable of dicts. The last batch is cut so that exactly `num_samples` examples are
    used. Raises when the iterable yields nothing, so an empty dataloader never yields all-zero scores.
    """
    if dataloader is None:
        raise ValueError("this criterion needs data: pass a DataLoader or a list of batch dicts")
    if isinstance(dataloader, Mapping):
        raise TypeError("got a single batch dict; pass an iterable of batches, e.g. [batch]")
    check_limit("max_batches", max_batches)
    check_limit("num_samples", num_samples)
    try:
        total = len(dataloader)
    except TypeError:  # a generator, or a DataLoader over an IterableDataset (streaming) that has no length
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not show_progress or not is_main_process(), leave=False)
    seen = used = 0
    try:
        for index, raw in enumerate(dataloader):
            if max_batches is not None and index >= max_batches:
                break
            batch = _prepare(raw, index, device, need_labels)
            if num_samples is not None:
                size = _batch_size(batch)
                if seen + size > num_samples:
                    batch = _truncate(batch, num_samples - seen)
                seen += _batch_size(batch)
            used += 1
            yield batch
            bar.update(1)
            if num_samples is not None and seen >= num_samples:
                break
    finally:
        bar.close()
    if used == 0:
        raise ValueError("the dataloader yielded no batches: nothing to score")


class TokenCounter:
    """Counts the tokens statistics are divided by: `attention_mask.sum()` when the batch has one, otherwise
    examples x sequence length as seen by the first block's FFN (ViT: patches + CLS)."""

    def __init__(self, model: nn.Module, adapter):
        self._shape_tokens = 0
        first = adapter.layers(model)[0]
        self._handle = adapter.ffn_out(first).register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self._shape_tokens = int(args[0].shape[:-1].numel())

    def count(self, batch: Mapping) -> int:
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return int(mask.sum())
        return self._shape_tokens

    def remove(self) -> None:
        self._handle.remove()


# ----- the scoring mode -----------------------------------------------------------------------------------------------
@contextmanager
def scoring_mode(model: nn.Module):
    """Eval mode with every parameter frozen; restores training flags, `requires_grad` and `.grad` on exit.

    Freezing the parameters means backward only reaches the gates: cheaper, and no gradient lands on a weight.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for module, training in modes:
            module.training = training


@contextmanager
def eager_attention(model: nn.Module, enabled: bool):
    """Temporarily switch to eager attention, the only implementation that returns attention probabilities."""
    current = getattr(model.config, "_attn_implementation", None)
    switch = enabled and current not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(current)


def model_loss(outputs, index: int) -> torch.Tensor:
    loss = getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError(f"batch {index}: the model returned no loss (are 'labels' in the batch?)")
    return loss


# ----- distributed ----------------------------------------------------------------------------------------------------
def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def is_main_process() -> bool:
    return not is_distributed() or torch.distributed.get_rank() == 0


def all_reduce_sum(tensors: list[torch.Tensor], enabled: bool = True) -> list[torch.Tensor]:
    """Sum each tensor over processes (one collective for all of them); a no-op outside torch.distributed.

    Sums travel in float64 so the reduced statistics match a single-process run to rounding. With NCCL the buffer
    must live on the GPU, so it is placed on the device of the first tensor.
    """
    if not enabled or not is_distributed() or not tensors:
        return tensors
    device = tensors[0].device
    if torch.distributed.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.device))
        start += t.numel()
    return out


def sum_per_token(stats: list[torch.Tensor], tokens: int | float, distributed: bool = True,
                  ) -> tuple[list[torch.Tensor], int]:
    """Sum `stats` and this process's token count over processes (one collective), then divide by the total.

    Every data criterion ends this way: per-process sums over batches become per-token means equal to one process
    scoring all the batches. With no statistic at all (every layer headless: the same on every process) nothing is
    reduced.

    Returns:
        `tuple[list[Tensor], int]`: the float64 means, and the total token count.

    Raises:
        ValueError: the batches hold no non-padding token (the means would be 0 / 0).
    """
    if not stats:
        return [], round(tokens)
    count = torch.tensor(float(tokens), dtype=torch.float64, device=stats[0].device)
    reduced = all_reduce_sum([*stats, count], enabled=distributed)
    total = float(reduced[-1])
    if total <= 0:
        raise ValueError("the batches contain no non-padding token (attention_mask sums to 0)")
    return [r / total for r in reduced[:-1]], round(total)


# ----- shaping --------------------------------------------------------------------------------------------------------
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


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-layer vectors of different lengths into `[num_layers, max_len]` float32, NaN-padded, on CPU."""
    width = max((int(r.numel()) for r in rows), default=0)
    out = torch.full((len(rows), width), float("nan"), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, :row.numel()] = row.detach().to("cpu", torch.float32)
    return out


def normalize_heads(scores: torch.Tensor, by_layer: bool = True, by_global: bool = True) -> torch.Tensor:
    """Michel et al.'s two normalisations: each layer divided by its L2 norm, then global min-max to [0, 1].

    NaN entries (heads that do not exist) stay NaN and are ignored by both. Neither changes a layer's ranking.
    """
    scores = scores.clone()
    valid = ~torch.isnan(scores)
    if by_layer:
        norm = torch.where(valid, scores, torch.zeros_like(scores)).pow(2).sum(-1).pow(0.5)
        scores = scores / (norm.unsqueeze(-1) + 1e-20)
    if by_global and valid.any():
        lo, hi = scores[valid].min(), scores[valid].max()
        scores = (scores - lo) / (hi - lo) if hi > lo else torch.where(valid, torch.zeros_like(scores), scores)
    return scores
