"""Batches as every pass reads them: one `iter_batches`, the model checks, and the causal-LM labels.

A pass accepts a `DataLoader` or any iterable of batch dicts (a bare tensor of token ids counts as one batch of
`input_ids`); `iter_batches` turns them into dicts on the model's device, maps the collators' label aliases to
`labels`, stops after `max_batches` batches or `num_samples` examples, checks sequence lengths against a model's
positions when asked, and refuses an iterable that yields nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from .bars import progress

_LABEL_ALIASES = ("label", "label_ids")
# Config attributes that bound the sequence length, by family (the first one present wins).
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


# ----- checks ---------------------------------------------------------------------------------------------------------
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


def check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def max_positions(model_or_config) -> int | None:
    """The longest sequence the model accepts (from its config), or `None` when the config does not say."""
    config = getattr(model_or_config, "config", model_or_config)
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_seq_len(seq_len: int, model=None, max_positions_: int | None = None, what: str = "seq_len") -> None:
    """Raise `ValueError` if `seq_len` exceeds the model's positions (`model`'s config or `max_positions_`)."""
    limit = max_positions_ if max_positions_ is not None else (max_positions(model) if model is not None else None)
    if limit is not None and seq_len > limit:
        name = f" of {type(model).__name__}" if model is not None else ""
        raise ValueError(f"{what}={seq_len} is longer than the {limit} positions{name} "
                         f"(config.max_position_embeddings); use seq_len <= {limit}")


def check_token_ids(input_ids: torch.Tensor, model: nn.Module, index: int) -> None:
    """Raise `ValueError` naming the batch, the largest (or a negative) id and the vocabulary size if `input_ids`
    holds an id the model's input embeddings do not have (instead of an `IndexError` deep inside the forward)."""
    try:
        vocab = getattr(model.get_input_embeddings(), "num_embeddings", None)
    except (AttributeError, NotImplementedError):  # no token embeddings (a vision model)
        vocab = None
    if vocab is None or input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if high >= vocab or low < 0:
        bad = high if high >= vocab else low
        raise ValueError(f"batch {index}: token id {bad} is outside the vocabulary of {type(model).__name__} "
                         f"({vocab} tokens, ids 0..{vocab - 1}; largest id in the batch: {high}); was the data "
                         "tokenized for another model?")


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is one of transformers' causal-LM classes (from the public auto mapping, whose values are a
    class name or a tuple of them)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return type(model).__name__ in names


def model_loss(outputs, index: int) -> torch.Tensor:
    loss = getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError(f"batch {index}: the model returned no loss (are 'labels' in the batch?)")
    return loss


# ----- one batch ------------------------------------------------------------------------------------------------------
def batch_size(batch: Mapping) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError(f"batch has no tensor to read a batch size from (keys: {sorted(batch)})")


def _as_dict(batch, index: int) -> dict:
    if isinstance(batch, torch.Tensor):  # token ids, 1-D or 2-D
        return {"input_ids": batch if batch.dim() == 2 else batch.unsqueeze(0)}
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"batch {index} is a {type(batch).__name__}; passes expect dicts of tensors (a DataLoader with a "
            "Hugging Face data collator, or a list of dicts) or tensors of token ids"
        )
    batch = dict(batch)
    if "labels" not in batch:
        for alias in _LABEL_ALIASES:
            if alias in batch:
                batch["labels"] = batch.pop(alias)  # what the Trainer's collators do
                break
    return batch


def _prepare(raw, index: int, device: torch.device | None, need_labels: bool, positions_of: nn.Module | None):
    batch = _as_dict(raw, index)
    if need_labels and batch.get("labels") is None:
        raise ValueError(
            f"batch {index} has no 'labels' (keys: {sorted(batch)}): importance is the gradient of the model's own "
            "loss, so the batches must carry labels (for causal LMs: labels=input_ids)"
        )
    if positions_of is not None and isinstance(batch.get("input_ids"), torch.Tensor):
        check_seq_len(int(batch["input_ids"].shape[-1]), positions_of, what="sequence length of a batch")
        check_token_ids(batch["input_ids"], positions_of, index)
    if device is None:
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _truncate(batch: dict, size: int) -> dict:
    full = batch_size(batch)
    return {k: v[:size] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == full else v
            for k, v in batch.items()}


def with_lm_labels(model: nn.Module, batch: dict) -> dict:
    """Add `labels = input_ids` (padding at -100) to a causal-LM batch that has none: the loss of a decoder on its
    calibration data is its own next-token loss."""
    if "labels" in batch or "label" in batch or "input_ids" not in batch or not is_causal_lm(model):
        return batch
    labels = batch["input_ids"].clone()
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        labels = labels.masked_fill(mask == 0, -100)
    return {**batch, "labels": labels}


# ----- many batches ---------------------------------------------------------------------------------------------------
def _length(dataloader, max_batches: int | None) -> int | None:
    try:
        total = len(dataloader)
    except TypeError:  # a generator, or a DataLoader over an IterableDataset (streaming) that has no length
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return total


def iter_batches(dataloader: Iterable, device: torch.device | None = None, *, max_batches: int | None = None,
                 num_samples: int | None = None, show_progress: bool = True, desc: str = "scoring",
                 need_labels: bool = True, positions_of: nn.Module | None = None) -> Iterator[dict]:
    """Yield batches as dicts on `device`, stopping after `max_batches` batches or `num_samples` examples.

    Args:
        dataloader: a `DataLoader` or any iterable of dicts (or of tensors of token ids).
        device (`torch.device`, *optional*): where the tensors go (`None`: where they are).
        max_batches, num_samples (`int`, *optional*): limits; the last batch is cut so that exactly `num_samples`
            examples are used.
        show_progress (`bool`): a progress bar on the main process.
        need_labels (`bool`): refuse a batch without `labels` (after mapping `label` / `label_ids`).
        positions_of (`nn.Module`, *optional*): check each batch's `input_ids` length (when it has them) against
            this model's positions.

    Raises:
        ValueError: the iterable yields nothing (so an empty dataloader never yields all-zero scores), or a batch
            breaks one of the checks above (naming the batch).
    """
    if dataloader is None:
        raise ValueError("this pass needs data: pass a DataLoader or a list of batch dicts")
    if isinstance(dataloader, Mapping):
        raise TypeError("got a single batch dict; pass an iterable of batches, e.g. [batch]")
    check_limit("max_batches", max_batches)
    check_limit("num_samples", num_samples)
    bar = progress(_length(dataloader, max_batches), desc, show_progress)
    seen = used = 0
    try:
        for index, raw in enumerate(dataloader):
            if max_batches is not None and index >= max_batches:
                break
            batch = _prepare(raw, index, device, need_labels, positions_of)
            if num_samples is not None:
                if seen + batch_size(batch) > num_samples:
                    batch = _truncate(batch, num_samples - seen)
                seen += batch_size(batch)
            used += 1
            yield batch
            bar.update(1)
            if num_samples is not None and seen >= num_samples:
                break
    finally:
        bar.close()
    if used == 0:
        raise ValueError("the dataloader yielded no batches: nothing to score")


def prepare_batches(model: nn.Module, dataloader: Iterable, *, num_samples: int | None,
                    show_progress: bool = False, desc: str = "batches") -> list[dict]:
    """The batches as a list of dicts on the model's device, labels included (causal LMs: `input_ids`), for a pass
    that reads them more than once."""
    device = check_model(model)
    raw = (with_lm_labels(model, dict(b)) if isinstance(b, Mapping) else b for b in dataloader)
    return list(iter_batches(raw, device, num_samples=num_samples, show_progress=show_progress, desc=desc))
