"""Recipes: a pruning run declared once (dataclasses), spelled as YAML (`hfprune run`) or flags (`hfprune prune`)."""

from .config import DataConfig, EvalConfig, ModelConfig, OutputConfig, PruneConfig, Recipe, TrainConfig
from .loader import RecipeError, apply_overrides, field_help, load_recipe, recipe_from_dict, recipe_to_dict

__all__ = ["CRITERIA", "DataConfig", "EvalConfig", "ModelConfig", "OutputConfig", "PruneConfig", "Recipe",
           "RecipeError", "TrainConfig", "apply_overrides", "field_help", "load_recipe", "recipe_from_dict",
           "recipe_to_dict", "run_recipe"]


def __getattr__(name):
    if name == "CRITERIA":  # from the criterion registry, when asked for (see config.CRITERIA)
        from .config import CRITERIA

        return CRITERIA
    if name == "run_recipe":  # the runner pulls in transformers' Trainer; load it only when a run starts
        from .runner import run_recipe

        return run_recipe
    raise AttributeError(name)
