"""The criterion registry: every way hfprune scores units, by name and unit kind, declared once.

A criterion is a function registered with `register_criterion` in one module of this package; every list of choices
(the scorers' argument checks, recipe validation, CLI choices, callback help texts) is derived from the registry, so a
new criterion is one module here plus its test. The modules are found by listing this package (no hand-kept list)
and imported the first time the registry is read.

Unit kinds and what a criterion function receives / returns (all arguments by keyword except the first two):

* `"heads"`, `"neurons"`: `fn(model, dataloader, *, plan, max_batches, num_samples, show_progress, distributed,
  seed, **options) -> list[Tensor]`, one raw score vector per layer, in layer order (higher = more important).
* `"layers"`: `fn(model, dataloader, **same) -> Tensor[num_layers]`.
* `"weights"`: `fn(model, dataloader, *, targets, **options) -> dict[target_name, Tensor]` shaped like each weight;
  a criterion with `updates_weights=True` (SparseGPT) is a solver that also returns the weights it reconstructs.
* `"channels"`: `fn(model, dataloader, *, groups, **options) -> dict[group_name, Tensor]`.

Example:
    ```python
    >>> from hfprune.criteria import register_criterion
    >>> @register_criterion("l2", units=("neurons",), summary="L2 norm of the neuron's weights")
    ... def l2_neurons(model, dataloader=None, **options):
    ...     ...
    >>> hfprune.criteria.criterion_names("neurons")
    ```
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

UNIT_KINDS = ("heads", "neurons", "layers", "weights", "channels")


@dataclass(frozen=True)
class Criterion:
    """One registered criterion for one unit kind.

    Args:
        name (`str`): the name users pass (`criterion="taylor"`).
        unit (`str`): one of `UNIT_KINDS`.
        fn (`Callable`): the scoring function (see the module docstring for its contract per unit kind).
        needs_data (`bool`): needs a dataloader (activations or gradients).
        needs_labels (`bool`): its batches must carry labels (the model's own loss is differentiated).
        needs_seed (`bool`): needs `seed=` (random baselines, so they are reproducible).
        updates_weights (`bool`): a solver that changes weights (SparseGPT), not only a scorer.
        summary (`str`): one line for help texts: what it measures and the paper.
    """

    name: str
    unit: str
    fn: Callable
    needs_data: bool = False
    needs_labels: bool = False
    needs_seed: bool = False
    updates_weights: bool = False
    summary: str = ""


_REGISTRY: dict[tuple[str, str], Criterion] = {}
_loaded = False


def register_criterion(name: str, *, units: tuple[str, ...] | list[str], needs_data: bool = False,
                       needs_labels: bool = False, needs_seed: bool = False, updates_weights: bool = False,
                       summary: str = "") -> Callable[[Callable], Callable]:
    """Decorator: register `fn` as criterion `name` for each unit kind in `units`.

    Raises:
        ValueError: an unknown unit kind, labels without data, or a (name, unit) pair registered twice.
    """
    units = (units,) if isinstance(units, str) else tuple(units)
    unknown = [u for u in units if u not in UNIT_KINDS]
    if unknown or not units:
        raise ValueError(f"criterion {name!r}: units must be among {UNIT_KINDS}, got {units!r}")
    if needs_labels and not needs_data:
        raise ValueError(f"criterion {name!r}: needs_labels=True implies needs_data=True")

    def decorator(fn: Callable) -> Callable:
        for unit in units:
            previous = _REGISTRY.get((unit, name))
            if previous is not None and previous.fn is not fn:
                raise ValueError(f"criterion {name!r} for {unit} is already registered by "
                                 f"{previous.fn.__module__}.{previous.fn.__qualname__}")
            _REGISTRY[(unit, name)] = Criterion(name, unit, fn, needs_data, needs_labels, needs_seed,
                                                updates_weights, summary)
        return fn

    return decorator


def _load() -> None:
    """Import every criterion module of this package once (each registers itself on import)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def criteria(unit: str | None = None) -> list[Criterion]:
    """Every registered criterion (for one unit kind, or all), ordered by unit kind, then name."""
    _load()
    if unit is not None and unit not in UNIT_KINDS:
        raise ValueError(f"unit must be one of {UNIT_KINDS}, got {unit!r}")
    found = [c for (u, _), c in _REGISTRY.items() if unit is None or u == unit]
    return sorted(found, key=lambda c: (UNIT_KINDS.index(c.unit), c.name))


def criterion_names(unit: str) -> tuple[str, ...]:
    """The names valid for `unit`, sorted (what argument checks, recipes and CLI choices list)."""
    return tuple(c.name for c in criteria(unit))


def get_criterion(name: str, unit: str, *, caller: str | None = None) -> Criterion:
    """The criterion `name` for `unit`.

    Raises:
        ValueError: `name` is not registered for `unit`; the message lists the valid names (and, when `name` exists
            for other unit kinds, which ones).
    """
    _load()
    found = _REGISTRY.get((unit, name))
    if found is not None:
        return found
    where = f"{caller}: " if caller else ""
    other = sorted(u for (u, n) in _REGISTRY if n == name)
    hint = f" ({name!r} scores {', '.join(other)}, not {unit})" if other else ""
    raise ValueError(f"{where}criterion for {unit} must be one of {criterion_names(unit)}, got {name!r}{hint}")


__all__ = ["UNIT_KINDS", "Criterion", "criteria", "criterion_names", "get_criterion", "register_criterion"]
