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
  shaped like each weight. A block-by-block criterion (`needs="blocks"`: Wanda, SparseGPT) also receives
  `sparsity`, `pattern`, `device` and `originals`, prunes the targets itself and returns a `BlockwiseResult`; with
  `updates_weights=True` (SparseGPT) it is a solver that also reconstructs the weights it keeps.
* `"channels"`: `fn(model, dataloader, *, groups, **options) -> dict[group_name, Tensor]`.
* `"hidden"`: `fn(model, dataloader, **same as heads) -> Tensor[hidden_size]`, one score per residual channel.
* `"experts"`: `fn(model, dataloader, *, max_batches, seed, distributed, **options) -> dict[layer, Tensor]`, one
  `[num_experts]` vector per MoE layer (dense layers left out).

The dispatchers (`head_importance`, `neuron_importance`, `layer_importance`, `sparsify`) pass the common keywords
above to every criterion of the unit kind (so each function ends with `**common` to ignore those it does not read),
plus the extra options the user gave. A criterion's own options are the named keyword parameters of its function
beyond the common ones (`def michel(model, dataloader, *, return_entropy=False, **common)` accepts
`return_entropy`); an option no criterion of that name reads is refused with an error naming it, before any work.
A criterion declares, when it registers, the pass it needs (`needs=`: `"forward"`, `"gradients"` or `"blocks"`,
run by `hfprune.passes`) and how each option's value is checked (`options={"blocksize": Option(...)}`);
`check_call` applies the flags (`needs`, `needs_labels`, `needs_seed`) and the option checks in one place, so
`sparsify`, the recipes and the CLI read every choice and every option from here.

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
from dataclasses import dataclass, field

UNIT_KINDS = ("heads", "neurons", "layers", "weights", "channels", "hidden", "experts")
# The pass a criterion needs (`hfprune.passes`): forward passes over data, gradient passes through gated units, or
# the block-by-block walk of calibration data; `None`: the weights alone.
NEEDS = ("forward", "gradients", "blocks")
_DATA_KEYWORDS = ("plan", "max_batches", "num_samples", "show_progress", "distributed", "seed")
# The keywords the dispatcher of each unit kind passes to every criterion (not options of one criterion).
# Block-by-block weight criteria also receive the sparsity, pattern, device and the originals store from `sparsify`.
COMMON_KEYWORDS = {"heads": _DATA_KEYWORDS, "neurons": _DATA_KEYWORDS, "layers": _DATA_KEYWORDS,
                   "weights": ("targets", "max_batches", "seed", "sparsity", "pattern", "device", "originals", "walk"),
                   "channels": ("groups", "max_batches", "seed"), "hidden": _DATA_KEYWORDS,
                   "experts": ("max_batches", "seed", "distributed")}


@dataclass(frozen=True)
class Option:
    """How a criterion checks one of its options before any work: `check(value)` is true for a valid value.

    Args:
        check (`Callable[[object], bool]`): the test of a value.
        expected (`str`): what a valid value is, for the error message (`"a positive integer"`).
    """

    check: Callable[[object], bool]
    expected: str


@dataclass(frozen=True)
class Criterion:
    """One registered criterion for one unit kind.

    Args:
        name (`str`): the name users pass (`criterion="taylor"`).
        unit (`str`): one of `UNIT_KINDS`.
        fn (`Callable`): the scoring function (see the module docstring for its contract per unit kind).
        needs (`str`, *optional*): the pass it runs, one of `NEEDS`: `"forward"`, `"gradients"` or `"blocks"` (a
            block-by-block calibration pass, as Wanda and SparseGPT: `fn` computes and applies the masks of every
            target itself, each block measured on the outputs of the pruned blocks before it, and returns a
            `BlockwiseResult`, not scores); `None`: the weights alone, no data.
        needs_labels (`bool`): its batches must carry labels (the model's own loss is differentiated).
        needs_seed (`bool`): needs `seed=` (random baselines, so they are reproducible).
        updates_weights (`bool`): a solver that changes weights (SparseGPT), not only a scorer.
        summary (`str`): one line for help texts: what it measures and the paper.
        options (`tuple[str, ...]`): the extra keyword options it reads (derived from `fn`'s signature).
        order (`int`): its place in listings (choices, help texts, error messages): lower first, ties by name, so
            the defaults come first and baselines last.
        checks (`dict[str, Option]`): the value checks of its options, applied by `check_call` before any work.
    """

    name: str
    unit: str
    fn: Callable
    needs: str | None = None
    needs_labels: bool = False
    needs_seed: bool = False
    updates_weights: bool = False
    summary: str = ""
    options: tuple[str, ...] = ()
    order: int = 100
    checks: Mapping[str, Option] = field(default_factory=dict)

    @property
    def needs_data(self) -> bool:
        """Whether it reads a dataloader (any pass)."""
        return self.needs is not None

    @property
    def sequential(self) -> bool:
        """Whether it is a block-by-block calibration pass (`needs="blocks"`)."""
        return self.needs == "blocks"


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


@dataclass
class BlockwiseResult:
    """What a block-by-block weight criterion (`needs="blocks"`: Wanda, SparseGPT) returns.

    Attributes:
        masks (`dict[str, torch.Tensor]`): module name -> bool keep-mask shaped like its weight (True = kept).
        originals (`dict[str, torch.Tensor]` or `None`): CPU copies of the weights before pruning (`remove()` of the
            handle restores them), or `None` when not kept.
        info (`dict`): `peak_memory`, `seconds`, `blocks`, `samples`, `tokens`, `device`, ...
    """

    masks: dict
    originals: dict | None
    info: dict


def _options_of(fn: Callable, unit: str) -> tuple[str, ...]:
    """The named parameters of `fn` after (model, dataloader) that are not the unit kind's common keywords."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params if p.kind in named and p.name not in COMMON_KEYWORDS[unit])


_REGISTRY: dict[tuple[str, str], Criterion] = {}
_loaded = False


def _check_flags(name: str, units: tuple[str, ...], needs: str | None, needs_labels: bool) -> None:
    unknown = [u for u in units if u not in UNIT_KINDS]
    if unknown or not units:
        raise ValueError(f"criterion {name!r}: units must be among {UNIT_KINDS}, got {units!r}")
    if needs is not None and needs not in NEEDS:
        raise ValueError(f"criterion {name!r}: needs must be None or one of {NEEDS}, got {needs!r}")
    if needs_labels and needs is None:
        raise ValueError(f"criterion {name!r}: needs_labels=True implies needs_data=True (needs='forward' or "
                         "'gradients')")
    if needs == "blocks" and units != ("weights",):
        raise ValueError(f"criterion {name!r}: needs='blocks' prunes weights block by block; units must be "
                         f"('weights',), got {units!r}")


def register_criterion(name: str, *, units: tuple[str, ...] | list[str], needs: str | None = None,
                       needs_labels: bool = False, needs_seed: bool = False, updates_weights: bool = False,
                       summary: str = "", order: int = 100,
                       options: Mapping[str, Option] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` as criterion `name` for each unit kind in `units`.

    Args:
        needs (`str`, *optional*): the pass it runs: `"forward"`, `"gradients"` or `"blocks"` (see `Criterion`).
        options (`dict[str, Option]`, *optional*): value checks of its options (keyword parameters of `fn`).

    Raises:
        ValueError: an unknown unit kind or pass, labels without data, a check for a parameter `fn` does not have,
            or a (name, unit) pair registered twice.
    """
    units = (units,) if isinstance(units, str) else tuple(units)
    _check_flags(name, units, needs, needs_labels)
    checks = dict(options or {})

    def decorator(fn: Callable) -> Callable:
        for unit in units:
            names = _options_of(fn, unit)
            stray = sorted(set(checks) - set(names))
            if stray:
                raise ValueError(f"criterion {name!r}: options {stray} are not keyword parameters of "
                                 f"{fn.__qualname__} (it reads {list(names)})")
            previous = _REGISTRY.get((unit, name))
            if previous is not None and previous.fn is not fn:
                raise ValueError(f"criterion {name!r} for {unit} is already registered by "
                                 f"{previous.fn.__module__}.{previous.fn.__qualname__}")
            _REGISTRY[(unit, name)] = Criterion(name, unit, fn, needs, needs_labels, needs_seed, updates_weights,
                                                summary, names, order, checks)
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


def closest_criterion(name: str, unit: str) -> str:
    """`name` when it is registered for `unit`; otherwise the first criterion of `unit` (in listing order) that runs
    the same pass as `name` does for another unit kind (Michel's head gates -> Taylor for neurons: both gradients).

    Raises:
        ValueError: `name` is registered for no unit kind, or no criterion of `unit` runs its pass.
    """
    _load()
    if (unit, name) in _REGISTRY:
        return name
    needs = {c.needs for (u, n), c in _REGISTRY.items() if n == name}
    if not needs:
        raise ValueError(f"criterion {name!r} is not registered for any unit kind")
    for candidate in criteria(unit):
        if candidate.needs in needs:
            return candidate.name
    raise ValueError(f"no {unit} criterion runs the pass of {name!r} ({', '.join(map(str, needs))})")


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
        if criterion.sequential:
            raise ValueError(f"{caller}: criterion={name!r} needs calibration data: dataloader= batches of token ids "
                             "(hfprune.calibration_batches(tokenizer, texts), or a list of batch dicts)")
        labelled = " of labelled batches" if criterion.needs_labels else ""
        raise ValueError(f"{caller}: criterion={name!r} needs data: it needs a dataloader{labelled} (a DataLoader "
                         "or a list of batch dicts)")
    if criterion.needs_seed and seed is None:  # also False for _UNCHECKED
        raise ValueError(f"{caller}: criterion={name!r} needs a seed, e.g. seed=0, so that the baseline is "
                         "reproducible")
    for option, value in (options or {}).items():
        _check_option(criterion, caller, option, value)


def _check_option(criterion: Criterion, caller: str, option: str, value) -> None:
    name = criterion.name
    if option not in criterion.options:
        readers = tuple(c.name for c in criteria(criterion.unit) if option in c.options)
        hint = f"only available with criterion={readers[0]!r}" if len(readers) == 1 else (
            f"only available with criterion in {readers}" if readers else
            f"not an option of any {criterion.unit} criterion")
        shown = repr(value) if value is None or isinstance(value, (bool, int, float, str)) else "..."
        raise ValueError(f"{caller}: {option}={shown} is {hint}; criterion={name!r} reads "
                         f"{', '.join(criterion.options) or 'no extra option'}")
    check = criterion.checks.get(option)
    if check is not None and not check.check(value):
        raise ValueError(f"{caller}: {option} must be {check.expected}; got {value!r}")


__all__ = ["COMMON_KEYWORDS", "NEEDS", "UNIT_KINDS", "BlockwiseResult", "Criterion", "Option", "UnitScores",
           "check_call", "closest_criterion", "criteria", "criterion_names", "get_criterion", "register_criterion",
           "unregister_criterion"]
