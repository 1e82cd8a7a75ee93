"""Recipes: every shipped YAML validates; unknown keys, wrong types and out-of-range values are named errors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from hfprune.app.apps import field_help, load_recipe, recipe_from_dict
from hfprune.app.common.recipe import RecipeError, apply_overrides
from hfprune.app.glue.options import SECTIONS
from hfprune.app.glue.options import GlueRecipe as Recipe
from hfprune.app.glue.tasks import GLUE_TASKS

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MINIMAL = {"model": {"name_or_path": "m"}, "data": {"task": "sst2"}, "output": {"dir": "out"}}


def _with(**sections) -> dict:
    data = {k: dict(v) for k, v in MINIMAL.items()}
    for name, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(name, {}).update(values)
        else:
            data[name] = values
    return data


def test_one_recipe_per_glue_task_plus_layerdrop():
    recipes = {p.stem: load_recipe(p) for p in RECIPES.glob("*.yaml")}
    tasks = {r.data.task for r in recipes.values()}
    assert tasks == set(GLUE_TASKS)
    layerdrop = [r for r in recipes.values() if r.finetune.layerdrop > 0]
    assert layerdrop and all(r.prune.layers > 0 for r in layerdrop)
    for name, recipe in recipes.items():
        assert recipe.output.dir and recipe.description, name


def test_values_are_coerced_only_where_safe():
    recipe = recipe_from_dict(_with(prune={"heads": 0, "sweep": [0.5, 0.25]}, eval={"batch_size": 16}, seed=3))
    assert recipe.prune.heads == 0.0 and recipe.prune.sweep == [0.25, 0.5] and recipe.seed == 3
    with pytest.raises(RecipeError, match=r"finetune\.steps must be an int, got '10'"):
        recipe_from_dict(_with(finetune={"steps": "10"}))
    with pytest.raises(RecipeError, match=r"output\.plots must be a bool"):
        recipe_from_dict(_with(output={"plots": "yes please"}))


@pytest.mark.parametrize("data, message", [
    (_with(prune={"hedas": 0.5}), r"unknown key prune\.hedas"),
    (_with(pruning={"heads": 0.5}), r"unknown key pruning"),
    (_with(prune={"heads": 1.5}), r"prune\.heads must be a fraction in \[0, 1\), got 1\.5"),
    (_with(prune={"criterion": "loudness"}), r"prune\.criterion must be one of michel, taylor"),
    (_with(finetune={"steps": -1}), r"finetune\.steps must be >= 0"),
    (_with(recover={"learning_rate": 2.0}), r"recover\.learning_rate must be in \(0, 1\)"),
    (_with(data={"task": "sst3"}), r"data\.unknown task 'sst3'|unknown task 'sst3'"),
    (_with(data={"max_train_samples": 0}), r"data\.max_train_samples must be >= 1"),
    (_with(model={"name_or_path": ""}), r"model\.name_or_path is required"),
    (_with(recover={"steps": 5}), r"recover\.steps > 0 but nothing is pruned"),
    (_with(prune={"sweep": [0.5, 1.0]}), r"prune\.sweep must be a fraction"),
    (_with(prune={"sweep": ["a", 0.5]}), r"prune\.sweep must be a list of fractions in \[0, 1\), got 'a'"),
    (_with(prune={"sweep": [None]}), r"prune\.sweep must be a list of fractions"),
    (_with(output={"push_to_hub": "noslash"}), r"output\.push_to_hub must be a repo id"),
    (_with(prune=[1, 2]), r"section 'prune' must be a mapping"),
])
def test_bad_recipes_are_named(data, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data, source="r.yaml")


def test_yaml_file_unknown_key_and_unsafe_tags(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {task: rte}\noutput: {dir: o}\nprune: {heads: 0.5, colour: 1}\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: unknown key prune\.colour"):
        load_recipe(path)
    path.write_text("model: !!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
    with pytest.raises(FileNotFoundError, match="recipe .* not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_overrides_with_dotted_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {task: rte}\noutput: {dir: o}\n")
    recipe = load_recipe(path, ["prune.heads=0.25", "prune.sweep=[0.1, 0.2]", "data.data_dir=/x", "seed=7",
                                "finetune.steps=3"])
    assert (recipe.prune.heads, recipe.prune.sweep, recipe.data.data_dir, recipe.seed, recipe.finetune.steps) == \
        (0.25, [0.1, 0.2], "/x", 7, 3)
    with pytest.raises(RecipeError, match="unknown key prune.nope"):
        load_recipe(path, ["prune.nope=1"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_overrides({}, ["prune.heads"])
    with pytest.raises(RecipeError, match="at most two parts"):
        apply_overrides({}, ["a.b.c=1"])
    assert apply_overrides({"prune": {"heads": 0.5}}, ["prune.heads=0.3"]) == {"prune": {"heads": 0.3}}


def test_every_field_has_help():
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            assert len(field_help(f"{section}.{f.name}")) > 10, f"{section}.{f.name}"
    assert all(f.metadata.get("help") for f in fields(Recipe))


@pytest.mark.parametrize("name", ["mnli", "stsb", "layerdrop-sst2"])  # two eval splits, regression, layer removal
def test_shipped_recipes_run_on_the_original_glue_layout(name, tmp_path, capsys):
    """The shipped recipe end to end (1 step per stage, a tiny model) on files in the task's original GLUE layout."""
    import json

    import torch

    from hfprune.app.cli.demo import build_base
    from hfprune.app.cli.main import main
    from tests.test_data_glue import _write

    build_base(tmp_path / "base", seed=0)
    task = load_recipe(RECIPES / f"{name}.yaml").data.task
    _write(tmp_path / "glue", task)
    tiny = ["finetune.steps=1", "recover.steps=1", "prune.score_batches=1", "prune.sweep=[0.5]",
            "finetune.batch_size=2",
            "recover.batch_size=2", "eval.latency_repeats=1", "eval.latency_seq_len=16", "eval.latency_batch_size=2",
            "output.plots=false", f"model.name_or_path={tmp_path / 'base'}", f"data.data_dir={tmp_path / 'glue'}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["run", str(RECIPES / f"{name}.yaml"), "--output", str(tmp_path / "out"), "--quiet",
                   *[arg for item in tiny for arg in ("--set", item)]])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    spec = GLUE_TASKS[task]
    assert set(results["pruned"]["metrics"]) == set(spec.eval_splits)
    assert list(results["pruned"]["metrics"][spec.eval_splits[0]])[:len(spec.metrics)] == list(spec.metrics)
    assert results["pruned"]["params"] < results["dense"]["params"]
