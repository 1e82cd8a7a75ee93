"""Reversible gates on any unit kind: the handle (`Gates`) and the one loop that attaches them (`attach`).

Each kind puts its gates where masking equals removal (`hfprune.units.<kind>`): heads at the input of the attention
output projection, FFN neurons at the input of the down projection, layers by blending a block's output with its
input, CNN channels at the input of every consumer of the group. With `requires_grad=True` the same gates are what
the importance scorers differentiate.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .registry import kind_names, supported_kind


class Gates:
    """Handle on the gates attached to a model. `remove()` (or leaving the `with` block) detaches every hook.

    Attributes:
        units (`dict[str, dict]`): unit kind -> {layer or group name -> gate tensor} (1 keeps, 0 removes).
        head_gates (`dict[int, torch.Tensor]`): layer -> `[num_heads]` gate.
        neuron_gates (`dict[int, torch.Tensor]`): layer -> `[intermediate_size]` gate.
        layer_gates (`dict[int, torch.Tensor]`): layer -> scalar gate.
        channel_gates (`dict[str, torch.Tensor]`): CNN channel group name -> `[size]` gate.
    """

    def __init__(self):
        self.units: dict[str, dict] = {name: {} for name in kind_names()}
        self._handles: list = []

    def of(self, kind: str) -> dict:
        """The gates of one unit kind (`gates.of("heads")` is `gates.head_gates`)."""
        return self.units[kind]

    @property
    def head_gates(self) -> dict[int, torch.Tensor]:
        return self.units["heads"]

    @property
    def neuron_gates(self) -> dict[int, torch.Tensor]:
        return self.units["neurons"]

    @property
    def layer_gates(self) -> dict[int, torch.Tensor]:
        return self.units["layers"]

    @property
    def channel_gates(self) -> dict[str, torch.Tensor]:
        return self.units["channels"]

    def add(self, kind: str, key, gate: torch.Tensor, *handles) -> None:
        """Record one gate and the hook handles that apply it."""
        self.units[kind][key] = gate
        self._handles.extend(handles)

    def hold(self, *handles) -> None:
        """Undo these handles too on `remove()` (a compensation fold made while the gates are on)."""
        self._handles.extend(handles)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def parameters(self) -> list[torch.Tensor]:
        return [gate for gates in self.units.values() for gate in gates.values()]

    def zero_grad(self) -> None:
        for gate in self.parameters():
            gate.grad = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.units.items() if v)
        return f"Gates({sizes})"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach(model: nn.Module, adapter, wanted: Mapping, plan=None, requires_grad: bool = False) -> Gates:
    """Attach the gates of every kind in `wanted` (kind -> `True` or the layers / groups to gate), all or none.

    `model` is the unwrapped model and `plan` (zero gates where it removes units) already validated.
    """
    kinds = [(supported_kind(name, adapter, model), which) for name, which in wanted.items()
             if which is not False and which is not None]
    gates = Gates()
    try:
        for kind, which in kinds:
            kind.attach(model, adapter, gates, plan, requires_grad, which)
    except Exception:
        gates.remove()
        raise
    return gates
