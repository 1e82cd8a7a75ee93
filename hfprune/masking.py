"""Reversible masks: gates on heads, FFN neurons and layers, applied through forward hooks (no weight changes).

Heads are gated at the input of the attention output projection (the concatenated per-head context), FFN neurons at
the input of the down projection, layers by blending the block's output with its input (gate 0: the residual stream
passes through unchanged). The same gates, with `requires_grad=True`, are what the importance scorers differentiate.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .arch import get_adapter, unwrap_model
from .plan import PruningPlan


def _head_hook(gate: torch.Tensor, head_dim: int):
    def hook(module, args):
        x = args[0]
        g = gate.to(dtype=x.dtype, device=x.device)
        x = (x.unflatten(-1, (-1, head_dim)) * g.unsqueeze(-1)).flatten(-2)
        return (x, *args[1:])

    hook.hfprune_gate = "heads"  # lets prune() refuse to resize a projection that still carries a gate
    return hook


def _neuron_hook(gate: torch.Tensor):
    def hook(module, args):
        x = args[0]
        return (x * gate.to(dtype=x.dtype, device=x.device), *args[1:])

    hook.hfprune_gate = "neurons"
    return hook


def _layer_hook(gate: torch.Tensor):
    def hook(module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        if not gate.requires_grad and float(gate) == 0.0:
            new = hidden_in  # exact skip, even if the block produced inf/nan
        else:
            g = gate.to(dtype=hidden_out.dtype, device=hidden_out.device)
            new = hidden_in + g * (hidden_out - hidden_in)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


@dataclass
class Gates:
    """Handle on the gates attached to a model. `remove()` (or leaving the `with` block) detaches every hook.

    Attributes:
        head_gates (`dict[int, torch.Tensor]`): layer -> `[num_heads]` gate (1 keeps, 0 removes).
        neuron_gates (`dict[int, torch.Tensor]`): layer -> `[intermediate_size]` gate.
        layer_gates (`dict[int, torch.Tensor]`): layer -> scalar gate.
        channel_gates (`dict[str, torch.Tensor]`): CNN channel group name -> `[size]` gate
            (`hfprune.masking_channels`).
    """

    head_gates: dict[int, torch.Tensor] = field(default_factory=dict)
    neuron_gates: dict[int, torch.Tensor] = field(default_factory=dict)
    layer_gates: dict[int, torch.Tensor] = field(default_factory=dict)
    channel_gates: dict[str, torch.Tensor] = field(default_factory=dict)
    _handles: list = field(default_factory=list, repr=False)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def parameters(self) -> list[torch.Tensor]:
        return [*self.head_gates.values(), *self.neuron_gates.values(), *self.layer_gates.values(),
                *self.channel_gates.values()]

    def zero_grad(self) -> None:
        for gate in self.parameters():
            gate.grad = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach_gates(model: nn.Module, heads: bool = False, neurons: bool = False, layers: bool = False,
                 requires_grad: bool = False, plan: PruningPlan | None = None) -> Gates:
    """Attach gates (all ones, or zero where `plan` removes a unit) to a model.

    Args:
        model (`PreTrainedModel`): a model of a supported family.
        heads, neurons, layers (`bool`): which unit kinds get gates.
        requires_grad (`bool`): make the gates leaf tensors that collect gradients (for importance scoring).
        plan (`PruningPlan`, *optional*): units whose gate starts at 0.

    Returns:
        `Gates`: the handle; call `.remove()` to detach.
    """
    # A DDP / accelerate / compiled wrapper: the hooks go on the inner model's modules, so they also act when the
    # wrapper runs the forward (mask, then train on with DDP).
    model = unwrap_model(model)
    adapter = get_adapter(model)
    if plan is not None:
        plan.validate(model)
    blocks = adapter.layers(model)
    param = next(model.parameters())
    gates = Gates()

    def make(size: int, off: list[int]) -> torch.Tensor:
        gate = torch.ones(size, device=param.device, dtype=torch.float32)
        if off:
            gate[off] = 0.0
        return gate.requires_grad_(requires_grad)

    try:
        head_dim = adapter.head_dim(model)
        for idx, block in enumerate(blocks):
            if heads:
                n = adapter.num_heads(model, block)
                if n > 0:
                    gates.head_gates[idx] = g = make(n, plan.heads.get(idx, []) if plan else [])
                    gates._handles.append(adapter.out_proj(block).register_forward_pre_hook(_head_hook(g, head_dim)))
            if neurons:
                gates.neuron_gates[idx] = g = make(adapter.intermediate_size(block),
                                                   plan.neurons.get(idx, []) if plan else [])
                gates._handles.append(adapter.ffn_out(block).register_forward_pre_hook(_neuron_hook(g)))
            if layers:
                off = [0] if plan is not None and idx in plan.layers else []
                gates.layer_gates[idx] = g = make(1, off).squeeze(0).detach().requires_grad_(requires_grad)
                gates._handles.append(block.register_forward_hook(_layer_hook(g), with_kwargs=True))
    except Exception:
        gates.remove()
        raise
    return gates


def mask(model: nn.Module, plan: PruningPlan, compensate=None) -> Gates:
    """Zero the contributions of the plan's units through hooks; returns a handle whose `.remove()` undoes it.

    `compensate` (CNN channel plans only): calibration batches or a `hfprune.channel_compensation`; the removed
    channels' mean contribution is folded into each consumer's bias / BatchNorm running mean, exactly as
    `hfprune.prune(model, plan, compensate=...)` does, and `.remove()` restores the original tensors.

    Example:
        ```python
        >>> handle = hfprune.mask(model, plan)
        >>> logits = model(**batch).logits   # as if the units were removed
        >>> handle.remove()                  # the model is exactly as before
        ```
    """
    if plan.channels:  # CNN channel groups: their own gates, on the inputs of every consumer
        from .masking_channels import attach_channel_gates

        return attach_channel_gates(model, plan=plan, compensate=compensate)
    if compensate is not None:  # refused for a plan without channels, with the message of every compensate=
        from .compensation import resolve_compensation

        resolve_compensation(model, plan, compensate)
    return attach_gates(model, heads=bool(plan.heads), neurons=bool(plan.neurons), layers=bool(plan.layers),
                        plan=plan)


@contextmanager
def masked(model: nn.Module, plan: PruningPlan, compensate=None):
    """Context manager form of `mask`: inside the block the model behaves as if `plan` had been applied.

    Example:
        ```python
        >>> with hfprune.masked(model, hfprune.PruningPlan(heads={0: [1]})):
        ...     masked_logits = model(**batch).logits
        ```
    """
    handle = mask(model, plan, compensate=compensate)
    try:
        yield handle
    finally:
        handle.remove()
