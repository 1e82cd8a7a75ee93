"""hfprune: structured and weight-level pruning for Hugging Face Transformers v5.

Score units (heads, FFN neurons, layers, MoE experts; channels of vision CNNs), turn scores into a `PruningPlan`,
mask them (reversible) or `prune` them (physical removal, real speedup), recover by fine-tuning, and save a model
that `load_pruned` loads back.
"""

from __future__ import annotations

import importlib

from .arch import get_adapter, supported_model_types
from .io import load_pruned, save_pruned
from .masking import Gates, attach_gates, mask, masked
from .plan import PruningPlan
from .structure import model_structure
from .surgery import prune

__version__ = "0.1.0"

# Heavier parts load on first use, so `import hfprune` stays fast and the core has no plotting/training deps.
_LAZY = {
    "head_importance": "hfprune.importance",
    "neuron_importance": "hfprune.importance",
    "layer_importance": "hfprune.importance",
    "ImportanceResult": "hfprune.importance",
    "expert_importance": "hfprune.importance",
    "select_experts": "hfprune.selection",
    "select_heads": "hfprune.selection",
    "select_neurons": "hfprune.selection",
    "select_layers": "hfprune.selection",
    "iterative_head_pruning": "hfprune.selection",
    "HeadImportanceCallback": "hfprune.callbacks",
    "NeuronImportanceCallback": "hfprune.callbacks",
    "LayerImportanceCallback": "hfprune.callbacks",
    "LayerDropCallback": "hfprune.callbacks",
    "PruningCallback": "hfprune.callbacks",
    "sparsify": "hfprune.sparsity",
    "SparsityHandle": "hfprune.sparsity",
    "GradualPruningCallback": "hfprune.sparsity",
    "save_compressed": "hfprune.sparsity",
    "quantize_dynamic_int8": "hfprune.sparsity",
    "add_remote_code": "hfprune.remote",
    "calibration_batches": "hfprune.calibration",
    "perplexity": "hfprune.lm_perplexity",
    "push_folder_to_hub": "hfprune.remote",
    "prune_to_budget": "hfprune.budget",
    "DistillationTrainer": "hfprune.recovery.distill",
    "ChannelGroup": "hfprune.arch.channels",
    "channel_groups": "hfprune.arch.channels",
    "channel_importance": "hfprune.importance",
    "ChannelScores": "hfprune.importance",
    "select_channels": "hfprune.selection",
    "NetworkSlimmingCallback": "hfprune.callbacks.slimming",
    "refresh_batchnorm": "hfprune.batchnorm",
    "channel_compensation": "hfprune.compensation",
    "Compensation": "hfprune.compensation",
    "measure_compensation": "hfprune.compensation",
    "export_compressed_tensors": "hfprune.serving.compressed_tensors",
    "hidden_importance": "hfprune.importance",
    "select_hidden": "hfprune.selection",
}

__all__ = [
    "Gates",
    "PruningPlan",
    "attach_gates",
    "get_adapter",
    "load_pruned",
    "mask",
    "masked",
    "model_structure",
    "prune",
    "save_pruned",
    "supported_model_types",
]
__all__ += list(_LAZY)


# Subpackages reachable as attributes (`hfprune.sparsity.parse_pattern`) without importing them first.
_SUBMODULES = ("app", "budget", "calibration", "callbacks", "criteria", "flops", "importance", "io", "remote",
               "selection", "serving", "sparsity")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"hfprune.{name}")
    raise AttributeError(f"module 'hfprune' has no attribute {name!r}")
