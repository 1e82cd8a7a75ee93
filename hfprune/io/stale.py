"""Temporaries left next to a target by a write that died: which of them are stale (safe to remove or recover).

`hfprune.io.atomic` names them `.NAME.tmp-<pid>-<hex>` (the folder or file being written) and `.NAME.old-<pid>-<hex>`
(the earlier output, between the two renames of a swap). One is stale when the process that made it is gone, or when
it is this process's and no write of this process is using it. Names without a pid (older hfprune) are stale.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

_SUFFIX = re.compile(r"(?P<pid>\d+)(?:-[0-9a-f]{32})?|[0-9a-f]{32}")


def stale_siblings(target: Path, in_flight: Collection[str] = ()) -> list[Path]:
    """The stale `.NAME.tmp-*` / `.NAME.old-*` next to `target` (none when its folder does not exist).

    Args:
        target (`Path`): the output folder or file.
        in_flight (`Collection[str]`): names this process is writing right now (never stale).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    found = []
    for kind in ("tmp", "old"):
        prefix = f".{target.name}.{kind}-"
        for path in target.parent.glob(f"{glob_escape(prefix)}*"):
            if path.name not in in_flight and is_stale(path.name[len(prefix):]):
                found.append(path)
    return sorted(found)


def is_stale(suffix: str) -> bool:
    """Whether the writer named by a temporary's suffix (`<pid>-<hex>`, `<pid>` or `<hex>`) is gone."""
    match = _SUFFIX.fullmatch(suffix)
    if match is None:
        return False  # not a name hfprune makes: leave it alone
    if match.group("pid") is None:
        return True
    pid = int(match.group("pid"))
    return pid == os.getpid() or not _alive(pid)  # this process's own: not in flight (the caller checked)


def _alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would end the process there; keep its files
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return True  # cannot tell: keep its files
    return True


def glob_escape(text: str) -> str:
    """`text` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)
