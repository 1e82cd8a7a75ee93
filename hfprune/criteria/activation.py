"""Minitron's activation-based importance of attention heads and FFN neurons: forward passes only.

Muralidharan et al. (2024), "Compact Language Models via Pruning and Knowledge Distillation" (Minitron): every
width axis is scored from the activations of a small calibration set, without gradients or labels. A head's
activation is its slice of the attention output (the per-head context, i.e. the input of the output projection,
`[batch, seq, head_dim]`), reduced per token to its L2 norm; an FFN neuron's is its value at the input of the down
projection (for gated MLPs `act(gate) * up`), taken as |activation|. Both are then aggregated over the sequence and
over the batch. The paper writes the score as a sum over batch and sequence and reports that the choice of
aggregation matters; NVIDIA's reference implementation (Model-Optimizer's Minitron pruning) takes the mean over the
sequence and the L2 norm over the batch, which is the default here (`seq_reduce="mean"`, `batch_reduce="l2"`);
`"mean"` / `"l2"` can be chosen for each axis. Padding tokens (attention mask 0) are left out of the sequence
reduction. Statistics are sums (of squares for L2), so they are added over torch.distributed processes before the
final square root / division, and every process gets the scores of all batches.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import all_reduce_sum, forward_passes
from . import register_criterion
from ._tokens import check_reduction, reduce_tokens, token_mask


class _Aggregator:
    """Per layer: the batch-level sum (of squares for L2) of each unit's per-sequence value, and the sequence count."""

    def __init__(self, batch_reduce: str, seq_reduce: str):
        self.batch_reduce, self.seq_reduce = batch_reduce, seq_reduce
        self.sums: dict[int, torch.Tensor] = {}
        self.count = 0.0

    def add(self, layer: int, per_token: torch.Tensor, keep: torch.Tensor) -> None:
        """`per_token`: `[batch, seq, units]` non-negative values; `keep`: `[batch, seq]` bool."""
        per_seq, valid = reduce_tokens(per_token, keep.to(per_token.device), self.seq_reduce)
        per_seq = per_seq[valid]
        term = (per_seq.pow(2) if self.batch_reduce == "l2" else per_seq).sum(0).cpu()
        self.sums[layer] = self.sums[layer] + term if layer in self.sums else term

    def finish(self, layers: list[int], distributed: bool) -> dict[int, torch.Tensor]:
        reduced = all_reduce_sum([*(self.sums[i] for i in layers), torch.tensor(self.count, dtype=torch.float64)],
                                 enabled=distributed)
        count = float(reduced[-1])
        if count <= 0:
            raise ValueError("the batches contain no non-padding token (attention_mask sums to 0)")
        out = {}
        for layer, total in zip(layers, reduced[:-1]):
            out[layer] = (total.sqrt() if self.batch_reduce == "l2" else total / count).float()
        return out


def _score(model: nn.Module, dataloader: Iterable, units: str, batch_reduce: str, seq_reduce: str,
           distributed: bool, plan, **limits) -> list[torch.Tensor]:
    check_reduction("batch_reduce", batch_reduce)
    check_reduction("seq_reduce", seq_reduce)
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    head_dim = adapter.head_dim(model)
    agg = _Aggregator(batch_reduce, seq_reduce)
    state: dict = {}
    skipped = set(plan.layers) if plan is not None else set()
    # Layers without units (all heads / neurons removed) or masked whole score zeros.
    scored = [i for i, b in enumerate(blocks) if i not in skipped
              and (adapter.num_heads(model, b) if units == "heads" else adapter.intermediate_size(b)) > 0]

    def hook_for(layer: int):
        def hook(module, args):
            x = args[0].detach()
            keep = token_mask(state["batch"], x.shape[:2]) if x.dim() == 3 else None
            if x.dim() == 2:  # [tokens, features] (no sequence axis): one "sequence" per token
                x, keep = x.unsqueeze(1), torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
            values = x.float().unflatten(-1, (-1, head_dim)).norm(dim=-1) if units == "heads" else x.float().abs()
            agg.add(layer, values, keep)
        return hook

    def attach() -> list:
        module_of = adapter.out_proj if units == "heads" else adapter.ffn_out
        return [module_of(blocks[i]).register_forward_pre_hook(hook_for(i)) for i in scored]

    def on_batch(batch: dict) -> None:
        state["batch"] = batch
        ids = batch.get("input_ids")
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            agg.count += float((mask.sum(1) > 0).sum())
        elif isinstance(ids, torch.Tensor):
            agg.count += float(ids.shape[0])
        else:
            agg.count += float(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])

    forward_passes(model, dataloader, attach=attach, on_batch=on_batch, plan=plan,
                   desc=f"{units} importance (activation)", **limits)
    if not scored:
        per_layer = {}
    else:
        missing = [i for i in scored if i not in agg.sums]
        if missing:
            raise RuntimeError(f"activation importance: no activation reached layers {missing} (does the forward "
                               "pass reach the projections the adapter names?)")
        per_layer = agg.finish(scored, distributed)
    sizes = [adapter.num_heads(model, b) if units == "heads" else adapter.intermediate_size(b) for b in blocks]
    return [per_layer.get(i, torch.zeros(n)) for i, n in enumerate(sizes)]


@register_criterion("activation", units=("heads",), order=50, needs="forward",
                    summary="L2 norm of each head's attention output, forward only (Minitron, Muralidharan 2024)")
def activation_heads(model: nn.Module, dataloader: Iterable = None, *, batch_reduce: str = "l2",
                     seq_reduce: str = "mean", plan=None, max_batches=None, num_samples=None, show_progress=True,
                     distributed=True, **common) -> list[torch.Tensor]:
    """Minitron head importance: per token the L2 norm of the head's context, reduced over sequence and batch.

    Args:
        batch_reduce (`str`, defaults to `"l2"`): "l2" or "mean" over the sequences of the calibration set.
        seq_reduce (`str`, defaults to `"mean"`): "mean" or "l2" over the non-padding tokens of each sequence.

    Returns:
        `list[torch.Tensor]`: per layer, `[num_heads]` float32 scores (higher = more important).
    """
    return _score(model, dataloader, "heads", batch_reduce, seq_reduce, distributed, plan,
                  max_batches=max_batches, num_samples=num_samples, show_progress=show_progress)


@register_criterion("activation", units=("neurons",), order=50, needs="forward",
                    summary="|activation| at the down-projection input, forward only (Minitron, Muralidharan 2024)")
def activation_neurons(model: nn.Module, dataloader: Iterable = None, *, batch_reduce: str = "l2",
                       seq_reduce: str = "mean", plan=None, max_batches=None, num_samples=None, show_progress=True,
                       distributed=True, **common) -> list[torch.Tensor]:
    """Minitron neuron importance: |activation| at the down-projection input, reduced over sequence and batch.

    Args:
        batch_reduce (`str`, defaults to `"l2"`): "l2" or "mean" over the sequences.
        seq_reduce (`str`, defaults to `"mean"`): "mean" or "l2" over the non-padding tokens of each sequence.

    Returns:
        `list[torch.Tensor]`: per layer, `[intermediate_size]` float32 scores.
    """
    return _score(model, dataloader, "neurons", batch_reduce, seq_reduce, distributed, plan,
                  max_batches=max_batches, num_samples=num_samples, show_progress=show_progress)
