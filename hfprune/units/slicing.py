"""Index-based slicing, in place: projection layers (nn.Linear and transformers' Conv1D) for heads and FFN neurons,
and one op of a channel group (`slice_op`: a convolution, linear layer or norm) for channels."""

from __future__ import annotations

import torch
from torch import nn

from ..arch.channels import ChannelOp


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D: weight is (in, out) and it keeps `nf` (out) / `nx` (in) attributes.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def select_outputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep the output rows `index` (repeats allowed) of a Linear/Conv1D, in place."""
    index = index.to(module.weight.device)
    with torch.no_grad():
        if _is_conv1d(module):
            module.weight = nn.Parameter(module.weight.index_select(1, index).clone(),
                                         requires_grad=module.weight.requires_grad)
            module.nf = int(index.numel())
        elif isinstance(module, nn.Linear):
            module.weight = nn.Parameter(module.weight.index_select(0, index).clone(),
                                         requires_grad=module.weight.requires_grad)
            module.out_features = int(index.numel())
        else:
            raise TypeError(f"cannot slice {type(module).__name__}: expected nn.Linear or Conv1D")
        if getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(module.bias.index_select(0, index).clone(),
                                       requires_grad=module.bias.requires_grad)


def select_inputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep the input columns `index` of a Linear/Conv1D, in place (the bias is untouched)."""
    index = index.to(module.weight.device)
    with torch.no_grad():
        if _is_conv1d(module):
            module.weight = nn.Parameter(module.weight.index_select(0, index).clone(),
                                         requires_grad=module.weight.requires_grad)
            module.nx = int(index.numel())
        elif isinstance(module, nn.Linear):
            module.weight = nn.Parameter(module.weight.index_select(1, index).clone(),
                                         requires_grad=module.weight.requires_grad)
            module.in_features = int(index.numel())
        else:
            raise TypeError(f"cannot slice {type(module).__name__}: expected nn.Linear or Conv1D")


def head_rows(heads: list[int], head_dim: int, offset: int = 0) -> torch.Tensor:
    """Row indices of the given heads in a projection whose heads are laid out contiguously."""
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    base = torch.tensor(heads, dtype=torch.long).unsqueeze(1) * head_dim
    return (base + torch.arange(head_dim)).reshape(-1) + offset


class ZeroWidthConv1D(nn.Module):
    """A Conv1D whose input width was pruned to 0: it adds only its bias (Conv1D's own forward cannot view an
    empty input). Keeps the `weight`/`bias` names and shapes so state-dict keys do not change."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.nf, self.nx = int(conv.weight.shape[1]), 0
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.to(x.dtype).expand(*x.shape[:-1], self.nf).clone()


def zero_width_safe(module: nn.Module) -> nn.Module:
    """`module`, or a stand-in that works with an empty input if it is a Conv1D with no input columns left."""
    if _is_conv1d(module) and module.weight.shape[0] == 0:
        return ZeroWidthConv1D(module)
    return module


def _select(module: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, new)  # a registered buffer stays a buffer (running_mean / running_var)


def slice_op(model: nn.Module, op: ChannelOp, index: torch.Tensor) -> None:
    """Keep channels `index` of one tensor of a group (see `hfprune.arch.channels` for the op kinds)."""
    module = model.get_submodule(op.path)
    n = int(index.numel())
    if op.kind == "norm":
        for name in ("weight", "bias", "running_mean", "running_var"):
            _select(module, name, 0, index)
        if isinstance(module, nn.LayerNorm):
            module.normalized_shape = (n,)
        else:
            module.num_features = n
        return
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"{op.path}: cannot slice a {type(module).__name__} as channel op {op.kind!r}")
    linear = isinstance(module, nn.Linear)
    if op.kind == "in":
        if not linear and module.groups != 1:
            raise TypeError(f"{op.path}: a grouped convolution cannot lose single input channels")
        _select(module, "weight", 1, index)
        setattr(module, "in_features" if linear else "in_channels", n)
        return
    per_group = module.out_channels // module.groups if not linear else 1
    _select(module, "weight", 0, index)
    _select(module, "bias", 0, index)
    setattr(module, "out_features" if linear else "out_channels", n)
    if op.kind == "through":  # depthwise / grouped: in == out channels, weight dim 1 is the per-group input width
        module.in_channels = n
        module.groups = n // per_group
