"""Which weights weight-level pruning touches: the adapter's projections by default, or modules chosen by name.

Only `nn.Linear` and transformers' `Conv1D` weights can be targets; embeddings, LayerNorms, biases and any Linear whose
weight is tied to an embedding (a language-model head) are never pruned, even when a wildcard pattern matches them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter, unwrap_model

DEFAULT = "default"


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # a transformers without Conv1D has no GPT-2-style layers to worry about
        return ()
    return Conv1D


def is_conv1d(module: nn.Module) -> bool:
    conv1d = _conv1d_type()
    return bool(conv1d) and isinstance(module, conv1d)


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


@dataclass(frozen=True)
class Target:
    """One weight tensor to prune.

    Attributes:
        name (`str`): full module name (`bert.encoder.layer.0.attention.self.query`).
        module (`nn.Module`): the Linear / Conv1D module.
    """

    name: str
    module: nn.Module

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def key(self) -> str:
        """The weight's name in `model.state_dict()`."""
        return f"{self.name}.weight"

    @property
    def transposed(self) -> bool:
        # Conv1D keeps its weight as (in, out); every pattern is defined on the (out, in) layout of nn.Linear.
        return is_conv1d(self.module)

    def canonical(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (shaped like the weight) as an (out, in) view."""
        return tensor.t() if self.transposed else tensor

    def from_canonical(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t().contiguous() if self.transposed else tensor.contiguous()


def default_target_names(model: nn.Module) -> list[str]:
    """Full names of every attention and FFN projection of every layer, as the model's adapter reports them."""
    adapter = get_adapter(model)
    base = adapter.layers_path(model)
    names = []
    for index, layer in enumerate(adapter.layers(model)):
        for path in adapter.linear_paths():
            try:
                module = layer.get_submodule(path)
            except AttributeError:  # a layer that lost all heads no longer has its q/k/v projections
                continue
            if is_prunable(module) and module.weight.numel() > 0:
                names.append(f"{base}.{index}.{path}")
    return names


def _matches(pattern: str, name: str) -> bool:
    if fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:  # a glob such as `*.dense` is not a valid regex; the glob test above already ran
        return False


def _embedding_weights(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def resolve_targets(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[Target]:
    """The modules selected by `targets`, in model order, each once.

    Args:
        model (`nn.Module`): the model.
        targets (`str` or `list[str]`, *optional*): `None` or `"default"` for the adapter's attention and FFN
            projections; otherwise name patterns over full module names, each a glob (`fnmatch`) or a regular
            expression (`re.fullmatch`); `"default"` may be mixed in (`["default", "classifier*"]`).

    Raises:
        ValueError: a pattern matches no module, or matches only modules that cannot be pruned (the message names
            them and their types).
    """
    patterns = [DEFAULT] if targets is None else [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise ValueError("targets is empty; pass None for the default projections or a list of name patterns")
    model = unwrap_model(model)  # names as the model has them, not "module."-prefixed by a DDP wrapper
    modules = dict(model.named_modules())
    tied = _embedding_weights(model)
    chosen: dict[str, None] = {}
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"target patterns must be strings; got {pattern!r}")
        if pattern == DEFAULT:
            chosen.update(dict.fromkeys(default_target_names(model)))
            continue
        hits = [n for n in modules if n and _matches(pattern, n)]
        usable = [n for n in hits if is_prunable(modules[n]) and id(modules[n].weight) not in tied
                  and modules[n].weight.numel() > 0]
        if not hits:
            sample = [n for n, m in modules.items() if is_prunable(m)][:6]
            raise ValueError(f"target pattern {pattern!r} matches no module of {type(model).__name__} "
                             f"(Linear modules are named like {sample})")
        if not usable:
            found = ", ".join(f"{n!r} ({type(modules[n]).__name__})" for n in hits[:5])
            raise ValueError(f"target pattern {pattern!r} matches only modules that weight pruning leaves alone: "
                             f"{found}; targets must be Linear/Conv1D weights not tied to an embedding (to select "
                             f"the Linear layers inside a module, end the pattern with '.*')")
        chosen.update(dict.fromkeys(usable))
    seen: set[int] = set()
    result = []
    for name in (n for n in modules if n in chosen):
        weight = modules[name].weight
        if id(weight) not in seen:  # a weight shared by two modules is pruned once
            seen.add(id(weight))
            result.append(Target(name, modules[name]))
    return result
