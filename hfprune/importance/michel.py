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
from ..plan import PruningPlan
from .common import all_reduce_sum
from .gradients import BatchView, gated_passes


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
    if not layers:  # every layer is headless: nothing to score (the same on every process)
        return {}, ({} if return_entropy else None), tokens
    device = sums[layers[0]].device
    stats = [sums[i] for i in layers] + ([ent[i] for i in layers] if return_entropy else [])
    reduced = all_reduce_sum([*stats, torch.tensor(float(tokens), dtype=torch.float64, device=device)],
                             enabled=distributed)
    total = float(reduced[-1])
    if total <= 0:
        raise ValueError("the batches contain no non-padding token (attention_mask sums to 0)")
    scores = {layer: reduced[i] / total for i, layer in enumerate(layers)}
    entropy = None
    if return_entropy:
        entropy = {layer: reduced[len(layers) + i] / total for i, layer in enumerate(layers)}
    return scores, entropy, round(total)
