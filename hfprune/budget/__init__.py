"""Budgeted, retraining-free pruning (Kwon et al., 2022): Fisher mask search, rearrangement and mask tuning.

`prune_to_budget` is the entry point; the steps are importable one by one (`collect_mask_gradients`,
`search_mask`, `rearrange`, `tune_scales`, `build_latency_table`) for research use.
"""

from .api import BudgetMasks, apply_budget_masks, find_budget_masks, mask_with_scales, prune_to_budget
from .costs import UnitCosts, unit_costs
from .fisher import MaskGradients, collect_mask_gradients
from .latency import LatencyTable, build_latency_table
from .rearrange import rearrange, rearrange_layer
from .search import SearchResult, search_mask
from .tuning import TuneResult, fold_scales, tune_scales

__all__ = ["BudgetMasks", "LatencyTable", "MaskGradients", "SearchResult", "TuneResult", "UnitCosts",
           "apply_budget_masks", "build_latency_table", "collect_mask_gradients", "find_budget_masks",
           "fold_scales", "mask_with_scales", "prune_to_budget", "rearrange", "rearrange_layer", "search_mask",
           "tune_scales", "unit_costs"]
