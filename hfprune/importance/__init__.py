"""Importance scorers for attention heads, FFN neurons and whole layers.

One module per criterion family: `michel` (Michel et al., 2019), `taylor` (Molchanov et al., 2017), `fisher`
(squared gate gradients), `magnitude` (Li et al., 2017) and `layers` (LayerDrop-style ablation and layer gates);
`common` holds batch handling, the scoring mode and the distributed reduction, `gradients` the shared gated pass.
"""

from .api import HEAD_CRITERIA, NEURON_CRITERIA, head_importance, neuron_importance
from .common import ImportanceResult, normalize_heads
from .layers import layer_importance

__all__ = ["HEAD_CRITERIA", "NEURON_CRITERIA", "ImportanceResult", "head_importance", "layer_importance",
           "neuron_importance", "normalize_heads"]
