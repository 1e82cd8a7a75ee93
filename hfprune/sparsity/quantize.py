"""int8 dynamic quantization of Linear layers for CPU inference, after structured or weight-level pruning.

Dynamic quantization (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"; PyTorch's `quantize_dynamic`) stores Linear weights as int8 and quantizes
activations on the fly per batch. Weights are quantized symmetrically, so a pruned (zero) weight stays exactly zero.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .targets import is_conv1d


def quantize_dynamic_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return `model` with every `nn.Linear` replaced by an int8 dynamically quantized Linear (CPU inference).

    Fold any active sparsity masks first (`handle.finalize()`): quantized modules have no `.weight` parameter to
    mask. The result runs on CPU only and is for inference (no training, no `save_pretrained`; for int8 weights on
    disk that serving engines read, use `hfprune.export_compressed_tensors`).

    Built on `torch.ao.quantization` (deprecated in favour of torchao) on purpose: torchao's CPU int8 paths in eager
    mode were slower here (see docs/serving.md, `benchmarks/int8_latency.py`); they need `torch.compile`.

    Args:
        model (`nn.Module`): a float32 model on CPU.
        inplace (`bool`, defaults to `False`): quantize `model` itself instead of a deep copy.

    Returns:
        `nn.Module`: the quantized model, in eval mode.

    Raises:
        ValueError: the model has no `nn.Linear` (GPT-2's `Conv1D` layers are not quantized by `torch.ao`).

    Example:
        ```python
        >>> handle = hfprune.sparsify(model, 0.5); handle.finalize()
        >>> qmodel = hfprune.quantize_dynamic_int8(model)
        >>> logits = qmodel(**batch).logits
        ```
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        convs = sum(is_conv1d(m) for m in model.modules())
        raise ValueError(f"{type(model).__name__} has no nn.Linear to quantize"
                         + (f" ({convs} Conv1D layers are not supported by torch.ao dynamic quantization)"
                            if convs else ""))
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 dynamic quantization runs on CPU; the model is on {device} (call model.cpu())")
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    with warnings.catch_warnings():
        # torch.ao announces its move to torchao; the API still works and is what this function documents.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)
