"""The public scorers: one entry point per unit kind (heads, FFN neurons, CNN channels), each dispatching through the
criterion registry (`hfprune.criteria`) for its kind."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import check_not_offloaded, unwrap_model
from ..arch.channels import ChannelGroup, channel_groups
from ..checks import expect, expect_model
from ..criteria import UnitScores, check_call, criterion_names, get_criterion
from ..plan import PruningPlan, expect_plan
from ..structure import model_structure
from .common import ImportanceResult, carry_structure, normalize_heads, pad_rows


def __getattr__(name: str):
    # Computed on access (not at import) so that they always list what the registry holds, new criteria included,
    # and importing this module does not import every criterion module.
    if name == "HEAD_CRITERIA":
        return criterion_names("heads")
    if name == "NEURON_CRITERIA":
        return criterion_names("neurons")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def score_units(unit: str, caller: str, model: nn.Module, dataloader: Iterable | None, criterion: str, *,
                seed: int | None, options: dict, **common):
    """Look `criterion` up for the unit kind `unit`, check the call against its flags, run it: the dispatch of every
    scorer (heads, neurons, channels). Returns what the criterion returns.

    A model wrapped by DDP / `accelerate` / `torch.compile` is scored through the model inside it. Not through the
    wrapper: DDP's forward is a collective (it broadcasts buffers, and prepares a gradient all-reduce for the next
    backward), so processes holding unequal numbers of batches would hang in it, and its all-reduce hooks have
    nothing to do here (parameters are frozen while scoring; only the gates get gradients). hfprune sums its own
    statistics over processes, once, at the end (`common.sum_per_token`). A criterion without data runs without
    autograd.
    """
    check_scorer_args(caller, model, dataloader, criterion, common.get("plan"))
    found = get_criterion(criterion, unit, caller=caller)
    check_call(found, caller=caller, dataloader=dataloader, seed=seed, options=options)
    check_not_offloaded(unwrap_model(model), caller)
    with torch.enable_grad() if found.needs_data else torch.no_grad():
        return found.fn(unwrap_model(model), dataloader, seed=seed, **common, **options)


def check_scorer_args(caller: str, model, dataloader, criterion, plan=None) -> None:
    """The argument types every scorer shares (`TypeError` naming the argument and what it expects)."""
    expect_model(caller, model)
    if dataloader is not None and (isinstance(dataloader, (str, bytes)) or not isinstance(dataloader, Iterable)):
        expect(caller, "dataloader", dataloader, (), "a DataLoader or an iterable of batch dicts")
    expect(caller, "criterion", criterion, str, "a criterion name (str)")
    if plan is not None:
        expect_plan(caller, plan)


def _unit_scores(result) -> UnitScores:
    return result if isinstance(result, UnitScores) else UnitScores(rows=list(result))


def head_importance(model: nn.Module, dataloader: Iterable | None = None, *, criterion: str = "michel",
                    normalize_layers: bool = True, normalize_global: bool = True, max_batches: int | None = None,
                    num_samples: int | None = None, show_progress: bool = True, return_entropy: bool = False,
                    seed: int | None = None, plan: PruningPlan | None = None, distributed: bool = True,
                    **options) -> torch.Tensor | ImportanceResult:
    """Score every attention head of `model`.

    Michel et al. (2019), "Are Sixteen Heads Really Better than One?": the raw score of head h is the sum over
    batches of |dL_batch/dg_h| (g_h: a gate on the head's context, the model's own `outputs.loss`) divided by the
    number of non-padding tokens (`attention_mask.sum()`; without a mask, e.g. ViT: examples x sequence length).
    Then, as in the authors' code, each layer is divided by its L2 norm and the whole matrix is min-max scaled to
    [0, 1]; neither changes the ranking within a layer. Other criteria: "taylor" (Molchanov et al., 2017),
    "fisher" (squared gate gradients, Kwon et al., 2022), "magnitude" (L1 of the head's weights, Li et al., 2017)
    and "random" (a baseline; needs `seed`, no data); every name registered for "heads" in `hfprune.criteria`
    (`hfprune.criteria.criterion_names("heads")`) is accepted.

    The model runs in eval mode with its parameters frozen (gradients reach only the gates), one forward + backward
    per batch; weights, `requires_grad`, `.grad` and training mode are as before on return, also after an error.
    Under torch.distributed the sums and token counts are added over processes before dividing, so every process
    returns the same scores, equal to one process scoring all their batches.

    Args:
        model (`PreTrainedModel`): a model of a supported family (possibly already pruned).
        dataloader (`DataLoader` or iterable of dicts, *optional*): batches with `labels`; not needed for
            "magnitude" and "random".
        criterion (`str`, defaults to `"michel"`): a head criterion: "michel", "taylor", "magnitude", "fisher",
            "random", or any other registered for "heads".
        normalize_layers (`bool`, defaults to `True`): divide each layer's scores by their L2 norm.
        normalize_global (`bool`, defaults to `True`): min-max scale all scores to [0, 1].
        max_batches (`int`, *optional*): stop after this many batches.
        num_samples (`int`, *optional*): stop after this many examples (the last batch is cut).
        show_progress (`bool`, defaults to `True`): tqdm progress bar (main process only).
        return_entropy (`bool`, defaults to `False`): "michel" only: also return the mean attention entropy per
            head (switches to eager attention for the pass, the only kind that returns attention probabilities).
        seed (`int`, *optional*): seed of the "random" criterion.
        plan (`PruningPlan`, *optional*): score under this mask (its heads' gates are 0, its neurons and layers
            masked too), as in iterative pruning.
        distributed (`bool`, defaults to `True`): reduce over processes when torch.distributed is initialised.
        options: options of the chosen criterion (the named keyword parameters of its function); one it does not
            read is refused.

    Returns:
        `torch.Tensor` `[num_layers, max_heads]` (float32, CPU; NaN where a layer has fewer heads), or an
        `ImportanceResult(scores, entropy, num_tokens)` when `return_entropy=True`.

    Example:
        ```python
        >>> scores = hfprune.head_importance(model, dataloader, max_batches=20)
        >>> plan = hfprune.select_heads(scores, ratio=0.5)
        >>> hfprune.prune(model, plan)
        ```
    """
    if return_entropy:
        options = {"return_entropy": True, **options}
    result = _unit_scores(score_units("heads", "head_importance", model, dataloader, criterion, seed=seed,
                                      options=options, plan=plan, max_batches=max_batches, num_samples=num_samples,
                                      show_progress=show_progress, distributed=distributed))
    scores = normalize_heads(pad_rows(result.rows), by_layer=normalize_layers, by_global=normalize_global)
    structure = model_structure(model)
    if return_entropy:
        return ImportanceResult(scores=carry_structure(scores, structure), entropy=pad_rows(result.entropy),
                                num_tokens=result.num_tokens, structure=structure)
    return carry_structure(scores, structure)


def neuron_importance(model: nn.Module, dataloader: Iterable | None = None, *, criterion: str = "taylor",
                      max_batches: int | None = None, num_samples: int | None = None, show_progress: bool = True,
                      normalize_layers: bool = False, seed: int | None = None, plan: PruningPlan | None = None,
                      distributed: bool = True, **options) -> list[torch.Tensor]:
    """Score every FFN neuron (intermediate channel) of `model`, one vector per layer.

    Criteria: "taylor" (Molchanov et al., 2017: |sum over tokens of activation x gradient| at the down-projection
    input, per example), "fisher" (the squared per-example gate gradient; Kwon et al., 2022), "magnitude" (L1 of
    the neuron's weights; Li et al., 2017) and "random" (needs `seed`). Data criteria cost one forward + backward
    per batch and leave the model as it was (see `head_importance`); statistics are summed over processes under
    torch.distributed.

    Args:
        model (`PreTrainedModel`): a model of a supported family (possibly already pruned).
        dataloader (`DataLoader` or iterable of dicts, *optional*): batches with `labels` ("taylor", "fisher").
        criterion (`str`, defaults to `"taylor"`): "taylor", "magnitude", "fisher", "random", or any other
            registered for "neurons" (`hfprune.criteria.criterion_names("neurons")`).
        max_batches (`int`, *optional*): stop after this many batches.
        num_samples (`int`, *optional*): stop after this many examples.
        show_progress (`bool`, defaults to `True`): tqdm progress bar (main process only).
        normalize_layers (`bool`, defaults to `False`): divide each layer's scores by their L2 norm (makes a global
            selection compare layers by their relative, not absolute, scores).
        seed (`int`, *optional*): seed of the "random" criterion.
        plan (`PruningPlan`, *optional*): score under this mask (heads, neurons and layers).
        distributed (`bool`, defaults to `True`): reduce over processes when torch.distributed is initialised.
        options: options of the chosen criterion (see `head_importance`).

    Returns:
        `list[torch.Tensor]`: per layer, a float32 CPU vector of length `intermediate_size` of that layer.

    Example:
        ```python
        >>> scores = hfprune.neuron_importance(model, dataloader, criterion="taylor", max_batches=20)
        >>> plan = hfprune.select_neurons(scores, ratio=0.3, round_to=8)
        ```
    """
    result = _unit_scores(score_units("neurons", "neuron_importance", model, dataloader, criterion, seed=seed,
                                      options=options, plan=plan, max_batches=max_batches, num_samples=num_samples,
                                      show_progress=show_progress, distributed=distributed))
    rows = result.rows
    rows = [r.detach().to("cpu", torch.float32) for r in rows]
    if normalize_layers:
        rows = [r / (r.pow(2).sum().sqrt() + 1e-20) for r in rows]
    return carry_structure(rows, model_structure(model))


class ChannelScores(dict):
    """`{group_name: scores}` (one value per channel, higher = more important) that also remembers the groups.

    `select_channels` reads `.groups` to remove grouped-convolution channels in whole groups; a plain dict works
    too (then every channel is its own unit).

    Attributes:
        groups (`dict[str, ChannelGroup]`): the scored groups, as `hfprune.channel_groups` returned them.
        criterion (`str`): the criterion's name.
        structure (`dict`, *optional*): `hfprune.model_structure` of the scored model (copied into the plan).
    """

    def __init__(self, scores: dict, groups: dict[str, ChannelGroup], criterion: str, structure: dict | None = None):
        super().__init__(scores)
        self.groups = groups
        self.criterion = criterion
        self.structure = structure

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
    check_scorer_args("channel_importance", model, dataloader, criterion)
    picked = _pick(channel_groups(model), groups)
    scores = score_units("channels", "channel_importance", model, dataloader, criterion, seed=seed, options=options,
                         groups=picked, max_batches=max_batches, num_samples=num_samples, show_progress=show_progress)
    return ChannelScores({n: scores[n] for n in picked}, picked, criterion, model_structure(model))
