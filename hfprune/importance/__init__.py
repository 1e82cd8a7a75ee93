"""Importance scorers for attention heads, FFN neurons, whole layers, CNN channels, the hidden width and MoE experts:
the public entry points and their machinery.

The criteria themselves live in `hfprune.criteria` (one module each, found by the registry); here are the
dispatchers `head_importance`, `neuron_importance`, `layer_importance`, `channel_importance`, `hidden_importance`
and `expert_importance` and their result shaping (`common`); the passes they run (batches, the scoring mode, the
gated gradient pass, the distributed sums) live in `hfprune.passes`. `HEAD_CRITERIA` / `NEURON_CRITERIA` list the
registry's names for heads / neurons at every use (`names`).
"""

from .api import ChannelScores, channel_importance, head_importance, neuron_importance
from .common import ImportanceResult, normalize_heads
from .experts import expert_importance
from .hidden import hidden_importance
from .layers import layer_importance
from .names import HEAD_CRITERIA, NEURON_CRITERIA

__all__ = ["HEAD_CRITERIA", "NEURON_CRITERIA", "ChannelScores", "ImportanceResult", "channel_importance",
           "expert_importance", "head_importance", "hidden_importance", "layer_importance", "neuron_importance",
           "normalize_heads"]
