"""The public scorers for heads and FFN neurons: one entry point per unit kind, dispatching on the criterion."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..plan import PruningPlan
from .common import ImportanceResult, check_model, normalize_heads, pad_rows
from .fisher import fisher_stats
from .magnitude import magnitude_head_scores, magnitude_neuron_scores
from .michel import michel_head_stats
from .taylor import taylor_stats

HEAD_CRITERIA = ("michel", "taylor", "magnitude", "fisher", "random")
NEURON_CRITERIA = ("taylor", "magnitude", "fisher", "random")


def _random(sizes: list[int], seed: int | None) -> list[torch.Tensor]:
    if seed is None:
        raise ValueError("criterion='random' needs a seed, e.g. seed=0, so that the baseline is reproducible")
    generator = torch.Generator().manual_seed(int(seed))
    return [torch.rand(n, generator=generator) for n in sizes]


def check_options(fn, options: dict, where: str) -> None:
    """Refuse an option the criterion function does not name (its `**common` would swallow a typo silently)."""
    import inspect

    named = {p.name for p in inspect.signature(fn).parameters.values()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(options) - named)
    if unknown:
        raise ValueError(f"{where} has no option {unknown}")


def _registered(unit: str, criterion: str, caller: str, model: nn.Module, dataloader, options: dict,
                **common) -> list[torch.Tensor]:
    """Run a criterion that lives only in the registry (`hfprune/criteria/`), e.g. "activation"."""
    from ..criteria import criterion_names, get_criterion

    builtin = HEAD_CRITERIA if unit == "heads" else NEURON_CRITERIA
    if criterion not in criterion_names(unit):
        raise ValueError(f"{caller}: criterion must be one of {builtin + criterion_names(unit)}, got {criterion!r}")
    found = get_criterion(criterion, unit, caller=caller)
    check_options(found.fn, options, f"{caller}: criterion={criterion!r}")
    if found.needs_data and dataloader is None:
        raise ValueError(f"{caller}: criterion={criterion!r} needs data: pass a DataLoader or a list of batch dicts")
    rows = found.fn(model, dataloader, **common, **options)
    return [torch.as_tensor(r).detach().to("cpu", torch.float32) for r in rows]


def _rows(model: nn.Module, per_layer: dict[int, torch.Tensor], size_of) -> list[torch.Tensor]:
    """One vector per layer, in layer order (a layer without units gets an empty vector)."""
    blocks = get_adapter(model).layers(model)
    rows = []
    for idx, block in enumerate(blocks):
        row = per_layer.get(idx)
        rows.append(row if row is not None else torch.zeros(size_of(block)))
    return rows


def head_importance(model: nn.Module, dataloader: Iterable | None = None, *, criterion: str = "michel",
                    normalize_layers: bool = True, normalize_global: bool = True, max_batches: int | None = None,
                    num_samples: int | None = None, show_progress: bool = True, return_entropy: bool = False,
                    seed: int | None = None, plan: PruningPlan | None = None,
                    distributed: bool = True, **options) -> torch.Tensor | ImportanceResult:
    """Score every attention head of `model`.

    Michel et al. (2019), "Are Sixteen Heads Really Better than One?": the raw score of head h is the sum over
    batches of |dL_batch/dg_h| (g_h: a gate on the head's context, the model's own `outputs.loss`) divided by the
    number of non-padding tokens (`attention_mask.sum()`; without a mask, e.g. ViT: examples x sequence length).
    Then, as in the authors' code, each layer is divided by its L2 norm and the whole matrix is min-max scaled to
    [0, 1]; neither changes the ranking within a layer. Other criteria: "taylor" (Molchanov et al., 2017),
    "fisher" (squared gate gradients, Kwon et al., 2022), "magnitude" (L1 of the head's weights, Li et al., 2017)
    and "random" (a baseline; needs `seed`, no data).

    The model runs in eval mode with its parameters frozen (gradients reach only the gates), one forward + backward
    per batch; weights, `requires_grad`, `.grad` and training mode are as before on return, also after an error.
    Under torch.distributed the sums and token counts are added over processes before dividing, so every process
    returns the same scores, equal to one process scoring all their batches.

    Args:
        model (`PreTrainedModel`): a model of a supported family (possibly already pruned).
        dataloader (`DataLoader` or iterable of dicts, *optional*): batches with `labels`; not needed for
            "magnitude" and "random".
        criterion (`str`, defaults to `"michel"`): one of "michel", "taylor", "magnitude", "fisher", "random", or
            a criterion of the registry, e.g. "activation" (Minitron: forward activations only, no labels).
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
        options: options of a registry criterion (e.g. `batch_reduce="mean"` for "activation").

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
    if criterion not in HEAD_CRITERIA:
        if return_entropy:
            raise ValueError("head_importance: return_entropy=True is only available with criterion='michel'")
        rows = _registered("heads", criterion, "head_importance", model, dataloader, options, plan=plan,
                           max_batches=max_batches, num_samples=num_samples, show_progress=show_progress,
                           distributed=distributed, seed=seed)
        return normalize_heads(pad_rows(rows), by_layer=normalize_layers, by_global=normalize_global)
    if options:
        raise ValueError(f"head_importance: {sorted(options)} are not options of criterion={criterion!r}")
    if return_entropy and criterion != "michel":
        raise ValueError("head_importance: return_entropy=True is only available with criterion='michel'")
    adapter = get_adapter(model)
    sizes = [adapter.num_heads(model, block) for block in adapter.layers(model)]
    entropy, tokens = None, 0
    data_kwargs = {"plan": plan, "max_batches": max_batches, "num_samples": num_samples, "show_progress": show_progress,
                       "distributed": distributed}
    if criterion == "random":
        rows = _random(sizes, seed)
    elif criterion == "magnitude":
        check_model(model, needs_grad=False)
        rows = _rows(model, magnitude_head_scores(model), lambda b: adapter.num_heads(model, b))
    elif criterion == "michel":
        per_layer, ent, tokens = michel_head_stats(model, dataloader, return_entropy=return_entropy, **data_kwargs)
        rows = _rows(model, per_layer, lambda b: adapter.num_heads(model, b))
        if return_entropy:
            entropy = pad_rows(_rows(model, ent, lambda b: adapter.num_heads(model, b)))
    else:
        stats = taylor_stats if criterion == "taylor" else fisher_stats
        per_layer, tokens = stats(model, dataloader, units="heads", **data_kwargs)
        rows = _rows(model, per_layer, lambda b: adapter.num_heads(model, b))
    scores = normalize_heads(pad_rows(rows), by_layer=normalize_layers, by_global=normalize_global)
    if return_entropy:
        return ImportanceResult(scores=scores, entropy=entropy, num_tokens=tokens)
    return scores


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
        criterion (`str`, defaults to `"taylor"`): one of "taylor", "magnitude", "fisher", "random", or a
            criterion of the registry, e.g. "activation" (Minitron: mean |activation| at the down-projection input).
        max_batches (`int`, *optional*): stop after this many batches.
        num_samples (`int`, *optional*): stop after this many examples.
        show_progress (`bool`, defaults to `True`): tqdm progress bar (main process only).
        normalize_layers (`bool`, defaults to `False`): divide each layer's scores by their L2 norm (makes a global
            selection compare layers by their relative, not absolute, scores).
        seed (`int`, *optional*): seed of the "random" criterion.
        plan (`PruningPlan`, *optional*): score under this mask (heads, neurons and layers).
        distributed (`bool`, defaults to `True`): reduce over processes when torch.distributed is initialised.
        options: options of a registry criterion (e.g. `seq_reduce="l2"` for "activation").

    Returns:
        `list[torch.Tensor]`: per layer, a float32 CPU vector of length `intermediate_size` of that layer.

    Example:
        ```python
        >>> scores = hfprune.neuron_importance(model, dataloader, criterion="taylor", max_batches=20)
        >>> plan = hfprune.select_neurons(scores, ratio=0.3, round_to=8)
        ```
    """
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    if criterion not in NEURON_CRITERIA:
        rows = _registered("neurons", criterion, "neuron_importance", model, dataloader, options, plan=plan,
                           max_batches=max_batches, num_samples=num_samples, show_progress=show_progress,
                           distributed=distributed, seed=seed)
    elif options:
        raise ValueError(f"neuron_importance: {sorted(options)} are not options of criterion={criterion!r}")
    elif criterion == "random":
        rows = _random([adapter.intermediate_size(b) for b in blocks], seed)
    elif criterion == "magnitude":
        check_model(model, needs_grad=False)
        rows = _rows(model, magnitude_neuron_scores(model), adapter.intermediate_size)
    else:
        stats = taylor_stats if criterion == "taylor" else fisher_stats
        per_layer, _ = stats(model, dataloader, units="neurons", plan=plan, max_batches=max_batches,
                             num_samples=num_samples, show_progress=show_progress, distributed=distributed)
        rows = _rows(model, per_layer, adapter.intermediate_size)
    rows = [r.detach().to("cpu", torch.float32) for r in rows]
    if normalize_layers:
        rows = [r / (r.pow(2).sum().sqrt() + 1e-20) for r in rows]
    return rows
