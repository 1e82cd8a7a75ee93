"""Mask rearrangement within each layer with the block-diagonal Fisher.

Kwon et al. (2022), Section 4.3 (Algorithm 2): the diagonal Fisher ignores that removing two units together can cost
more (or less) than the sum of removing each. Within one layer, with g_b the per-batch mask gradient of batch b, the
loss increase of removing the set S is estimated by sum_b (sum_{i in S} g_b,i)^2, i.e. 1_S^T F 1_S with the layer's
full Fisher block F. Keeping the number of removed units of the layer fixed (the search chose it), a greedy pass
starts from the units with the smallest diagonal Fisher and, for each other unit in increasing order, tries adding
it to S and drops whichever member of S leaves the smallest estimate.
"""

from __future__ import annotations

import torch


def rearrange_layer(kept: list[int], grads: torch.Tensor) -> list[int]:
    """Re-choose which units of one layer are kept, keeping their number.

    Args:
        kept (`list[int]`): the units the search kept.
        grads (`torch.Tensor`): `[num_batches, units]` per-batch mask gradients of this layer.

    Returns:
        `list[int]`: the kept units after rearrangement (sorted, same length as `kept`).
    """
    units = int(grads.shape[1])
    num_removed = units - len(kept)
    if num_removed == 0 or not kept:
        return sorted(kept)
    vectors = grads.t().double()  # [units, batches]
    order = torch.argsort(vectors.pow(2).sum(1), stable=True).tolist()
    removed = order[:num_removed]
    total = vectors[removed].sum(0)
    for candidate in order[num_removed:]:
        members = removed + [candidate]
        total = total + vectors[candidate]
        # ||total - g_i||^2 for every member i: the estimate if i were put back.
        rest = total.unsqueeze(0) - vectors[members]
        drop = int(torch.argmin(rest.pow(2).sum(1)))
        total = rest[drop]
        del members[drop]
        removed = members
    gone = set(removed)
    return [u for u in range(units) if u not in gone]


def rearrange(kept: list[list[int]], grads: list[torch.Tensor]) -> list[list[int]]:
    """`rearrange_layer` for every layer."""
    return [rearrange_layer(k, g) for k, g in zip(kept, grads)]
