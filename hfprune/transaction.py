"""All or nothing: a model change either completes or leaves the model exactly as it was.

`transaction(model)` snapshots what a structural change touches and, on any exception (`KeyboardInterrupt`
included), puts it back before re-raising: every module's attributes (so its parameters, buffers, child modules
and hooks), the contents of those containers, and every config object (`model.config`, the structure record
`config.hfprune`, sub-configs). `prune`, `mask`, compensation and `prune_to_budget`'s final surgery run inside one,
in their dispatch, so a new unit kind gets it without doing anything.

Memory: the snapshot holds *references*, not copies: surgery replaces tensors and modules (new `nn.Parameter`s,
new `ModuleList`s, stand-in modules) rather than changing them, so restoring puts the original objects back. A step
that changes a tensor in place (a compensation fold, a tuned scale) declares it first with `keep(tensor)`, which
copies that tensor only. A tensor changed in place without being kept cannot be restored: the re-raised error
then says which (a bug in the step, caught by the fault tests).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedConfig

_CONTAINERS = (dict, set, list)


def _configs(model: nn.Module) -> list[PreTrainedConfig]:
    """Every config object reachable from the model's modules (`.config` attributes) and their sub-configs."""
    found: dict[int, PreTrainedConfig] = {}
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        config = stack.pop()
        if isinstance(config, PreTrainedConfig) and id(config) not in found:
            found[id(config)] = config
            stack.extend(v for v in vars(config).values() if isinstance(v, PreTrainedConfig))
    return list(found.values())


class ModelSnapshot:
    """What `transaction` restores (see the module docstring); `keep` adds a copy of a tensor changed in place."""

    def __init__(self, model: nn.Module):
        self.modules = []
        self.tensors: dict[int, tuple[torch.Tensor, int]] = {}
        for module in model.modules():
            attrs = dict(vars(module))
            contents = {k: copy.copy(v) for k, v in attrs.items() if isinstance(v, _CONTAINERS)}
            self.modules.append((module, attrs, contents))
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is not None:
                    self.tensors[id(tensor)] = (tensor, tensor._version)
        self.configs = [(c, {k: v if isinstance(v, PreTrainedConfig) else copy.deepcopy(v)
                             for k, v in vars(c).items()}) for c in _configs(model)]
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(self, *tensors: torch.Tensor) -> None:
        """Copy these tensors now: the next step changes them in place (restored on failure)."""
        for tensor in tensors:
            if id(tensor) not in self.kept:
                self.kept[id(tensor)] = (tensor, tensor.detach().clone())

    def restore(self) -> list[str]:
        """Put everything back; returns the tensors changed in place that could not be restored (should be none)."""
        for module, attrs, contents in self.modules:
            for key, saved in contents.items():
                container = attrs[key]
                if isinstance(container, list):
                    container[:] = saved
                else:
                    container.clear()
                    container.update(saved)
            vars(module).clear()
            vars(module).update(attrs)
        for config, state in self.configs:
            vars(config).clear()
            vars(config).update(state)
        with torch.no_grad():
            for tensor, original in self.kept.values():
                tensor.copy_(original)
        return [f"{tuple(tensor.shape)} tensor" for key, (tensor, version) in self.tensors.items()
                if key not in self.kept and tensor._version != version]


@contextmanager
def transaction(model: nn.Module):
    """Run the block on `model` all or nothing: on any exception the model is restored, then the exception re-raised.

    Example:
        ```python
        >>> with transaction(model) as snapshot:
        ...     snapshot.keep(module.bias)   # about to change in place
        ...     module.bias.add_(1.0)
        ...     replace_modules(model)
        ```
    """
    snapshot = ModelSnapshot(model)
    try:
        yield snapshot
    except BaseException as err:
        lost = snapshot.restore()
        if lost:
            err.add_note(f"hfprune could not restore {len(lost)} tensors changed in place (first: {lost[0]}); "
                         "the model is not as it was")
        raise
