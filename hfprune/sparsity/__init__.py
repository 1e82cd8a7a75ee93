"""Weight-level pruning: masks by magnitude / Taylor / random, unstructured, N:M and block patterns, gradual
schedules for the Trainer, a compressed sparse export, int8 dynamic quantization and 2:4 GPU kernels.

`hfprune.load_pruned` reads compressed folders without this package being imported first: the loader dispatch in
`hfprune.io.formats` recognises them and imports `hfprune.sparsity.compressed` then.
"""

from __future__ import annotations

from ..weight_masks import active_weight_masks, check_no_weight_masks
from .callback import GradualPruningCallback, GradualPruningConfig
from .compressed import MANIFEST_NAME, compressed_stats, load_compressed, save_compressed
from .config import SparsifyConfig
from .core import sparsify
from .handle import SparsityHandle
from .patterns import Pattern, parse_pattern
from .quantize import quantize_dynamic_int8
from .schedule import SparsitySchedule
from .semi_structured import semi_structured_support, to_semi_structured
from .targets import Target, resolve_targets

__all__ = [
    "MANIFEST_NAME",
    "GradualPruningCallback",
    "GradualPruningConfig",
    "Pattern",
    "SparsifyConfig",
    "SparsityHandle",
    "SparsitySchedule",
    "Target",
    "active_weight_masks",
    "check_no_weight_masks",
    "compressed_stats",
    "load_compressed",
    "parse_pattern",
    "quantize_dynamic_int8",
    "resolve_targets",
    "save_compressed",
    "semi_structured_support",
    "sparsify",
    "to_semi_structured",
]
