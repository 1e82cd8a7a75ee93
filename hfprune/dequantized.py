"""Models loaded from a GGUF file: their weights are already dequantized, but the loader's quantizer stays attached.

`from_pretrained(folder, gguf_file=...)` turns every GGUF tensor into a plain float tensor, yet leaves the
`GgufHfQuantizer` on the model (`model.hf_quantizer`, `model.is_quantized`, `config.quantization_config`), so
`save_pretrained` refuses ("quantized with gguf and is not serializable") and a saved config would claim a GGUF
quantization that the safetensors weights do not have. hfprune's writers call `detach_gguf_quantizer` first.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def detach_gguf_quantizer(model: nn.Module) -> bool:
    """Forget the quantizer of a model loaded from GGUF whose weights were dequantized to dense floats.

    Other quantizers, and GGUF models whose weights stay packed (loaded with a GGUF matmul kernel), are left alone.

    Uses the quantizer's own `remove_quantization_config` (what `model.dequantize()` ends with), which deletes
    `model.hf_quantizer`, `model.quantization_method` and `config.quantization_config` and sets
    `model.is_quantized = False`. Returns whether a quantizer was detached.

    Example:
        ```py
        >>> model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> detach_gguf_quantizer(model)      # True; save_pretrained now writes a plain float checkpoint
        ```
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)).lower() != "gguf":
        return False
    # With a GGUF matmul kernel (the `kernels` package on a supported device) transformers keeps the weights packed
    # in GGUF blocks; those models really are quantized and stay as they are (save_pretrained then refuses).
    if getattr(quantizer, "quantized", None) or any(not p.is_floating_point() for p in model.parameters()):
        return False
    quantizer.remove_quantization_config(model)
    for module in model.modules():  # the loader also flags every nested PreTrainedModel's config
        config = getattr(module, "config", None)
        if getattr(config, "_is_quantized", False):
            config._is_quantized = False
    return True


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

    from .export import save_pruned

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    return save_pruned(model, output_dir, tokenizer=tokenizer)
