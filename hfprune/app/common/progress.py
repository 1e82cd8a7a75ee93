"""Stage timing, the one-line summaries a run prints (silenced by `--quiet`), and progress bars only on a terminal.

A bar redraws itself with carriage returns: on a terminal that is one moving line, in a log file or a pipe
(`hfprune demo 2>&1 | cat`) a wall of them. So bars are shown only when stderr is a TTY and the run is not quiet;
otherwise the stage lines (and the Trainer's log lines) say how far the run got.
"""

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


def show_bars(quiet: bool = False, stream=None) -> bool:
    """Whether progress bars may be drawn: not `quiet`, and `stream` (default: stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not quiet and bool(isatty and isatty())


@contextmanager
def quiet_libraries(quiet: bool):
    """While inside: transformers' and datasets' progress bars off unless `show_bars(quiet)`, and their logging at
    error level when `quiet` (both restored on exit)."""
    if show_bars(quiet):
        yield
        return
    import datasets
    import transformers

    tf_level = transformers.logging.get_verbosity()
    ds_level = datasets.logging.get_verbosity()
    ds_bars = datasets.is_progress_bar_enabled()
    tf_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if quiet:
        transformers.logging.set_verbosity_error()
        datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(tf_level)
        datasets.logging.set_verbosity(ds_level)
        if ds_bars:
            datasets.enable_progress_bars()
        if tf_bars:
            transformers.utils.logging.enable_progress_bar()


@contextmanager
def block_progress(blocks, log: StageLog, stage: str, every: float = 5.0):
    """Stage lines while a long stage runs the model's blocks (`[hfprune] prune: at block 7 of 30 (12 s)`), at most
    one per `every` seconds, none when the log is quiet; a stage shorter than `every` prints nothing extra."""
    blocks = list(blocks)
    start = last = time.perf_counter()

    def hook(index: int):
        def pre(module, args):
            nonlocal last
            now = time.perf_counter()
            if now - last >= every:
                last = now
                log.info(f"{stage}: at block {index + 1} of {len(blocks)} ({now - start:.0f} s)")
        return pre

    handles = [] if log.quiet else [b.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
