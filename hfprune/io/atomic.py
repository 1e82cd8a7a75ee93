"""The one atomic writer of hfprune: every folder and file it writes goes through `atomic_dir` or `write_atomic`.

Both give their output the umask's mode, as `mkdir` and `open` do: `tempfile.mkdtemp` / `mkstemp` would make it
owner-only (0700 / 0600), which a server or a teammate could not read. safetensors (0.8) writes its files owner-only
too, so `atomic_dir` sets the mode of everything in the folder before moving it into place.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(output_dir: str | os.PathLike):
    """Yield a temporary folder next to `output_dir`; on success it replaces `output_dir`, on error it is removed.

    An interrupted run never leaves a half-written folder, and an earlier `output_dir` is replaced only once the new
    one is complete. The folder and everything in it get the umask's mode (files: without the execute bits).

    Example:
        ```py
        >>> with atomic_dir("out/pruned") as tmp:
        ...     model.save_pretrained(tmp)
        ```
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # mkdir follows the umask; the folder becomes the output
    try:
        yield tmp
        _follow_umask(tmp)
        replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _follow_umask(folder: Path) -> None:
    """Give everything below `folder` the umask's mode, read off `folder` itself (made by mkdir: 0o777 & ~umask)."""
    dir_mode = stat.S_IMODE(folder.stat().st_mode) & 0o777
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(dir_mode if path.is_dir() else dir_mode & 0o666)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing what was there only once `src` is complete."""
    if dst.exists():
        backup = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(backup)
        src.rename(dst)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        src.rename(dst)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to the file `path` through a temporary file in the same folder, so no reader sees half a file.

    A new file gets the umask's mode (as `open(path, "w")` would); a file that is replaced keeps its mode.

    Args:
        path (`str` or `os.PathLike`): the file; its folder must exist.
        data (`str` or `bytes`): the whole content (text is written as UTF-8).

    Returns:
        `Path`: the file.
    """
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
