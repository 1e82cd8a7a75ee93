"""Trainer callbacks over hfprune's stages: scoring, pruning with recovery, and LayerDrop.

- `HeadImportanceCallback`, `NeuronImportanceCallback`, `LayerImportanceCallback` (`importance.py`): score at
  train end (and every N steps), expose `.scores`, write `importance.json` to `args.output_dir`.
- `PruningCallback` (`pruning.py`): score at a step / epoch, mask, prune physically at train end.
- `LayerDropCallback` (`layerdrop.py`): skip random layers during training (Fan et al., 2020).
"""

from .importance import (
    HeadImportanceCallback,
    HeadScoringConfig,
    LayerImportanceCallback,
    LayerScoringConfig,
    NeuronImportanceCallback,
    NeuronScoringConfig,
    ScoringConfig,
)
from .layerdrop import LayerDropCallback, LayerDropConfig
from .pruning import PruningCallback, PruningConfig

__all__ = ["HeadImportanceCallback", "HeadScoringConfig", "LayerDropCallback", "LayerDropConfig",
           "LayerImportanceCallback", "LayerScoringConfig", "NeuronImportanceCallback", "NeuronScoringConfig",
           "PruningCallback", "PruningConfig", "ScoringConfig"]
