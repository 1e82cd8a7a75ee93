"""Calibration data for causal language models: fixed-length windows of token ids sampled from a text.

In hfprune "calibration" means this, and only this: the unlabelled sample of inputs a one-shot method measures the
model on. The block-by-block criteria (Wanda, SparseGPT), the structured LLM criteria and perplexity read batches of
token ids. `calibration_batches` turns a text file, a list of strings or a `datasets` text column into such batches
with a seeded sampler: the texts are tokenized, concatenated into one token stream, and `num_samples` windows of
`seq_len` tokens start at random positions of that stream (as the reference implementations of SparseGPT and Wanda
sample C4 / WikiText-2).

Any other iterable of batch dicts (`{"input_ids": LongTensor[batch, seq]}`, optionally `attention_mask`, `labels`)
is accepted by the pruning functions and by `hfprune.perplexity` as well.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .passes import check_seq_len


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


def window_starts(num_tokens: int, seq_len: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    """The start positions of the windows `calibration_batches` draws from a stream of `num_tokens` tokens (uniform,
    seeded): what a run needs to keep other windows (e.g. recovery's) apart from the calibration ones."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_tokens - seq_len + 1, (num_samples,), generator=generator)


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
    starts = window_starts(stream.numel(), seq_len, num_samples, seed)
    windows = torch.stack([stream[s:s + seq_len] for s in starts.tolist()])
    return [{"input_ids": chunk, "attention_mask": torch.ones_like(chunk), "labels": chunk.clone()}
            for chunk in windows.split(batch_size)]


__all__ = ["calibration_batches", "token_stream"]
