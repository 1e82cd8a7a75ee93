"""The criterion registry: every way hfprune scores units, by name and unit kind, declared once.

A criterion is a function registered with `register_criterion` in one module of this package; every list of choices
(the scorers' argument checks, recipe validation, CLI choices, callback help texts) is derived from the registry, so a
new criterion is one module here plus its test. The modules are found by listing this package (no hand-kept list)
and imported the first time the registry is read.

Unit kinds and what a criterion function receives / returns (all arguments by keyword except the first two):

* `"heads"`, `"neurons"`: `fn(model, dataloader, *, plan, max_batches, num_samples, show_progress, distributed,
  seed, **options) -> list[Tensor]`, one raw score vector per layer, in layer order (higher = more important).
  A criterion that gathers secondary statistics in the same pass may return a `UnitScores` instead.
* `"layers"`: `fn(model, dataloader, **same) -> Tensor[num_layers]`.
* `"weights"`: `fn(model, dataloader, *, targets, max_batches, seed, **options) -> dict[target_name, Tensor]`
  shaped like each weight; a criterion with `updates_weights=True` (SparseGPT) is a solver that also returns the
  weights it reconstructs.
* `"channels"`: `fn(model, dataloader, *, groups, **options) -> dict[group_name, Tensor]`.

The dispatchers (`head_importance`, `neuron_importance`, `layer_importance`, `sparsify`) pass the common keywords
above to every criterion of the unit kind (so each function ends with `**common` to ignore those it does not read),
plus the extra options the user gave. A criterion's own options are the named keyword parameters of its function
beyond the common ones (`def michel(model, dataloader, *, return_entropy=False, **common)` accepts
`return_entropy`); an option no criterion of that name reads is refused with an error naming it, before any work.
`check_call` applies the flags (`needs_data`, `needs_seed`) and the option check in one place.

Example (a module `hfprune/criteria/l2.py`; docs/importance.md has the same as a runnable session):
    ```python
    >>> from hfprune.arch import get_adapter
    >>> from hfprune.criteria import register_criterion
    >>> @register_criterion("l2", units=("neurons",), summary="L2 norm of the neuron's down-projection column")
    ... def l2_neurons(model, dataloader=None, **common):
    ...     adapter = get_adapter(model)
    ...     return [adapter.ffn_out(block).weight.detach().norm(dim=0) for block in adapter.layers(model)]
    >>> hfprune.criteria.criterion_names("neurons")
    ('taylor', 'magnitude', 'fisher', 'random', 'l2')
    ```
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

UNIT_KINDS = ("heads", "neurons", "layers", "weights", "channels")
_DATA_KEYWORDS = ("plan", "max_batches", "num_samples", "show_progress", "distributed", "seed")
# The keywords the dispatcher of each unit kind passes to every criterion (not options of one criterion).
COMMON_KEYWORDS = {"heads": _DATA_KEYWORDS, "neurons": _DATA_KEYWORDS, "layers": _DATA_KEYWORDS,
                   "weights": ("targets", "max_batches", "seed"), "channels": ("groups", "max_batches", "seed")}


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
        options (`tuple[str, ...]`): the extra keyword options it reads (derived from `fn`'s signature).
        order (`int`): its place in listings (choices, help texts, error messages): lower first, ties by name, so
            the defaults come first and baselines last.
    """

    name: str
    unit: str
    fn: Callable
    needs_data: bool = False
    needs_labels: bool = False
    needs_seed: bool = False
    updates_weights: bool = False
    summary: str = ""
    options: tuple[str, ...] = ()
    order: int = 100


@dataclass
class UnitScores:
    """What a head / neuron criterion may return instead of a plain list, when one pass gathers more than scores.

    Args:
        rows (`list[torch.Tensor]`): one raw score vector per layer, in layer order.
        entropy (`list[torch.Tensor]`, *optional*): per layer, mean attention entropy per head (Michel et al.).
        num_tokens (`int`): the tokens the statistics were divided by (summed over processes).
    """

    rows: list
    entropy: list | None = None
    num_tokens: int = 0


def _options_of(fn: Callable, unit: str) -> tuple[str, ...]:
    """The named parameters of `fn` after (model, dataloader) that are not the unit kind's common keywords."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params if p.kind in named and p.name not in COMMON_KEYWORDS[unit])


_REGISTRY: dict[tuple[str, str], Criterion] = {}
_loaded = False


def register_criterion(name: str, *, units: tuple[str, ...] | list[str], needs_data: bool = False,
                       needs_labels: bool = False, needs_seed: bool = False, updates_weights: bool = False,
                       summary: str = "", order: int = 100) -> Callable[[Callable], Callable]:
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
                                                updates_weights, summary, _options_of(fn, unit), order)
        return fn

    return decorator


def unregister_criterion(name: str, units: tuple[str, ...] | list[str] | str) -> None:
    """Remove criterion `name` for each unit kind in `units` (a criterion registered for a session or a test).

    Raises:
        KeyError: `name` is not registered for one of `units` (nothing is removed then).
    """
    units = (units,) if isinstance(units, str) else tuple(units)
    missing = [u for u in units if (u, name) not in _REGISTRY]
    if missing:
        raise KeyError(f"criterion {name!r} is not registered for {', '.join(missing)}")
    for unit in units:
        del _REGISTRY[(unit, name)]


def _load() -> None:
    """Import every criterion module of this package once (each registers itself on import)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # before importing: a criterion module that reads the registry while loading must not recurse
    try:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
    except BaseException:
        _loaded = False  # a broken module must not leave a silently partial registry behind
        raise


def criteria(unit: str | None = None) -> list[Criterion]:
    """Every registered criterion (for one unit kind, or all), ordered by unit kind, then `order`, then name."""
    _load()
    if unit is not None and unit not in UNIT_KINDS:
        raise ValueError(f"unit must be one of {UNIT_KINDS}, got {unit!r}")
    found = [c for (u, _), c in _REGISTRY.items() if unit is None or u == unit]
    return sorted(found, key=lambda c: (UNIT_KINDS.index(c.unit), c.order, c.name))


def criterion_names(unit: str) -> tuple[str, ...]:
    """The names valid for `unit`, in listing order (what argument checks, recipes and CLI choices list)."""
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


_UNCHECKED = object()


def check_call(criterion: Criterion, *, caller: str, dataloader=_UNCHECKED, seed=_UNCHECKED,
               options: Mapping | None = None) -> None:
    """Refuse a call `criterion` cannot serve, before any work: missing data or seed, or an option it does not read.

    `dataloader` and `seed` are checked only when given (a configuration validated before its data exists leaves
    `dataloader` out).

    Raises:
        ValueError: naming the caller, the criterion and what is missing (or the unknown option and which criteria
            of that unit kind accept it).
    """
    name = criterion.name
    if criterion.needs_data and dataloader is None:  # also False for _UNCHECKED
        labelled = " of labelled batches" if criterion.needs_labels else ""
        raise ValueError(f"{caller}: criterion={name!r} needs data: it needs a dataloader{labelled} (a DataLoader "
                         "or a list of batch dicts)")
    if criterion.needs_seed and seed is None:  # also False for _UNCHECKED
        raise ValueError(f"{caller}: criterion={name!r} needs a seed, e.g. seed=0, so that the baseline is "
                         "reproducible")
    for option, value in (options or {}).items():
        if option not in criterion.options:
            readers = tuple(c.name for c in criteria(criterion.unit) if option in c.options)
            hint = f"only available with criterion={readers[0]!r}" if len(readers) == 1 else (
                f"only available with criterion in {readers}" if readers else
                f"not an option of any {criterion.unit} criterion")
            shown = repr(value) if value is None or isinstance(value, (bool, int, float, str)) else "..."
            raise ValueError(f"{caller}: {option}={shown} is {hint}; criterion={name!r} reads "
                             f"{', '.join(criterion.options) or 'no extra option'}")


__all__ = ["COMMON_KEYWORDS", "UNIT_KINDS", "Criterion", "UnitScores", "check_call", "criteria", "criterion_names",
           "get_criterion", "register_criterion", "unregister_criterion"]
