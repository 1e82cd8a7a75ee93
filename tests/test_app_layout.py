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
TRAINER_MODULES = ("hfprune.recovery.distill",)


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
