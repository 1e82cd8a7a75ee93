"""Progress bars only on a terminal, log lines otherwise.

A tqdm bar redraws itself with carriage returns: on a terminal that is one moving line, in a log file or a pipe a
wall of them. Every pass of the library draws its bar through `progress`, which draws only when asked, on the main
process, and when stderr is a TTY; otherwise it logs one line when the pass starts and one when it ends.
"""

from __future__ import annotations

import logging
import sys
import time

from .distributed import is_main_process

logger = logging.getLogger("hfprune")


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _LogLines:
    """The stand-in for a bar off a terminal: a line at the start and one at the end (INFO level)."""

    def __init__(self, total: int | None, desc: str, enabled: bool):
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0
        self._t0 = time.perf_counter()
        if enabled:
            logger.info("%s: started%s", desc, f" ({total} steps)" if total else "")

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        if self.enabled:
            logger.info("%s: %d steps in %.1f s", self.desc, self.n, time.perf_counter() - self._t0)
            self.enabled = False


def progress(total: int | None, desc: str, show: bool):
    """A bar with `update(n)` / `close()`: tqdm on a terminal, log lines elsewhere, nothing when `show` is False.

    Example:
        ```python
        >>> bar = progress(3, "scoring", show=True)   # a pipe or a log file: two log lines, no carriage return
        >>> for _ in range(3):
        ...     bar.update(1)
        >>> bar.close()
        ```
    """
    show = show and is_main_process()
    if show and stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    return _LogLines(total, desc, show)
