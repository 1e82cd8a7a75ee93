"""Trainer callbacks over hfprune's stages: scoring, pruning with recovery, and LayerDrop.

- `HeadImportanceCallback`, `NeuronImportanceCallback`, `LayerImportanceCallback` (`importance.py`): score at
  train end (and every N steps), expose `.scores`, write `importance.json` to `args.output_dir`.
- `PruningCallback` (`pruning.py`): score at a step / epoch (on a seeded slice of the training set unless told
  otherwise, `scoring_data.py`), mask, prune physically at train end; logs what it removed and makes saved folders
  load without hfprune (`announce.py`).
- `LayerDropCallback` (`layerdrop.py`): skip random layers during training (Fan et al., 2020).
- `NetworkSlimmingCallback` (`slimming.py`): L1 penalty on CNN BatchNorm scales (Liu et al., 2017).
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
from .slimming import NetworkSlimmingCallback, NetworkSlimmingConfig

__all__ = ["HeadImportanceCallback", "HeadScoringConfig", "LayerDropCallback", "LayerDropConfig",
           "LayerImportanceCallback", "LayerScoringConfig", "NetworkSlimmingCallback", "NetworkSlimmingConfig",
           "NeuronImportanceCallback", "NeuronScoringConfig", "PruningCallback", "PruningConfig", "ScoringConfig"]
