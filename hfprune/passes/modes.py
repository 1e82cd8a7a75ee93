"""The modes a pass runs the model in: eval with frozen parameters (restored on exit), and eager attention.

Every pass follows the same contract: eval mode (dropout off), no weight changes, parameters frozen while it runs
(so no `.grad` is ever written on them), and `requires_grad` flags, gradients and per-module training flags
restored on exit, also when a batch raises.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def scoring_mode(model: nn.Module):
    """Eval mode with every parameter frozen; restores training flags, `requires_grad` and `.grad` on exit.

    Freezing the parameters means backward only reaches the gates: cheaper, and no gradient lands on a weight.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for module, training in modes:
            module.training = training


@contextmanager
def eager_attention(model: nn.Module, enabled: bool):
    """Temporarily switch to eager attention, the only implementation that returns attention probabilities."""
    current = getattr(model.config, "_attn_implementation", None)
    switch = enabled and current not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(current)
