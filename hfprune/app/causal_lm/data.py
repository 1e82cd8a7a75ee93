"""The data side of a causal-LM run: the decoder and its tokenizer, the calibration / held-out split of the text
file, and the evaluation windows."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...calibration import token_stream
from ...io import load_pruned
from ..common.options import check
from .options import LMData


def read_lines(path: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file."""
    return [t for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]


def split_texts(data: LMData) -> tuple[list[str], list[str]]:
    """(calibration lines, evaluation lines): a separate file, or the last `eval_fraction` of the lines held out."""
    lines = read_lines(data.text_file)
    if data.eval_text_file is not None:
        return lines, read_lines(data.eval_text_file)
    check(len(lines) >= 2, f"text_file {data.text_file} has {len(lines)} non-empty line(s); at least 2 are needed "
          "to hold some out for perplexity (or give eval_text_file)")
    cut = max(1, min(len(lines) - 1, round(len(lines) * (1 - data.eval_fraction))))
    return lines[:cut], lines[cut:]


def eval_windows(tokenizer, texts: list[str], seq_len: int, count: int) -> list[dict]:
    """Consecutive non-overlapping windows of the evaluation text (a shorter text: one window of all of it)."""
    stream = token_stream(tokenizer, texts)
    check(stream.numel() >= 2, "the evaluation text has fewer than 2 tokens: nothing to score")
    n = min(count, stream.numel() // seq_len)
    if n == 0:
        return [{"input_ids": stream.unsqueeze(0)}]
    ids = stream[:n * seq_len].reshape(n, seq_len)
    return [{"input_ids": ids[i:i + 1]} for i in range(n)]


def load_decoder(name: str, gguf_file: str | None = None):
    """The model alone, float32 in eval mode; an hfprune folder with a non-plain structure via `load_pruned`."""
    import transformers

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    config_path = Path(name) / "config.json"
    record = json.loads(config_path.read_text()).get("hfprune") if config_path.is_file() else None
    if record is not None and not gguf_file:
        model = load_pruned(name)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kwargs)
    return model.float().eval()


def load_model(name: str, gguf_file: str | None = None):
    """(model, tokenizer) in float32 eval mode (see `load_decoder`)."""
    import transformers

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
    model = load_decoder(name, gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
