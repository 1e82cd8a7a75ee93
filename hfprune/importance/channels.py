"""`channel_importance`: score the channels of a CNN's channel groups with a registered channel criterion."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch.channels import ChannelGroup, channel_groups


class ChannelScores(dict):
    """`{group_name: scores}` (one value per channel, higher = more important) that also remembers the groups.

    `select_channels` reads `.groups` to remove grouped-convolution channels in whole groups; a plain dict works
    too (then every channel is its own unit).

    Attributes:
        groups (`dict[str, ChannelGroup]`): the scored groups, as `hfprune.channel_groups` returned them.
        criterion (`str`): the criterion's name.
    """

    def __init__(self, scores: dict, groups: dict[str, ChannelGroup], criterion: str):
        super().__init__(scores)
        self.groups = groups
        self.criterion = criterion

    def to_dict(self) -> dict:
        """JSON-friendly form (lists of floats) with the criterion."""
        return {"criterion": self.criterion, "channels": {k: [float(x) for x in v] for k, v in self.items()}}


def _pick(groups: dict[str, ChannelGroup], which) -> dict[str, ChannelGroup]:
    prunable = {n: g for n, g in groups.items() if g.prunable}
    if which is None or which == "all":
        return prunable
    if which == "inner":
        return {n: g for n, g in prunable.items() if not g.coupled}
    if which == "coupled":
        return {n: g for n, g in prunable.items() if g.coupled}
    if isinstance(which, str) or not isinstance(which, Iterable):
        raise ValueError(f"channel_importance: groups must be 'all', 'inner', 'coupled' or a list of group names, "
                         f"got {which!r}")
    picked = {}
    for name in which:
        if name not in groups:
            raise ValueError(f"channel_importance: no channel group {name!r} (see hfprune.channel_groups(model))")
        if not groups[name].prunable:
            raise ValueError(f"channel_importance: group {name!r} is not prunable: {groups[name].reason}")
        picked[name] = groups[name]
    return picked


def channel_importance(model: nn.Module, dataloader: Iterable | None = None, *, criterion: str = "l1",
                       seed: int | None = None, groups="all", max_batches: int | None = None,
                       num_samples: int | None = None, show_progress: bool = False, **options) -> ChannelScores:
    """Score every channel of a CNN's prunable channel groups (the model is not changed).

    Criteria (the channel criteria of `hfprune.criteria`): `bn_scale` (|BatchNorm gamma|, Liu et al. 2017, Network
    Slimming), `l1` (filter L1 norm, Li et al. 2017), `magnitude` (L2 of every weight a channel owns), `taylor`
    (first-order Taylor, Molchanov et al. 2017; needs `dataloader` with labels), `random` (needs `seed`).

    Args:
        model (`PreTrainedModel`): a model of a supported CNN family.
        dataloader (`Iterable[dict]`, *optional*): batches with `pixel_values` and `labels` (data criteria only).
        criterion (`str`, defaults to `"l1"`): a channel criterion name.
        seed (`int`, *optional*): seed of `random`.
        groups (`str` or `list[str]`, defaults to `"all"`): `"all"` prunable groups, `"inner"` (free groups: a
            block's inner channels), `"coupled"` (residual-path widths) or explicit group names.
        max_batches, num_samples (`int`, *optional*): limits on the data scored.

    Returns:
        `ChannelScores`: `{group_name: Tensor[size]}`, higher = more important.

    Example:
        ```python
        >>> import hfprune
        >>> from transformers import ResNetConfig, ResNetForImageClassification
        >>> model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        ...                                                    layer_type="basic"))
        >>> scores = hfprune.channel_importance(model, criterion="bn_scale", groups="inner")
        >>> plan = hfprune.select_channels(scores, ratio=0.5, scope="global")
        >>> plan.num_channels()
        12
        ```
    """
    from ..arch import unwrap_model
    from ..criteria import check_call, get_criterion

    model = unwrap_model(model)
    found = get_criterion(criterion, "channels", caller="channel_importance")
    check_call(found, caller="channel_importance", dataloader=dataloader, seed=seed, options=options)
    picked = _pick(channel_groups(model), groups)
    kwargs = dict(options)
    if found.needs_seed:
        kwargs["seed"] = seed
    if found.needs_data:
        kwargs.update(max_batches=max_batches, num_samples=num_samples, show_progress=show_progress)
    with torch.no_grad() if not found.needs_data else torch.enable_grad():
        scores = found.fn(model, dataloader, groups=picked, **kwargs)
    return ChannelScores({n: scores[n] for n in picked}, picked, criterion)
