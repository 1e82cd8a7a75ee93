"""2:4 semi-structured sparse Linear weights on NVIDIA GPUs (Ampere and later).

Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks": with 2 of every 4 consecutive input weights zero,
sparse tensor cores run the matmul on half the weights. PyTorch exposes them as
`torch.sparse.to_sparse_semi_structured` (cuSPARSELt or CUTLASS kernels, float16/bfloat16/int8, compute capability
>= 8.0). CPUs have no such kernels: a 2:4-masked model on CPU runs exactly as fast as the dense one.
"""

from __future__ import annotations

import torch
from torch import nn

from .targets import Target, is_conv1d, resolve_targets


def semi_structured_support() -> tuple[bool, str]:
    """(`True`, device) when 2:4 sparse kernels can run here, else (`False`, why not)."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False, f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if not torch.cuda.is_available():
        return False, "no CUDA device (2:4 semi-structured sparsity needs an NVIDIA GPU; on CPU it gives no speedup)"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return False, f"{torch.cuda.get_device_name()} has compute capability {major}.{minor}; 2:4 needs >= 8.0"
    return True, torch.cuda.get_device_name()


def _check_2_4(target: Target) -> None:
    weight = target.canonical(target.weight.detach())
    out_f, in_f = weight.shape
    if in_f % 4:
        raise ValueError(f"{target.key}: input size {in_f} is not divisible by 4, so it cannot be 2:4 sparse")
    nonzeros = (weight.reshape(out_f, in_f // 4, 4) != 0).sum(-1)
    if int(nonzeros.max()) > 2:
        bad = int((nonzeros > 2).sum())
        raise ValueError(f"{target.key}: {bad} groups of 4 input weights hold more than 2 non-zeros; prune it with "
                         "hfprune.sparsify(model, pattern='2:4') first")


def to_semi_structured(model: nn.Module, targets=None, dtype: torch.dtype | None = None) -> list[str]:
    """Replace the weights of 2:4-sparse Linear targets by `SparseSemiStructuredTensor`s, in place (inference).

    Args:
        model (`nn.Module`): a model on a CUDA device, whose targets are 2:4 sparse (`sparsify(pattern="2:4")`,
            then `handle.finalize()`).
        targets (`str` or `list[str]`, *optional*): as in `hfprune.sparsify` (default: attention + FFN projections).
        dtype (`torch.dtype`, *optional*): cast the converted weights (the kernels take float16, bfloat16 or int8);
            default: the weight's own dtype.

    Returns:
        `list[str]`: the converted module names.

    Raises:
        RuntimeError: no CUDA device with semi-structured sparse support (the message says why).
        ValueError: a target is not 2:4 sparse, is a Conv1D, or has a shape the kernels refuse (named).

    Example:
        ```python
        >>> handle = hfprune.sparsify(model, pattern="2:4"); handle.finalize()
        >>> model = model.half().cuda().eval()
        >>> hfprune.sparsity.to_semi_structured(model)
        ```
    """
    ok, reason = semi_structured_support()
    if not ok:
        raise RuntimeError(f"to_semi_structured: {reason}")
    chosen = resolve_targets(model, targets)
    for target in chosen:
        if is_conv1d(target.module):
            raise ValueError(f"{target.key}: Conv1D (GPT-2) weights are stored (in, out); semi-structured kernels "
                             "need nn.Linear")
        if target.weight.device.type != "cuda":
            raise ValueError(f"{target.key} is on {target.weight.device}; move the model to CUDA first")
        _check_2_4(target)
    converted = []
    for target in chosen:
        weight = target.weight.detach()
        if dtype is not None:
            weight = weight.to(dtype)
        try:
            sparse = torch.sparse.to_sparse_semi_structured(weight)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{target.key} (shape {tuple(weight.shape)}, {weight.dtype}): {err}") from err
        target.module.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(target.name)
    return converted
