"""Calibration data for causal language models: fixed-length windows of token ids sampled from a text.

Calibration-based pruning (Wanda, SparseGPT) and perplexity read batches of token ids. `calibration_batches` turns a
text file, a list of strings or a `datasets` text column into such batches with a seeded sampler: the texts are
tokenized, concatenated into one token stream, and `num_samples` windows of `seq_len` tokens start at random
positions of that stream (as the reference implementations of SparseGPT and Wanda sample C4 / WikiText-2).

Any other iterable of batch dicts (`{"input_ids": LongTensor[batch, seq]}`, optionally `attention_mask`, `labels`)
is accepted by the pruning functions and by `hfprune.perplexity` as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

# Config attributes that bound the sequence length, by family (the first one present wins).
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


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


def _read_texts(texts, text_column: str) -> list[str]:
    if isinstance(texts, (str, os.PathLike)):
        path = Path(texts)
        if not path.is_file():
            raise FileNotFoundError(f"calibration text file {str(path)!r} does not exist (pass a path to a text "
                                    "file, a list of strings or a datasets.Dataset with a text column)")
        return [path.read_text(encoding="utf-8")]
    column_names = getattr(texts, "column_names", None)
    if column_names is not None:  # a datasets.Dataset
        if text_column not in column_names:
            raise ValueError(f"the dataset has no column {text_column!r} (columns: {column_names}); "
                             "pass text_column=")
        texts = texts[text_column]
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"calibration texts must be strings; got {type(bad).__name__}")
    return texts


def token_stream(tokenizer, texts, text_column: str = "text") -> torch.Tensor:
    """All texts tokenized (no special tokens) and concatenated, separated by the tokens of a blank line."""
    texts = [t for t in _read_texts(texts, text_column) if t.strip()]
    if not texts:
        raise ValueError("the calibration text is empty")
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        if ids:
            ids.extend(sep)
        ids.extend(encoded)
    return torch.tensor(ids, dtype=torch.long)


def calibration_batches(tokenizer, texts, num_samples: int = 128, seq_len: int = 2048, seed: int = 0,
                        batch_size: int = 1, text_column: str = "text", model: nn.Module | None = None,
                        max_positions: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Deterministic calibration batches of `seq_len` token ids drawn from `texts`.

    The texts are tokenized and concatenated into one stream; `num_samples` windows start at positions drawn
    uniformly with a `torch.Generator` seeded by `seed` (windows may overlap when the text is short). Every batch
    holds `input_ids`, an all-ones `attention_mask` and `labels` equal to `input_ids`.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: a path to a UTF-8 text file, a list of strings, or a `datasets.Dataset` (its `text_column`).
        num_samples (`int`, defaults to 128): windows in total.
        seq_len (`int`, defaults to 2048): tokens per window.
        seed (`int`, defaults to 0): seed of the window positions.
        batch_size (`int`, defaults to 1): windows per batch (the last batch may be smaller).
        text_column (`str`, defaults to `"text"`): the column read from a dataset.
        model (`nn.Module`, *optional*): when given, `seq_len` is checked against its positions.
        max_positions (`int`, *optional*): the same check without a model.

    Returns:
        `list[dict[str, torch.Tensor]]`: the batches (a list, so it can be iterated more than once).

    Raises:
        ValueError: `seq_len` longer than the model's positions, a text shorter than one sample, non-positive sizes.
        FileNotFoundError: a path that is not a file.

    Example:
        ```py
        >>> batches = hfprune.calibration_batches(tokenizer, "train.txt", num_samples=64, seq_len=512, model=model)
        >>> handle = hfprune.sparsify(model, 0.5, criterion="wanda", dataloader=batches)
        ```
    """
    for name, value in (("num_samples", num_samples), ("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    check_seq_len(seq_len, model, max_positions)
    stream = token_stream(tokenizer, texts, text_column)
    if stream.numel() < seq_len:
        raise ValueError(f"the calibration text has {stream.numel()} tokens, shorter than one sample of "
                         f"seq_len={seq_len}; give more text or a smaller seq_len")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len + 1, (num_samples,), generator=generator)
    windows = torch.stack([stream[s:s + seq_len] for s in starts.tolist()])
    return [{"input_ids": chunk, "attention_mask": torch.ones_like(chunk), "labels": chunk.clone()}
            for chunk in windows.split(batch_size)]


def as_batch(batch) -> dict:
    """A batch dict from a dict or a bare tensor of token ids (1-D or 2-D)."""
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch if batch.dim() == 2 else batch.unsqueeze(0)}
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError("calibration / evaluation batches must be dicts with 'input_ids' (or tensors of token ids); "
                        f"got {type(batch).__name__}")
    return dict(batch)


def iter_batches(batches: Iterable | Mapping | torch.Tensor, model: nn.Module | None = None) -> Iterable[dict]:
    """Yield batch dicts from `batches`, checking each sequence length against `model`'s positions."""
    if isinstance(batches, (Mapping, torch.Tensor)):
        batches = [batches]
    if batches is None:
        raise ValueError("no calibration data: pass dataloader= (e.g. hfprune.calibration_batches(...))")
    for batch in batches:
        batch = as_batch(batch)
        if model is not None:
            check_seq_len(int(batch["input_ids"].shape[-1]), model, what="sequence length of a batch")
        yield batch


__all__ = ["calibration_batches", "check_seq_len", "iter_batches", "max_positions", "token_stream"]
