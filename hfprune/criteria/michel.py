"""Head importance of Michel et al. (2019), "Are Sixteen Heads Really Better than One?" (NeurIPS 2019).

I_h = E_x |dL(x)/dg_h|, where g_h is a gate on head h's context (all ones), estimated as the sum over batches of the
absolute gradient of each batch's loss, divided by the number of non-padding tokens, exactly as the authors' code
(`bertology.py`) does. Attention entropy per head is gathered in the same pass (their Section 6).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import BatchView, gated_passes, sum_per_token
from ..plan import PruningPlan
from . import UnitScores, register_criterion
from ._rows import layer_rows


def _entropy(attn: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`[heads]`: attention entropy summed over (non-padding) query tokens and examples."""
    p = attn.detach().float()
    plogp = p * torch.log(p)
    plogp[p == 0] = 0.0  # 0 log 0 = 0
    ent = -plogp.sum(-1)  # [batch, heads, query]
    if mask is not None:
        ent = ent * mask.to(ent.dtype).unsqueeze(1)
    return ent.sum(-1).sum(0)


def michel_head_stats(model: nn.Module, dataloader: Iterable, *, plan: PruningPlan | None = None,
                      return_entropy: bool = False, max_batches: int | None = None, num_samples: int | None = None,
                      show_progress: bool = True, distributed: bool = True):
    """Raw Michel importance per layer (and attention entropy), reduced over processes.

    Returns:
        `tuple[dict[int, Tensor], dict[int, Tensor] | None, int]`: layer -> `[num_heads]` importance, layer ->
        `[num_heads]` mean entropy (or None), and the total number of tokens.
    """
    sums: dict[int, torch.Tensor] = {}
    ent: dict[int, torch.Tensor] = {}
    num_layers = len(get_adapter(model).layers(model))

    def on_batch(view: BatchView) -> None:
        for layer, gate in view.gates.head_gates.items():
            # No gradient reaches the gates of a layer the plan masks as a whole: they score 0.
            grad = torch.zeros_like(gate) if gate.grad is None else gate.grad.detach()
            grad = grad.abs().double()
            sums[layer] = sums[layer] + grad if layer in sums else grad
        if return_entropy:
            attentions = getattr(view.outputs, "attentions", None) or ()
            mask = view.batch.get("attention_mask")
            layers = sorted(view.gates.head_gates)
            # Layers left with no head return no attention probabilities at all (the tuple is shorter, not padded
            # with None), so then the i-th entry belongs to the i-th layer that still has heads.
            position = {layer: (layer if len(attentions) == num_layers else i) for i, layer in enumerate(layers)}
            for layer in layers:
                i = position[layer]
                attn = attentions[i] if i < len(attentions) else None
                if attn is None:
                    raise ValueError(f"layer {layer} returned no attention probabilities; entropy needs them")
                value = _entropy(attn, mask).double()
                ent[layer] = ent[layer] + value if layer in ent else value

    tokens = gated_passes(model, dataloader, units="heads", on_batch=on_batch, plan=plan,
                          output_attentions=return_entropy, max_batches=max_batches, num_samples=num_samples,
                          show_progress=show_progress, desc="head importance (michel)")
    layers = sorted(sums)
    stats = [sums[i] for i in layers] + ([ent[i] for i in layers] if return_entropy else [])
    means, total = sum_per_token(stats, tokens, distributed)
    scores = dict(zip(layers, means[:len(layers)]))
    entropy = dict(zip(layers, means[len(layers):])) if return_entropy else None
    return scores, entropy, total


@register_criterion("michel", units=("heads",), order=10, needs="gradients", needs_labels=True,
                    summary="|dL/dg| of a gate on each head (Michel et al., 2019); return_entropy=True adds entropy")
def michel_heads(model: nn.Module, dataloader: Iterable, *, return_entropy: bool = False, plan=None,
                 max_batches=None, num_samples=None, show_progress=True, distributed=True, **common) -> UnitScores:
    per_layer, entropy, tokens = michel_head_stats(model, dataloader, plan=plan, return_entropy=return_entropy,
                                                   max_batches=max_batches, num_samples=num_samples,
                                                   show_progress=show_progress, distributed=distributed)
    return UnitScores(rows=layer_rows(model, per_layer, "heads"), num_tokens=tokens,
                      entropy=layer_rows(model, entropy, "heads") if return_entropy else None)
