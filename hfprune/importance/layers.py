"""Layer importance: how much the loss (or a metric) suffers when a whole block is skipped.

"ablation" follows the LayerDrop view of Fan et al. (2020), "Reducing Transformer Depth on Demand with Structured
Dropout" (ICLR 2020): skip one block at a time (the residual stream passes through it) and measure the increase of
the token-weighted mean loss: one forward per layer per batch, under `torch.no_grad`. "gate" is its first-order
estimate in one forward + backward per batch: |dL/dg_l| for a gate g_l that blends the block's output with its
input, summed over batches and divided by the number of non-padding tokens, like Michel et al.'s head importance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..masking import attach_gates
from .common import TokenCounter, all_reduce_sum, check_model, iter_batches, model_loss, scoring_mode
from .gradients import BatchView, gated_passes

_METHODS = ("ablation", "gate")


def _ablation(model: nn.Module, dataloader: Iterable, metric_fn: Callable | None, distributed: bool,
              **limits) -> torch.Tensor:
    device = check_model(model, needs_grad=False)
    adapter = get_adapter(model)
    n_layers = len(adapter.layers(model))
    # Slot 0 is the full model, slot l + 1 the model without block l; each holds a weighted sum and its weight.
    sums = torch.zeros(n_layers + 1, dtype=torch.float64)
    weight = 0.0
    with scoring_mode(model), torch.no_grad():
        gates = attach_gates(model, layers=True)
        counter = TokenCounter(model, adapter)
        try:
            for index, batch in enumerate(iter_batches(dataloader, device, need_labels=metric_fn is None,
                                                       desc="layer importance (ablation)", **limits)):
                tokens = None
                for slot in range(n_layers + 1):
                    if slot:
                        gates.layer_gates[slot - 1].fill_(0.0)
                    try:
                        outputs = model(**batch)
                        if tokens is None:
                            tokens = counter.count(batch)
                        if metric_fn is None:
                            sums[slot] += float(model_loss(outputs, index)) * tokens
                        else:
                            sums[slot] += float(metric_fn(outputs, batch)) * tokens
                    finally:
                        if slot:
                            gates.layer_gates[slot - 1].fill_(1.0)
                weight += tokens
        finally:
            counter.remove()
            gates.remove()
    sums, total = all_reduce_sum([sums, torch.tensor(weight, dtype=torch.float64)], enabled=distributed)
    if float(total) <= 0:
        raise ValueError("the batches contain no non-padding token (attention_mask sums to 0)")
    mean = sums / total
    change = mean[1:] - mean[0]
    # A metric (higher is better) drops when an important layer goes; the loss rises.
    return (change if metric_fn is None else -change).float()


def _gate(model: nn.Module, dataloader: Iterable, distributed: bool, **limits) -> torch.Tensor:
    sums: dict[int, torch.Tensor] = {}

    def on_batch(view: BatchView) -> None:
        for layer, gate in view.gates.layer_gates.items():
            grad = gate.grad.detach().abs().double().reshape(1)
            sums[layer] = sums[layer] + grad if layer in sums else grad

    tokens = gated_passes(model, dataloader, units="layers", on_batch=on_batch, desc="layer importance (gate)",
                          **limits)
    layers = sorted(sums)
    reduced = all_reduce_sum([*(sums[i] for i in layers), torch.tensor(float(tokens), dtype=torch.float64)],
                             enabled=distributed)
    total = float(reduced[-1])
    if total <= 0:
        raise ValueError("the batches contain no non-padding token (attention_mask sums to 0)")
    return torch.cat([r / total for r in reduced[:-1]]).float()


def layer_importance(model: nn.Module, dataloader: Iterable, *, method: str = "ablation",
                     max_batches: int | None = None, num_samples: int | None = None, show_progress: bool = True,
                     metric_fn: Callable | None = None, distributed: bool = True, plan=None,
                     **options) -> torch.Tensor:
    """Score every block of `model`; higher means more important.

    Fan et al. (2020), "Reducing Transformer Depth on Demand with Structured Dropout" (skipping blocks); the "gate"
    variant is the first-order estimate of the same quantity, as Michel et al. (2019) do for heads.

    Args:
        model (`PreTrainedModel`): a model of a supported family; its weights are not changed.
        dataloader (`DataLoader` or iterable of dicts): batches with `labels`.
        method (`str`, defaults to `"ablation"`): "ablation" (loss increase when each block is skipped; one forward
            per layer per batch), "gate" (|dL/dg| of a per-block gate; one forward + backward per batch), or a
            forward-only criterion of the registry without labels: "block_influence" (ShortGPT, Men et al. 2024:
            1 - cos(block input, block output) over the non-padding tokens) or "angular" (Gromov et al. 2024:
            angular distance between the inputs of layers l and l + n; pass `n=` and remove the block with
            `select_layers(scores, count=n, contiguous=True)`).
        max_batches (`int`, *optional*): stop after this many batches.
        num_samples (`int`, *optional*): stop after this many examples.
        show_progress (`bool`, defaults to `True`): show a tqdm progress bar.
        metric_fn (`Callable[[outputs, batch], float]`, *optional*): ablation only: score the drop of this metric
            (higher is better, e.g. batch accuracy) instead of the loss increase; then batches need no labels.
        distributed (`bool`, defaults to `True`): sum statistics over processes when torch.distributed is running.
        plan (`PruningPlan`, *optional*): registry criteria only: score under this mask.
        options: options of a registry criterion (`n=`, `tokens=` for "angular").

    Returns:
        `torch.Tensor`: `[num_layers]` float32 on CPU.

    Example:
        ```python
        >>> scores = hfprune.layer_importance(model, dataloader, method="ablation", max_batches=8)
        >>> plan = hfprune.select_layers(scores, count=2)   # drop the two least important blocks
        ```
    """
    if method not in _METHODS:
        from ..criteria import criterion_names, get_criterion
        from .api import check_options

        if method not in criterion_names("layers"):
            raise ValueError(f"layer_importance: method must be one of {_METHODS + criterion_names('layers')}, "
                             f"got {method!r}")
        found = get_criterion(method, "layers", caller="layer_importance")
        check_options(found.fn, options, f"layer_importance: method={method!r}")
        if metric_fn is not None:
            raise ValueError("layer_importance: metric_fn is only used by method='ablation'")
        if found.needs_data and dataloader is None:
            raise ValueError(f"layer_importance: method={method!r} needs data: pass a list of batch dicts")
        scores = found.fn(model, dataloader, plan=plan, max_batches=max_batches, num_samples=num_samples,
                          show_progress=show_progress, distributed=distributed, seed=None, **options)
        return torch.as_tensor(scores).detach().to("cpu", torch.float32)
    if options or plan is not None:
        raise ValueError(f"layer_importance: {sorted(options) + (['plan'] if plan is not None else [])} are not "
                         f"options of method={method!r}")
    if metric_fn is not None and method != "ablation":
        raise ValueError("layer_importance: metric_fn is only used by method='ablation'")
    limits = {"max_batches": max_batches, "num_samples": num_samples, "show_progress": show_progress}
    if method == "ablation":
        return _ablation(model, dataloader, metric_fn, distributed, **limits)
    return _gate(model, dataloader, distributed, **limits).cpu()
