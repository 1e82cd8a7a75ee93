"""Routing statistics of every MoE layer, forward only and block by block (the expert criteria `reap`, `frequency`,
`router_weight` read them).

`hfprune.passes.walk_blocks` runs the calibration batches up to block 0, then visits one block at a time on the
outputs of the blocks before it, so only one block's activations are held at once. In an MoE block a forward hook on
the router sees the experts' input x, the applied top-k weights g and the chosen experts; per expert j it sums, over
the non-padding tokens routed to j, the count, g_j(x) and g_j(x) * ||E_j(x)||_2 (E_j(x) the expert's unweighted
output, one extra expert pass per routed (token, slot), in float64 so that the scores do not depend on how
the tokens are batched). The sums and the token count are added over
torch.distributed processes before any division, so several processes give what one process seeing all batches
gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import all_reduce_sum, run_block, walk_blocks


@dataclass
class RoutingStats:
    """One MoE layer's sums over the calibration tokens (float64, `[num_experts]` each)."""

    routed: torch.Tensor  # tokens routed to expert j
    gate: torch.Tensor  # sum of g_j(x) over them
    reap: torch.Tensor  # sum of g_j(x) * ||E_j(x)||_2 over them
    tokens: float  # non-padding tokens seen by the layer


def _valid_masks(batches: list[dict]) -> list[torch.Tensor | None]:
    out = []
    for batch in batches:
        mask = batch.get("attention_mask")
        out.append(mask.reshape(-1).bool() if isinstance(mask, torch.Tensor) else None)
    return out


def _accumulate(adapter, block: nn.Module, stats: RoutingStats, x: torch.Tensor, weights: torch.Tensor,
                indices: torch.Tensor, valid: torch.Tensor | None) -> None:
    if valid is None:
        valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    valid = valid.to(x.device)
    stats.tokens += float(valid.sum())
    chosen = (indices.unsqueeze(-1) == torch.arange(stats.routed.numel(), device=x.device)) & valid[:, None, None]
    for j in torch.nonzero(chosen.any(dim=(0, 1))).flatten().tolist():
        tok, slot = torch.nonzero(chosen[..., j], as_tuple=True)
        g = weights[tok, slot].double()
        norms = torch.linalg.vector_norm(adapter.expert_output(block, j, x[tok].double()), dim=-1)
        stats.routed[j] += tok.numel()
        stats.gate[j] += float(g.sum())
        stats.reap[j] += float((g * norms).sum())


def routing_stats(model: nn.Module, dataloader: Iterable, *, max_batches: int | None = None,
                  distributed: bool = True) -> dict[int, RoutingStats]:
    """`{layer: RoutingStats}` for every MoE layer of `model`, summed over processes."""
    adapter = get_adapter(model)
    batches = list(islice(dataloader, max_batches) if max_batches is not None else dataloader)
    masks = _valid_masks(batches)
    out: dict[int, RoutingStats] = {}

    def visit(index: int, block: nn.Module, inputs: list) -> None:
        if not adapter.is_moe(block):
            return
        n = adapter.num_experts(block)
        stats = RoutingStats(*(torch.zeros(n, dtype=torch.float64) for _ in range(3)), 0.0)
        current: dict = {}

        def hook(module, args, output):
            x = args[0].reshape(-1, args[0].shape[-1])
            _accumulate(adapter, block, stats, x, output[1], output[2], current["valid"])

        handle = adapter.router(block).register_forward_hook(hook)
        try:
            for valid, (args, kwargs) in zip(masks, inputs):
                current["valid"] = valid
                run_block(block, args, kwargs)
        finally:
            handle.remove()
        out[index] = stats

    walk_blocks(model, batches, visit)
    for stats in out.values():
        token_count = torch.tensor(stats.tokens, dtype=torch.float64)
        stats.routed, stats.gate, stats.reap, token_count = all_reduce_sum(
            [stats.routed, stats.gate, stats.reap, token_count], enabled=distributed)
        stats.tokens = float(token_count)
        if stats.tokens <= 0:
            raise ValueError("the batches contain no non-padding token (attention_mask sums to 0)")
    return out
