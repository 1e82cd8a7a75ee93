"""Old import paths of the application, which moved into `hfprune.app` (`hfprune.recipes` -> `hfprune.app.recipes`).

One meta-path finder maps every old name, and everything below it, to the moved module itself (the same object, not
a copy): `import hfprune.recipes.runner`, `from hfprune.demo import run_demo`, `monkeypatch.setattr(...)` on an old
path and `python -m hfprune.cli.main` keep working. Nothing is imported until an old name is asked for, so
`import hfprune` stays free of the application. New code imports `hfprune.app...`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

# old top-level name under hfprune -> where it lives now
MOVED = {
    "cli": "hfprune.app.cli",
    "data": "hfprune.app.data",
    "demo": "hfprune.app.cli.demo",
    "metrics": "hfprune.app.metrics",
    "recipes": "hfprune.app.recipes",
    "report": "hfprune.app.report",
}


def new_name(fullname: str) -> str | None:
    """`hfprune.recipes.runner` -> `hfprune.app.recipes.runner`; None for a name that did not move."""
    package, _, rest = fullname.partition(".")
    if package != "hfprune" or not rest:
        return None
    head, dot, tail = rest.partition(".")
    return MOVED[head] + dot + tail if head in MOVED else None


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the already-importable new module (imported under its new name, then shared)."""

    def __init__(self, target: str):
        self.target = target
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import system has just set `module.__spec__` to the alias spec: give the module its own back, so
        # relative imports, reload and pickling keep using the new name.
        module.__spec__ = self._spec

    def get_code(self, fullname: str):
        # `python -m hfprune.demo` asks runpy for code: run the moved module as __main__ instead.
        source = f"import runpy\nrunpy.run_module({self.target!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, f"<{fullname}, moved to {self.target}>", "exec")


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        target_name = new_name(fullname)
        if target_name is None or importlib.util.find_spec(target_name) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(target_name))


def install() -> None:
    """Put the finder first on `sys.meta_path` (once), ahead of a stale `hfprune/cli/__pycache__` folder."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
