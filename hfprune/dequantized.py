"""Models loaded from a GGUF file: their weights are already dequantized, but the loader's quantizer stays attached.

`from_pretrained(folder, gguf_file=...)` turns every GGUF tensor into a plain float tensor, yet leaves the
`GgufHfQuantizer` on the model (`model.hf_quantizer`, `model.is_quantized`, `config.quantization_config`), so
`save_pretrained` refuses ("quantized with gguf and is not serializable") and a saved config would claim a GGUF
quantization that the safetensors weights do not have. hfprune's writers call `detach_gguf_quantizer` first
(`hfprune.io.gguf.convert_gguf` loads a GGUF file and saves it as a plain folder in one call).
"""

from __future__ import annotations

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
