"""A GGUF file as a plain safetensors folder: load it (weights dequantized to float by transformers) and save it.

The writer detaches the GGUF quantizer that transformers leaves on such a model (`hfprune.dequantized`), so the
folder's config claims no quantization that its weights do not have.
"""

from __future__ import annotations

import os
from pathlib import Path

from .formats import save_pruned


def convert_gguf(folder: str | os.PathLike, gguf_file: str, output_dir: str | os.PathLike) -> Path:
    """Load a causal LM from a GGUF file (dequantized to float) and save it as a plain safetensors folder.

    Args:
        folder (`str` or `os.PathLike`): the folder that holds the GGUF file.
        gguf_file (`str`): the file name inside `folder`.
        output_dir (`str` or `os.PathLike`): written atomically (model, config, tokenizer).

    Returns:
        `Path`: `output_dir`, which `from_pretrained` / `hfprune.load_pruned` read without `gguf_file`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    return save_pruned(model, output_dir, tokenizer=tokenizer)
