"""Stage timing and the one-line summaries a run prints (silenced by `--quiet`)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class StageLog:
    """Times named stages and prints one summary line per stage to stderr (unless `quiet`).

    Example:
        ```python
        >>> log = StageLog(quiet=False)
        >>> with log.stage("finetune") as note:
        ...     note["summary"] = "200 steps, loss 0.31"
        [hfprune] finetune: 200 steps, loss 0.31 (12.3 s)
        ```
    """

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        # Runtime state: wall seconds per finished stage, in order.
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        note: dict = {"summary": ""}
        t0 = time.perf_counter()
        yield note
        elapsed = time.perf_counter() - t0
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        self.info(f"{name}: {note['summary']} ({elapsed:.1f} s)" if note["summary"] else f"{name} ({elapsed:.1f} s)")

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"[hfprune] {message}", file=self.stream, flush=True)

    @property
    def total_seconds(self) -> float:
        return time.perf_counter() - self._start


@contextmanager
def quiet_libraries(quiet: bool):
    """Silence transformers' and datasets' logging and progress bars while `quiet` (restored on exit)."""
    if not quiet:
        yield
        return
    import datasets
    import transformers

    tf_level = transformers.logging.get_verbosity()
    ds_level = datasets.logging.get_verbosity()
    ds_bars = datasets.is_progress_bar_enabled()
    tf_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(tf_level)
        datasets.logging.set_verbosity(ds_level)
        if ds_bars:
            datasets.enable_progress_bars()
        if tf_bars:
            transformers.utils.logging.enable_progress_bar()


def print_summary(results: dict, out_dir) -> None:
    """The final lines of `run` / `prune` (always printed, also with --quiet)."""
    from .markdown import _num

    split, metric = results["eval_split"], results["metric"]
    print(f"{results['task']} {split} {metric}: dense {_num(results['dense']['metric'])} -> pruned "
          f"{_num(results['pruned']['metric'])}; params {results['params_ratio']:.1%}, "
          f"FLOPs {results['flops_ratio']:.1%}, "
          f"CPU speedup {results['speedup']:.2f}x; wall {results['wall_seconds']:.0f} s")
    print(f"outputs in {out_dir}: {', '.join(results['files'])}")
