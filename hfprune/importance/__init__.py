"""Importance scorers for attention heads, FFN neurons and whole layers: the public entry points and their machinery.

The criteria themselves live in `hfprune.criteria` (one module each, found by the registry); here are the
dispatchers `head_importance`, `neuron_importance` and `layer_importance` and their result shaping (`common`); the
passes they run (batches, the scoring mode, the gated gradient pass, the distributed sums) live in `hfprune.passes`.
"""

from .api import head_importance, neuron_importance
from .common import ImportanceResult, normalize_heads
from .layers import layer_importance


def __getattr__(name: str):
    # HEAD_CRITERIA / NEURON_CRITERIA are read from the registry when asked for (see `api.__getattr__`).
    if name in ("HEAD_CRITERIA", "NEURON_CRITERIA"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HEAD_CRITERIA", "NEURON_CRITERIA", "ImportanceResult", "head_importance", "layer_importance",
           "neuron_importance", "normalize_heads"]
