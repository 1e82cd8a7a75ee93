"""lm-evaluation-harness on the in-memory model (`--lm-eval-tasks`): registered tasks by name, or local task YAMLs
from a folder (`--lm-eval-include`, lm-eval's `include_path`). lm-eval is optional (`pip install lm-eval`)."""

from __future__ import annotations

import re
from pathlib import Path


def require_lm_eval(flag: str = "--lm-eval-tasks") -> None:
    """One clear error when lm-eval is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ValueError(f"{flag} needs lm-evaluation-harness, which is not installed (pip install lm-eval)") from None


def task_names(tasks: str, flag: str = "--lm-eval-tasks") -> list[str]:
    """`"a,b"` -> `["a", "b"]`; at least one name."""
    names = [t.strip() for t in str(tasks).split(",") if t.strip()]
    if not names:
        raise ValueError(f"{flag}: give at least one task name, e.g. {flag} hellaswag,arc_easy")
    return names


def check_include(include: str | None, flag: str = "--lm-eval-include") -> None:
    if include is not None and not Path(include).is_dir():
        raise ValueError(f"{flag} {include!r} is not a folder (it holds lm-eval task YAML files)")


def local_tasks(include_path: str | None) -> set[str]:
    """The `task:` names that the YAML files under `include_path` define."""
    if include_path is None:
        return set()
    names = set()
    for path in Path(include_path).rglob("*.y*ml"):
        names.update(re.findall(r"^task:\s*['\"]?([\w.-]+)", path.read_text(encoding="utf-8"), flags=re.M))
    return names


def run_lm_eval(model, tokenizer, tasks: list[str], batch_size: int, include_path: str | None = None,
                limit: int | None = None) -> dict:
    """`{task: {metric: value}}` of lm-eval's `simple_evaluate` on `model` through its `HFLM` wrapper (lm-eval's
    `"acc,none"` keys become `"acc"`; standard errors and aliases are dropped)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's own thousands of task YAMLs takes seconds: skipped when the local folder has every task.
    defaults = not set(tasks) <= local_tasks(include_path)
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=defaults)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(model=wrapped, tasks=tasks, task_manager=manager, limit=limit,
                                      log_samples=False).get("results", {})
    return {task: {key.split(",")[0]: float(value) for key, value in metrics.items()
                   if isinstance(value, (int, float)) and "stderr" not in key}
            for task, metrics in results.items()}
