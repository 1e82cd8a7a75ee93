"""Mask search under a cost budget: how many heads and neurons to keep, and which ones, from the diagonal Fisher.

Kwon et al. (2022), Section 4.2 (Algorithm 1): with the loss increase of a mask estimated by the summed Fisher
of the removed units, the best mask under a linear cost constraint is found by trying every number of kept heads:
the heads kept are the globally most important ones, and the remaining budget is filled with the most important
neurons. The candidate whose kept units carry the most Fisher information wins.

hfprune keeps at least one head and one neuron in every layer (the most important of each), so no layer loses a
whole sub-layer here; a budget that cannot hold that minimum is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .costs import UnitCosts


@dataclass
class SearchResult:
    """Kept units per layer (sorted indices) and the estimated cost of that mask."""

    heads: list[list[int]]
    neurons: list[list[int]]
    estimated_cost: float


def minimum_cost(costs: UnitCosts, num_heads: list[int], num_neurons: list[int]) -> float:
    """The cost of the smallest allowed model: one head and one neuron per layer (where a layer has them)."""
    removable = sum(h * c for h, c in zip(num_heads, costs.head)) + sum(n * c for n, c in zip(num_neurons,
                                                                                             costs.neuron))
    kept = sum(c for h, c in zip(num_heads, costs.head) if h) + sum(c for n, c in zip(num_neurons, costs.neuron)
                                                                    if n)
    return costs.dense - removable + kept


def search_mask(head_fisher: list[torch.Tensor], neuron_fisher: list[torch.Tensor], costs: UnitCosts,
                budget: float) -> SearchResult:
    """The mask of highest kept Fisher information whose estimated cost is at most `budget` (absolute units).

    Args:
        head_fisher, neuron_fisher (`list[torch.Tensor]`): per layer, the diagonal Fisher of each unit.
        costs (`UnitCosts`): cost of one head / neuron per layer and the dense total.
        budget (`float`): the allowed total cost, in the metric of `costs`.

    Raises:
        ValueError: the budget is below the cost of one head and one neuron per layer.
    """
    num_heads = [int(f.numel()) for f in head_fisher]
    num_neurons = [int(f.numel()) for f in neuron_fisher]
    floor = minimum_cost(costs, num_heads, num_neurons)
    if budget < floor:
        raise ValueError(
            f"prune_to_budget: a {costs.metric} budget of {budget / costs.dense:.4f} of the dense model cannot be met "
            f"with at least one head and one FFN neuron per layer (that minimum is {floor / costs.dense:.4f})"
        )
    # Mandatory units: the best head and neuron of each layer.
    kept_heads = [[int(f.argmax())] if f.numel() else [] for f in head_fisher]
    kept_neurons = [[int(f.argmax())] if f.numel() else [] for f in neuron_fisher]
    spare = budget - floor
    head_pool = _pool(head_fisher, costs.head, kept_heads)
    neuron_pool = _pool(neuron_fisher, costs.neuron, kept_neurons)
    # Cumulative Fisher and cost of the best k heads / neurons (k = 0 .. pool size).
    h_info, h_cost = _cumulative(head_pool)
    n_info, n_cost = _cumulative(neuron_pool)
    fits = h_cost <= spare + 1e-9 * max(1.0, abs(spare))
    ks = torch.nonzero(fits).flatten()
    left = spare - h_cost[ks]
    # Most neurons that fit in what the k heads leave (n_cost is non-decreasing).
    ns = torch.searchsorted(n_cost, left + 1e-9 * max(1.0, abs(spare)), right=True) - 1
    total = h_info[ks] + n_info[ns]
    best = int(torch.argmax(total))
    k, n = int(ks[best]), int(ns[best])
    for layer, index, _ in head_pool[2][:k]:
        kept_heads[layer].append(index)
    for layer, index, _ in neuron_pool[2][:n]:
        kept_neurons[layer].append(index)
    estimate = floor + float(h_cost[k]) + float(n_cost[n])
    return SearchResult([sorted(h) for h in kept_heads], [sorted(n) for n in kept_neurons], estimate)


def _pool(fisher: list[torch.Tensor], cost: list[float], mandatory: list[list[int]]):
    """The optional units, most important first: (fisher, cost, [(layer, index, cost)])."""
    entries = []
    for layer, f in enumerate(fisher):
        for index, value in enumerate(f.tolist()):
            if index not in mandatory[layer]:
                entries.append((value, layer, index, cost[layer]))
    entries.sort(key=lambda e: (-e[0], e[1], e[2]))  # ties broken by position: the same plan on every process
    info = torch.tensor([e[0] for e in entries], dtype=torch.float64)
    costs = torch.tensor([e[3] for e in entries], dtype=torch.float64)
    return info, costs, [(e[1], e[2], e[3]) for e in entries]


def _cumulative(pool) -> tuple[torch.Tensor, torch.Tensor]:
    info, costs, _ = pool
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, info.cumsum(0)]), torch.cat([zero, costs.cumsum(0)])
