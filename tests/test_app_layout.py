"""The application lives in `hfprune.app`, apart from the library: the core imports without it, there are no old
import paths (nothing was released), and `python -m hfprune` is the `hfprune` command."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hfprune

ROOT = Path(hfprune.__file__).resolve().parent
APP_ONLY = ("matplotlib", "datasets", "sklearn", "hfprune.app")


def _library_modules() -> list[str]:
    """Every module of the package outside `hfprune/app`, by file (walk_packages would import the app to walk it)."""
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts[:2] != ("hfprune", "app") and parts[-1] != "__main__":
            names.append(".".join(parts))
    return names


def _imported_after(code: str) -> list[str]:
    """Modules from APP_ONLY in `sys.modules` after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [m for m in json.loads(out.splitlines()[-1]) if m.split(".")[0] in APP_ONLY or m.startswith(APP_ONLY)]


def test_import_hfprune_loads_no_application_and_no_plotting():
    assert _imported_after("import hfprune") == []


# Modules whose classes subclass `transformers.Trainer` at module level: importing `transformers.Trainer` loads
# `datasets` (when installed), so these are held to exactly what `transformers.Trainer` itself brings.
TRAINER_MODULES = ("hfprune.recovery.distill", "hfprune.recovery.causal_lm")


def test_every_library_module_imports_without_the_application():
    names = _library_modules()
    assert "hfprune.selection" in names and "hfprune.callbacks.pruning" in names and len(names) > 40
    assert not any(n.startswith("hfprune.app") for n in names)
    assert set(TRAINER_MODULES) <= set(names)
    names = [n for n in names if n not in TRAINER_MODULES]
    code = "import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
    assert _imported_after(code) == []


def test_trainer_modules_import_nothing_beyond_transformers_trainer():
    trainer = set(_imported_after("from transformers import Trainer"))
    for name in TRAINER_MODULES:
        assert set(_imported_after(f"import {name}")) <= trainer, name


@pytest.mark.parametrize("old", ["hfprune.recipes", "hfprune.recipes.runner", "hfprune.data", "hfprune.metrics",
                                 "hfprune.report", "hfprune.cli", "hfprune.cli.main", "hfprune.demo"])
def test_old_application_paths_are_gone(old):
    """No compatibility layer (nothing was released): the application is imported as `hfprune.app...`."""
    with pytest.raises(ModuleNotFoundError, match=r"No module named 'hfprune\.[a-z]+'"):
        importlib.import_module(old)
    assert not hasattr(hfprune, old.split(".")[1])
    assert not any(getattr(finder, "__module__", "").startswith("hfprune") for finder in sys.meta_path)


def test_no_module_only_re_exports_another():
    """Saving and loading are `hfprune.io`, the remote-code export and the Hub push `hfprune.remote`: there is no
    second path to them (the older `hfprune.export` is gone)."""
    assert not (ROOT / "export.py").exists() and not hasattr(hfprune, "export")
    assert [p.name for p in ROOT.glob("*.py") if p.name.startswith("_") and p.name not in ("__init__.py",
                                                                                           "__main__.py")] == []


def test_python_dash_m_hfprune_is_the_command(tmp_path):
    run = subprocess.run([sys.executable, "-m", "hfprune", "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: hfprune ")
    listed = [line.split()[0] for line in run.stdout.splitlines() if line.startswith("    ")]
    assert listed == list(importlib.import_module("hfprune.app.cli.main").COMMANDS) and "demo" in listed
    bad = subprocess.run([sys.executable, "-m", "hfprune", "prune", "--task", "sst3", "--model", "x", "--output",
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("hfprune prune: error: ")  # the command's own errors
    assert "unknown task 'sst3'" in bad.stderr
    assert list(tmp_path.iterdir()) == []


def test_console_script_points_to_the_moved_main():
    scripts = (ROOT.parent / "pyproject.toml").read_text().split("[project.scripts]")[1]  # tomllib needs 3.11
    module, _, attr = re.search(r'^hfprune = "([^"]+)"', scripts, re.M).group(1).partition(":")
    assert module.startswith("hfprune.app.")
    assert getattr(importlib.import_module(module), attr) is importlib.import_module("hfprune.app.cli.main").main


APP_DIR = ROOT / "app"


def test_every_application_has_the_same_layout():
    from hfprune.app.apps import APPS

    assert [app.name for app in APPS] == ["glue", "image", "causal_lm"]
    for app in APPS:
        files = {p.name for p in (APP_DIR / app.name).glob("*.py")}
        assert {"__init__.py", "options.py", "run.py", "report.py", "writer.py"} <= files, app.name
        assert app.options.__module__ == f"hfprune.app.{app.name}.options"
        assert app.run.__module__ == f"hfprune.app.{app.name}.run"


def test_no_module_getattr_no_deny_lists_and_small_modules_under_app():
    import ast

    for path in APP_DIR.rglob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body), path
        assert "_GLUE_ONLY" not in text and "_LM_ONLY" not in text, path
        assert len(text.splitlines()) <= 400, path


def test_every_option_of_every_application_has_help():
    from dataclasses import fields

    from hfprune.app.apps import APPS
    from hfprune.app.common.recipe import sections, top_level

    for app in APPS:
        for section, cls in sections(app.options).items():
            for f in fields(cls):
                assert len(f.metadata.get("help", "")) > 10, f"{app.name}: {section}.{f.name}"
        assert all(f.metadata.get("help") for f in top_level(app.options).values()), app.name


def test_a_flag_of_another_task_is_refused_naming_flag_key_and_task():
    """Derived from the options classes: for every flag and every application without it, one message that names the
    flag, the task, the recipe key and the tasks the flag belongs to."""
    import argparse

    from hfprune.app.apps import APPS
    from hfprune.app.cli.flags import collect_flags, recipe_data

    specs = collect_flags()
    refused = 0
    for spec in specs.values():
        for app in APPS:
            if spec.keys(app):
                continue
            args = argparse.Namespace(**{s.dest: None for s in specs.values()})
            setattr(args, spec.dest, "x")
            with pytest.raises(ValueError) as err:
                recipe_data(args, specs, app, app.tasks[0])
            message = str(err.value)
            assert message.startswith(f"{spec.flag} applies to --task "), message
            assert f"only, not to --task {app.tasks[0]}" in message, message
            owner = spec.apps[0]
            assert f"(key {spec.keys(owner)[0]})" in message, message
            assert owner.task_label in message and "\n" not in message
            refused += 1
    assert refused >= 20  # GLUE, image and causal-LM flags all exist only for some tasks
    assert {"--text-file", "--channels", "--sweep", "--gguf-file", "--compensate"} <= set(specs)


def test_prune_help_groups_flags_by_the_tasks_they_apply_to():
    run = subprocess.run([sys.executable, "-m", "hfprune", "prune", "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "causal-lm" in text.split("\n  --task TASK", 1)[1].split("\n  --", 1)[0]  # --task lists every task
    sections = {line.rstrip(":"): i for i, line in enumerate(text.splitlines()) if line.endswith(":")}
    assert {"every task", "--task causal-lm", "--task image-classification"} <= set(sections)
    lines = text.splitlines()
    after = lines[sections["--task causal-lm"]:]
    assert any(line.strip().startswith("--text-file") for line in after)


def test_yaml_and_flags_spell_the_same_options(tmp_path):
    from hfprune.app.apps import app_for_task, recipe_from_dict
    from hfprune.app.cli.flags import recipe_data
    from hfprune.app.cli.main import build_parser
    from hfprune.app.common.recipe import apply_overrides

    text = tmp_path / "t.txt"
    text.write_text("a b\nc d\n")
    argv = ["prune", "--task", "causal-lm", "--model", "m", "--output", "o", "--text-file", str(text), "--heads",
            "0.25", "--uniform", "--batch-size", "2", "--recover-steps", "3", "--seed", "4"]
    args = build_parser().parse_args(argv)
    data = recipe_data(args, args.option_flags, app_for_task("causal-lm"), "causal-lm")
    from_flags = recipe_from_dict(apply_overrides(data, ["data.eval_fraction=0.5"]), source="command line")
    from_yaml = recipe_from_dict({"model": {"name_or_path": "m"}, "output": {"dir": "o"}, "seed": 4,
                                  "data": {"task": "causal-lm", "text_file": str(text), "batch_size": 2,
                                           "eval_fraction": 0.5},
                                  "prune": {"heads": 0.25, "uniform": True}, "recover": {"steps": 3}})
    assert from_flags == from_yaml and type(from_flags).__name__ == "CausalLMRecipe"
    args = build_parser().parse_args(["prune", "--task", "sst2", "--model", "m", "--output", "o", "--batch-size", "8",
                                      "--distill", "--heads", "0.5", "--recover-steps", "1"])
    glue = recipe_from_dict(recipe_data(args, args.option_flags, app_for_task("sst2"), "sst2"), "command line")
    assert glue.finetune.batch_size == glue.recover.batch_size == 8 and glue.recover.distill["alpha"] == 0.5


def test_trainer_bars_only_on_a_terminal(tmp_path, monkeypatch):
    from torch import nn

    from hfprune.app.common import progress
    from hfprune.app.common.training import make_trainer

    class Tty:
        def isatty(self):
            return True

    model = nn.Linear(2, 2)
    assert make_trainer(model, work_dir=tmp_path).args.disable_tqdm  # pytest's stderr is not a terminal
    monkeypatch.setattr(progress.sys, "stderr", Tty())
    assert not make_trainer(model, work_dir=tmp_path).args.disable_tqdm
    assert make_trainer(model, work_dir=tmp_path, quiet=True).args.disable_tqdm
