"""`select_width`: a uniform decoder plan (hidden size, heads, FFN width, depth) that meets a parameter target.

Minitron (Muralidharan et al. 2024) prunes width and depth to a parameter count and picks the split between the
axes on calibration data. Here the split is a small exhaustive search: every candidate shape is a point of a grid of
removal shares on all offered axes but one (the *solver* axis), and the solver axis is then cut to the widest size
whose exact parameter count meets the target (within one rounding unit of it). Every offered axis takes its turn as
the solver. Each candidate is applied as a mask (reversible, no copy of the model) and scored by its calibration
loss; the lowest wins. The grid of an axis always contains "no removal", so the candidates for a subset of axes are
also candidates for any superset (same grid, same scores, same loss): offering more axes never makes the result
worse on the calibration data (for `iterations=1`; later rounds depend on the earlier picks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..arch import get_adapter, unwrap_model
from ..importance import head_importance, hidden_importance, layer_importance, neuron_importance
from ..masking import masked
from ..plan import PruningPlan
from .hidden import select_hidden
from .per_layer import select_heads, select_layers, select_neurons

AXES = {"hidden": "hidden", "heads": "heads", "ffn": "neurons"}  # axis -> unit kind
SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass(frozen=True)
class Shape:
    """A uniform shape: kept hidden channels, removed head units (KV groups or heads per group), kept FFN width."""

    hidden: int
    heads: int
    ffn: int


@dataclass
class _Model:
    """What the search needs to know of the dense model."""

    hidden: int
    heads: int
    kv: int
    ffn: int
    head_unit: int  # query heads per removed unit
    head_units: int  # how many units there are
    dense: int
    group_mode: str


def _bad(message: str) -> ValueError:
    return ValueError(f"select_width: {message}")


def _check(model: nn.Module, params, axes, depth, iterations, group_mode) -> tuple[str, ...]:
    if isinstance(params, bool) or not isinstance(params, (int, float)) or not math.isfinite(params) \
            or not 0.0 < params < 1.0:
        raise _bad(f"params must be the fraction of the dense parameter count to keep, in (0, 1), got {params!r}")
    if isinstance(axes, str) or not axes:
        raise _bad(f"axes must be a non-empty sequence of {tuple(AXES)}, got {axes!r}")
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise _bad(f"unknown axis {unknown[0]!r} (known: {', '.join(AXES)})")
    adapter = get_adapter(model)
    lacking = [a for a in axes if AXES[a] not in adapter.unit_kinds]
    if lacking:
        raise _bad(f"{type(model).__name__} has no {lacking[0]!r} axis (its unit kinds: "
                   f"{', '.join(adapter.unit_kinds)})")
    layers = len(adapter.layers(model))
    for name, value, low in (("depth", depth, 0), ("iterations", iterations, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _bad(f"{name} must be an integer >= {low}, got {value!r}")
    if depth >= layers:
        raise _bad(f"depth={depth} would remove every one of the {layers} layers")
    if group_mode not in ("whole", "even"):
        raise _bad(f"group_mode must be 'whole' or 'even', got {group_mode!r}")
    return tuple(dict.fromkeys(axes))


def _describe(model: nn.Module, group_mode: str) -> _Model:
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    heads = {adapter.num_heads(model, b) for b in blocks}
    kv = {adapter.num_kv_heads(model, b) for b in blocks}
    ffn = {adapter.intermediate_size(b) for b in blocks}
    if len(heads) > 1 or len(kv) > 1 or len(ffn) > 1:
        raise _bad(f"the model is not uniform (heads {sorted(heads)}, KV heads {sorted(kv)}, FFN {sorted(ffn)} "
                   f"across layers); select_width starts from a uniform model")
    (h,), (k,), (f,) = heads, kv, ffn
    group = h // max(1, k)
    unit, units = (group, k) if group_mode == "whole" else (k, group)
    hidden = adapter.hidden_size(model) if "hidden" in adapter.unit_kinds else 0
    return _Model(hidden, h, k, f, unit, units, count_params(model, PruningPlan()), group_mode)


def count_params(model: nn.Module, plan: PruningPlan) -> int:
    """The exact parameter count of `model` after `plan` (shared tensors once), on a meta copy: the model is
    untouched."""
    from ..budget.costs import pruned_meta_copy

    clone = pruned_meta_copy(model, plan)
    seen = {id(p): p.numel() for p in clone.parameters()}
    return int(sum(seen.values()))


@dataclass
class _Scores:
    hidden: torch.Tensor | None
    heads: torch.Tensor | None
    neurons: list[torch.Tensor] | None
    layers: list[int]


def _plan(shape: Shape, scores: _Scores, info: _Model, model: nn.Module) -> PruningPlan:
    """The plan of a shape, from the scores (dense indexing; layers as chosen by depth)."""
    plan = PruningPlan(layers=scores.layers)
    if shape.hidden < info.hidden:
        plan.hidden = select_hidden(scores.hidden, ratio=(info.hidden - shape.hidden) / info.hidden).hidden
    if shape.heads:
        plan.heads = select_heads(scores.heads, count=shape.heads * info.head_unit, uniform=True, model=model,
                                  group_mode=info.group_mode).heads
    if shape.ffn < info.ffn:
        plan.neurons = select_neurons(scores.neurons, count=info.ffn - shape.ffn, uniform=True, round_to=1).neurons
    return plan


def _hidden_unit(info: _Model, shape: Shape, round_to: int) -> int:
    """Kept hidden widths are multiples of `round_to` and of the kept head count (LlamaConfig checks
    `hidden_size % num_attention_heads`)."""
    return math.lcm(round_to, info.heads - shape.heads * info.head_unit)


class _Search:
    """The candidates of one round and their exact parameter counts (cached by shape)."""

    def __init__(self, model: nn.Module, info: _Model, layers: list[int], rounding: dict[str, int]):
        self.model, self.info, self.layers, self.rounding = model, info, layers, rounding
        self.counts: dict[Shape, int] = {}

    def count(self, shape: Shape) -> int:
        if shape not in self.counts:
            info = self.info
            plan = PruningPlan(layers=self.layers)
            if shape.hidden < info.hidden:
                plan.hidden = list(range(info.hidden - shape.hidden))
            if shape.heads:
                n = shape.heads * info.head_unit
                group = info.heads // max(1, info.kv)
                if info.group_mode == "whole":
                    row = list(range(n))
                else:
                    row = [g * group + j for g in range(info.kv) for j in range(shape.heads)]
                plan.heads = {i: row for i in range(self.n_layers)}
            if shape.ffn < info.ffn:
                plan.neurons = {i: list(range(info.ffn - shape.ffn)) for i in range(self.n_layers)}
            self.counts[shape] = count_params(self.model, plan)
        return self.counts[shape]

    @property
    def n_layers(self) -> int:
        return len(get_adapter(self.model).layers(self.model))

    def sizes(self, axis: str, shape: Shape, start: Shape) -> list[int]:
        """The sizes an axis can take (widest first), at most its size in `start`."""
        info = self.info
        if axis == "heads":
            return list(range(start.heads, info.head_units))  # removed units: 0 = none
        if axis == "ffn":
            unit = self.rounding["ffn"]
            return [start.ffn] + [k for k in range(start.ffn - start.ffn % unit, 0, -unit) if k < start.ffn]
        unit = _hidden_unit(info, shape, self.rounding["hidden"])
        return [k for k in range(start.hidden - start.hidden % unit, 0, -unit) if k > 0]

    def grid(self, axis: str, start: Shape) -> list:
        """Grid points of a non-solver axis: its size in `start` (no removal this round) and the shares below."""
        info = self.info
        if axis == "heads":
            return list(range(start.heads, info.head_units))
        full = info.ffn if axis == "ffn" else info.hidden
        now = getattr(start, axis)
        points = [now] + [s for s in SHARES if s > 0]
        unit = self.rounding["ffn"] if axis == "ffn" else 1  # hidden: rounded with the head count in candidates()
        cut = [full - int(math.floor(p * full + 0.5)) for p in points[1:]]
        return [now] + [max(min(unit, full), k // unit * unit) for k in cut]

    def solve(self, axis: str, shape: Shape, start: Shape, target: int) -> Shape | None:
        """The widest size of `axis` whose exact count meets `target` (the others as in `shape`), or None."""
        sizes = self.sizes(axis, shape, start)
        if self.count(replace(shape, **{axis: sizes[0]})) <= target:
            return None  # the target is already met without this axis: not a tight candidate
        lo, hi = 0, len(sizes) - 1  # invariant: sizes[lo] is over the target
        if self.count(replace(shape, **{axis: sizes[hi]})) > target:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.count(replace(shape, **{axis: sizes[mid]})) > target:
                lo = mid
            else:
                hi = mid
        return replace(shape, **{axis: sizes[hi]})

    def candidates(self, axes: tuple[str, ...], start: Shape, target: int) -> list[Shape]:
        found: list[Shape] = []
        for solver in axes:
            others = [a for a in axes if a != solver]
            for point in _product([self.grid(a, start) for a in others]):
                shape = replace(start, **dict(zip(others, point)))
                if any(getattr(shape, a) > getattr(start, a) for a in ("hidden", "ffn")):
                    continue
                if solver != "hidden" and "hidden" in others and shape.hidden < start.hidden:
                    unit = _hidden_unit(self.info, shape, self.rounding["hidden"])
                    shape = replace(shape, hidden=max(unit, shape.hidden // unit * unit))
                solved = self.solve(solver, shape, start, target)
                if solved is not None and solved not in found:
                    found.append(solved)
        return found


def _product(lists: Sequence[list]) -> list[tuple]:
    out: list[tuple] = [()]
    for values in lists:
        out = [(*o, v) for o in out for v in dict.fromkeys(values)]
    return out


def calibration_loss(model: nn.Module, plan: PruningPlan, batches: Sequence[dict]) -> float:
    """Mean next-token cross-entropy of `model` under the mask of `plan` over `batches` (padding excluded)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.no_grad(), masked(model, plan):
        for batch in batches:
            ids = batch["input_ids"].to(device)
            attention = batch.get("attention_mask")
            attention = attention.to(device) if attention is not None else None
            labels = batch.get("labels")
            if labels is None:
                labels = ids if attention is None else ids.masked_fill(attention == 0, -100)
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            target = labels.to(device)[:, 1:]
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             target.reshape(-1), ignore_index=-100,
                                                             reduction="sum"))
            tokens += int((target != -100).sum())
    if tokens == 0:
        raise _bad("the calibration batches hold no token to predict")
    return total / tokens


def _score(model: nn.Module, batches: list[dict], axes: tuple[str, ...], plan: PruningPlan) -> _Scores:
    """Minitron activation scores under the mask of `plan`; the units it removes score -1 (picked first again)."""
    common = {"criterion": "activation", "show_progress": False, "plan": plan}
    hidden = heads = neurons = None
    if "hidden" in axes:
        # The hidden criterion reads the norms' outputs, which a hidden mask narrows: score under the rest of the
        # plan; the removed channels score -1 anyway.
        rest = PruningPlan(**{k: v for k, v in plan.units.items() if k != "hidden"})
        hidden = hidden_importance(model, batches, **{**common, "plan": rest}).clone()
        hidden[plan.hidden] = -1.0
    if "heads" in axes:
        heads = head_importance(model, batches, normalize_layers=False, normalize_global=False, **common)
        heads = getattr(heads, "scores", heads).clone()
        for layer, removed in plan.heads.items():
            heads[layer, removed] = -1.0
    if "ffn" in axes:
        neurons = [row.clone() for row in neuron_importance(model, batches, **common)]
        for layer, removed in plan.neurons.items():
            neurons[layer][removed] = -1.0
    return _Scores(hidden, heads, neurons, list(plan.layers))


def select_width(model: nn.Module, batches, params: float = 0.75, axes: Sequence[str] = ("hidden", "heads", "ffn"),
                 depth: int = 0, iterations: int = 1, *, recover: Callable[[nn.Module], object] | None = None,
                 group_mode: str = "whole", hidden_round_to: int = 8, ffn_round_to: int = 64) -> PruningPlan:
    """A uniform plan over hidden size, heads and FFN width (and `depth` whole layers) that meets a parameter target.

    The split between the axes is searched on the calibration data (see the module docstring): every candidate
    meets the target exactly counted (at most `params` x the dense parameter count, within one rounding unit of the
    axis cut last), is masked (reversible) and scored by its calibration loss; the lowest wins. Offering more axes
    never gives a higher calibration loss (the subset's candidates are among the superset's). Scores: Minitron's
    activations (`hidden_importance` / `head_importance` / `neuron_importance`, criterion "activation", forward only);
    depth: block influence (ShortGPT), chosen first on the dense model.

    Args:
        model (`PreTrainedModel`): a uniform transformer (llama, mistral, qwen2, qwen3, gpt2, ...); not changed (a
            `recover` callable may train it between rounds).
        batches (`Iterable[dict]`): calibration batches with `input_ids` (and `attention_mask`, `labels`).
        params (`float`): the fraction of the dense parameter count to keep, in (0, 1).
        axes (`Sequence[str]`): which of "hidden", "heads", "ffn" may shrink.
        depth (`int`): whole layers to remove (lowest block influence).
        iterations (`int`): rounds toward the target (round r: 1 - (1 - params) r / iterations), rescoring under the
            mask of the rounds before; `recover(model)` is called between rounds with that mask attached.
        group_mode (`str`): "whole" (remove whole KV groups) or "even" (the same number of query heads from every
            group), as for `select_heads(uniform=True)`.
        hidden_round_to, ffn_round_to (`int`): kept hidden width a multiple of this (and of the kept head count), kept
            FFN width a multiple of this.

    Returns:
        `PruningPlan` (dense indexing) with `meta["selection"]`: the shape, the counts, the calibration loss and
        the number of candidates per round.

    Raises:
        ValueError: `params` outside (0, 1), an unknown axis or one the family lacks, a bad depth / iteration count,
            or no candidate meeting the target; nothing changes.
    """
    model = unwrap_model(model)
    axes = _check(model, params, axes, depth, iterations, group_mode)
    for name, value in (("hidden_round_to", hidden_round_to), ("ffn_round_to", ffn_round_to)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(f"{name} must be an integer >= 1, got {value!r}")
    batches = list(batches)
    if not batches:
        raise _bad("no calibration batches")
    info = _describe(model, group_mode)
    was_training = model.training
    model.eval()
    try:
        return _rounds(model, batches, info, axes, params, depth, iterations, recover,
                       {"hidden": hidden_round_to, "ffn": ffn_round_to})
    finally:
        model.train(was_training)


def _rounds(model, batches, info, axes, params, depth, iterations, recover, rounding) -> PruningPlan:
    layers: list[int] = []
    if depth:
        influence = layer_importance(model, batches, method="block_influence", show_progress=False)
        layers = select_layers(influence, count=depth).layers
    search = _Search(model, info, layers, rounding)
    start, plan, history = Shape(info.hidden, 0, info.ffn), PruningPlan(layers=layers), []
    for r in range(1, iterations + 1):
        share = params if r == iterations else 1.0 - (1.0 - params) * r / iterations
        target = int(math.floor(info.dense * share))
        scores = _score(model, batches, axes, plan)
        # Depth alone (or the rounds before) may meet this round's target already: then nothing more goes.
        found = [start] if search.count(start) <= target else search.candidates(axes, start, target)
        if not found:
            raise _bad(f"no uniform shape over {', '.join(axes)} meets {target} parameters (round {r}; dense "
                       f"{info.dense}, depth {depth})")
        results = [(calibration_loss(model, _plan(shape, scores, info, model), batches), shape) for shape in found]
        loss, start = min(results, key=lambda item: item[0])
        plan = _plan(start, scores, info, model)
        history.append({"target_params": target, "params": search.count(start), "loss": loss,
                        "candidates": len(found), "shape": _shape_dict(start, info)})
        if recover is not None and r < iterations:
            with masked(model, plan):
                recover(model)
            model.eval()
    plan.meta = {"selection": {"units": "width", "params": params, "axes": list(axes), "depth": depth,
                               "iterations": iterations, "dense_params": info.dense,
                               "pruned_params": search.count(start), "target_params": history[-1]["target_params"],
                               "calibration_loss": history[-1]["loss"], "shape": _shape_dict(start, info),
                               "rounds": history}}
    return plan


def _shape_dict(shape: Shape, info: _Model) -> dict:
    kept_heads = info.heads - shape.heads * info.head_unit
    kv = info.kv - shape.heads if info.group_mode == "whole" and info.kv < info.heads else info.kv
    if info.kv == info.heads:
        kv = kept_heads
    return {"hidden_size": shape.hidden, "heads": kept_heads, "kv_heads": kv, "ffn": shape.ffn}
