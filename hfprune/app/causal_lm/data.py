"""The data side of a causal-LM run: the decoder and its tokenizer, the calibration / held-out split of the text
file, and the evaluation windows."""

from __future__ import annotations

import contextlib
import functools
import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ...calibration import token_stream
from ...dequantized import detach_gguf_quantizer
from ...io import load_pruned, require_safetensors
from ..common.options import check
from ..common.progress import show_bars
from .options import LMData, check_model_source


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


@contextmanager
def _gguf_bar(quiet: bool):
    """transformers draws its GGUF conversion bar with plain tqdm (no switch of its own): off when quiet / no TTY."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None or not quiet:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def load_decoder(name: str, gguf_file: str | None = None, quiet: bool = False):
    """The model alone, float32 in eval mode; an hfprune folder with a non-plain structure via `load_pruned`.

    A GGUF file loads the way transformers' own GGUF path does (every tensor dequantized to float32); the quantizer
    that the loader leaves attached is detached (`hfprune.dequantized`), so the model is a plain float model.
    Other weights load from safetensors only (a pickle-only folder is refused, naming the file).
    """
    import transformers

    check_model_source(name, gguf_file)
    if gguf_file:
        with _gguf_bar(quiet or not show_bars()):
            model = transformers.AutoModelForCausalLM.from_pretrained(name, gguf_file=gguf_file, dtype=torch.float32)
        detach_gguf_quantizer(model)
        return model.float().eval()
    require_safetensors(name)
    config_path = Path(name) / "config.json"
    record = json.loads(config_path.read_text()).get("hfprune") if config_path.is_file() else None
    model = load_pruned(name) if record is not None else \
        transformers.AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, use_safetensors=True)
    return model.float().eval()


def load_model(name: str, gguf_file: str | None = None, quiet: bool = False):
    """(model, tokenizer) in float32 eval mode (see `load_decoder`)."""
    import transformers

    check_model_source(name, gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    with _gguf_bar(quiet or not show_bars()) if gguf_file else contextlib.nullcontext():
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
    model = load_decoder(name, gguf_file, quiet)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
