"""The application side of issue 11: `hfprune prune --budget flops=F` and `--distill`, and their recipe keys."""

from __future__ import annotations

import json

import pytest
import torch

import hfprune
from hfprune.app.apps import recipe_from_dict
from hfprune.app.cli.demo import build_base, synthetic_sentences
from hfprune.app.cli.main import main
from hfprune.app.common.recipe import RecipeError

FAST = ["--set", "eval.latency_repeats=1", "--set", "eval.latency_seq_len=16", "--set", "eval.latency_batch_size=4",
        "--quiet"]
MINIMAL = {"model": {"name_or_path": "m"}, "data": {"task": "sst2"}, "output": {"dir": "out"}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    build_base(root / "base", seed=0)
    (root / "glue" / "SST-2").mkdir(parents=True)
    for split, n, seed in (("train", 64, 0), ("dev", 16, 1)):
        texts, labels = synthetic_sentences(n, seed)
        rows = "".join(f"{t}\t{lab}\n" for t, lab in zip(texts, labels))
        (root / "glue" / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    return root


def _run(argv, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_prune_to_a_flops_budget_then_distill(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, stderr = _run(["prune", "--model", tiny / "base", "--task", "sst2", "--data-dir", tiny / "glue",
                               "--budget", "flops=0.6", "--budget-samples", 32, "--finetune-steps", 2,
                               "--recover-steps", 2, "--distill", "--batch-size", 8, "--output", out, *FAST], capsys)
    assert rc == 0, stderr
    results = json.loads((out / "results.json").read_text())
    meta = results["plan"]["meta"]
    assert meta["budget"] == {"flops": 0.6} and meta["method"] == "kwon2022"
    assert meta["achieved"]["flops"] <= 0.6
    recover = results["training"]["recover"]
    assert recover["steps"] == 2
    assert recover["distill"] == {"alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.0,
                                  "trainer": "DistillationTrainer"}
    model = hfprune.load_pruned(out)
    assert hfprune.model_structure(model) == results["pruned"]["structure"]


def test_budget_flag_errors_are_one_line(tiny, tmp_path, capsys):
    base = ["prune", "--model", tiny / "base", "--task", "sst2", "--data-dir", tiny / "glue", "--output",
            tmp_path / "out", "--quiet"]
    with pytest.raises(SystemExit):
        _run([*base, "--budget", "speed=0.5"], capsys)
    assert "expected flops=F, params=F or latency=F" in capsys.readouterr().err
    rc, _, stderr = _run([*base, "--budget", "flops=1.5"], capsys)
    assert rc != 0 and "(0, 1]" in stderr
    rc, _, stderr = _run([*base, "--budget", "flops=0.5", "--heads", "0.5"], capsys)
    assert rc != 0 and "budget excludes heads" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("section,values,message", [
    ("prune", {"budget": {"flops": 0.5, "params": 0.5}}, "exactly one budget"),
    ("prune", {"budget": {"speed": 0.5}}, "unknown key 'speed'"),
    ("prune", {"budget": 0.5}, "prune.budget must be a dict"),
    ("prune", {"budget": {"flops": 0.0}}, r"\(0, 1\]"),
    ("recover", {"distill": {"alpha": 2.0}}, "recover.distill.alpha must be a number in"),
    ("recover", {"distill": {"beta": 1.0}}, "unknown key distill.beta"),
])
def test_bad_budget_and_distill_recipes_are_named(section, values, message):
    data = {**MINIMAL, section: values}
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data)


def test_recipe_keys_spell_the_same_objects():
    recipe = recipe_from_dict({**MINIMAL, "prune": {"budget": {"latency": 0.7}, "budget_samples": 256},
                               "recover": {"steps": 10, "distill": {"temperature": 4}}})
    assert recipe.prune.budget == {"latency": 0.7} and recipe.prune.budget_samples == 256
    assert recipe.recover.distill == {"alpha": 0.5, "temperature": 4.0, "hidden_weight": 0.0}
