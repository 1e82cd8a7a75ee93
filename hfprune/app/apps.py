"""The applications, one entry each: the tasks it runs, its options class, its run function and its summary lines.

`hfprune run` and `hfprune prune` pick the application from `data.task` here and nowhere else; which keys and flags
an application takes is read from its options class (`common.options`), so nothing keeps a list of what does not
apply where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .causal_lm.options import CAUSAL_LM_TASK, CausalLMRecipe
from .causal_lm.report import print_summary as print_lm_summary
from .causal_lm.run import run_causal_lm
from .common.recipe import RecipeError, options_field, options_from_dict, read_recipe
from .common.render import print_summary
from .glue.options import GlueRecipe
from .glue.run import run_glue
from .glue.tasks import GLUE_TASKS, get_task
from .image.options import IMAGE_TASK, ImageRecipe
from .image.run import run_image


def _is_glue_task(name: str) -> bool:
    try:
        get_task(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class App:
    """One application.

    Args:
        name (`str`): its package under `hfprune.app` (`glue`, `image`, `causal_lm`).
        title (`str`): how messages and `--help` name it.
        tasks (`tuple[str, ...]`): the `data.task` values it runs (as listed to users).
        matches (`Callable[[str], bool]`): whether a `data.task` value is one of its tasks (aliases too).
        options (`type`): its options dataclass (sections + top-level scalars).
        run (`Callable`): `run(options, quiet=...) -> results dict` (what results.json holds).
        summary (`Callable`): `summary(results, out_dir)` prints the final lines.
    """

    name: str
    title: str
    tasks: tuple[str, ...]
    matches: Callable[[str], bool]
    options: type
    run: Callable[..., dict]
    summary: Callable[[dict, str], None]

    @property
    def task_label(self) -> str:
        return self.tasks[0] if len(self.tasks) == 1 else f"<{self.title} task>"


APPS = (
    App("glue", "GLUE", tuple(GLUE_TASKS), _is_glue_task, GlueRecipe, run_glue, print_summary),
    App("image", "image-classification", (IMAGE_TASK,), lambda t: t == IMAGE_TASK, ImageRecipe, run_image,
        print_summary),
    App("causal_lm", "causal-lm", (CAUSAL_LM_TASK,), lambda t: t == CAUSAL_LM_TASK, CausalLMRecipe, run_causal_lm,
        print_lm_summary),
)
ALL_TASKS = tuple(t for app in APPS for t in app.tasks)


def app_for_task(task) -> App:
    """The application that runs `task`.

    Raises:
        ValueError: no application runs it; the message lists every task.
    """
    name = str(task).strip().lower()
    for app in APPS:
        if app.matches(name):
            return app
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(ALL_TASKS)}")


def app_for_options(options) -> App:
    for app in APPS:
        if isinstance(options, app.options):
            return app
    raise TypeError(f"{type(options).__name__} is not the options of an application")


def _task_of(data) -> str:
    section = data.get("data") if isinstance(data, dict) else None
    return str(section.get("task", "")) if isinstance(section, dict) else ""


def recipe_from_dict(data: dict, source: str = "recipe"):
    """Validate a nested dict (a parsed YAML recipe, or flags) into the options of the application of `data.task`.

    Raises:
        RecipeError: an unknown task or key (named with its section; a key of another application says so), a wrong
            type or an out-of-range value.
    """
    task = _task_of(data)
    try:
        app = app_for_task(task)
    except ValueError as err:
        raise RecipeError(f"{source}: data.task: {err}") from None
    others = {other.title: other.options for other in APPS if other is not app}
    return options_from_dict(app.options, data, source, task=task, others=others)


def load_recipe(path: str | Path, overrides: list[str] | None = None):
    """Load a YAML recipe with `yaml.safe_load`, apply `--set` overrides and validate (see `recipe_from_dict`).

    Example:
        ```python
        >>> recipe = load_recipe("recipes/sst2.yaml", ["data.data_dir=../shared/data/glue", "finetune.steps=100"])
        ```
    """
    return recipe_from_dict(read_recipe(path, overrides), source=str(path))


def run_recipe(options, *, quiet: bool = False) -> dict:
    """Run validated options with their application; returns results.json's content."""
    return app_for_options(options).run(options, quiet=quiet)


def print_recipe_summary(options, results: dict) -> None:
    """The application's final lines for `results` (always printed, also with --quiet)."""
    app_for_options(options).summary(results, options.output.dir)


def field_help(dotted: str) -> str:
    """The help text of `section.key` (or a top-level key) in the first application that has it.

    Raises:
        KeyError: no application has the key.
    """
    for app in APPS:
        try:
            return options_field(app.options, dotted).metadata.get("help", "")
        except KeyError:
            continue
    raise KeyError(dotted)
