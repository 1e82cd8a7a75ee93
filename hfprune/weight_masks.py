"""Which weight masks are active on a model: a leaf module (nothing of hfprune but `arch`), outside the `sparsity`
package, so that structural pruning (`prune`, `mask`) can refuse while masks are active without importing the
sparsity machinery (whose package imports the passes, which import `masking`: a circle). `hfprune.sparsity`
re-exports `active_weight_masks` and `check_no_weight_masks`.

Every active `SparsityHandle` is kept by its model here (a registry keyed weakly by the model; the handle refers to
the model weakly): the masks hold as long as the model lives, whether or not the caller keeps the handle, until
`finalize()` / `remove()`. A dropped model takes its handles (and their optimizer hook) along.
"""

from __future__ import annotations

import weakref

from torch import nn

from .arch import unwrap_model

# Model -> its active handles (kept alive by the model).
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keep_handle(model: nn.Module, handle) -> None:
    """Let `model` keep `handle` alive while it is active."""
    _ACTIVE.setdefault(model, []).append(handle)


def release_handle(model: nn.Module | None, handle) -> None:
    """`model` no longer keeps `handle` (finalized or removed)."""
    kept = _ACTIVE.get(model, []) if model is not None else []
    if handle in kept:
        kept.remove(handle)
    if model is not None and not kept:
        _ACTIVE.pop(model, None)


def active_handles(model: nn.Module) -> list:
    """The active `SparsityHandle`s masking `model` (the inner model under DDP / accelerate)."""
    return [h for h in _ACTIVE.get(unwrap_model(model), ()) if h.active]


def active_weight_masks(model: nn.Module) -> dict:
    """State-dict key -> the active handle masking that weight, for every weight mask active on `model`.

    Example:
        ```python
        >>> hfprune.sparsify(model, 0.5)                       # the handle need not be kept
        >>> sorted(active_weight_masks(model))[:1]
        ['bert.encoder.layer.0.attention.self.query.weight']
        ```
    """
    return {key: handle for handle in active_handles(model) for key in handle.keys()}


def check_no_weight_masks(model: nn.Module, action: str) -> None:
    """Raise before `action` (e.g. "prune") changes shapes while weight masks are active on `model`: the masks are
    shaped like the weights, and a step after the shapes change would fail with the zeros already lost.

    Raises:
        ValueError: names the first masked weight, how many there are, and what to do.
    """
    masked = active_weight_masks(model)
    if masked:
        first, handle = next(iter(masked.items()))
        raise ValueError(f"{action}: weight masks are active on {first} (and {len(masked) - 1} more weights) from "
                         f"{handle!r}; call finalize() (keep the zeros) or remove() on it first, e.g. "
                         "hfprune.sparsity.active_weight_masks(model)[key].finalize()")
