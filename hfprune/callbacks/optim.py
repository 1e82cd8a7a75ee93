"""Keep a live optimizer valid across physical pruning (PruningCallback's mode="prune").

Surgery replaces sliced weights by new `nn.Parameter`s on the same modules, and removed layers take theirs away.
The optimizer (and its per-parameter state) still holds the old tensors, so they are swapped for the new ones and
the state of every changed tensor is dropped: its moments restart, the others keep theirs.
"""

from __future__ import annotations

import torch
from torch import nn


def parameter_owners(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """(module, attribute, parameter) for every parameter, taken before surgery."""
    return [(module, name, param) for module in model.modules()
            for name, param in module.named_parameters(recurse=False)]


def repoint_optimizer(model: nn.Module, optimizer, owners: list[tuple[nn.Module, str, torch.Tensor]]) -> int:
    """Swap the pre-surgery parameters in `optimizer` for the model's current ones; returns how many changed."""
    live = set(model.modules())
    replace: dict[int, torch.Tensor | None] = {}
    for module, name, old in owners:
        new = getattr(module, name, None) if module in live else None
        if new is not old:
            replace[id(old)] = new
    if not replace:
        return 0
    state = optimizer.state
    for group in optimizer.param_groups:
        params = []
        for param in group["params"]:
            if id(param) in replace:
                state.pop(param, None)
                new = replace[id(param)]
                if new is not None and new.requires_grad:
                    params.append(new)
            else:
                params.append(param)
        group["params"] = params
    return len(replace)
