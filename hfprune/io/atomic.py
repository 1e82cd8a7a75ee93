"""The one atomic writer of hfprune: every folder and file it writes goes through `atomic_dir` or `write_atomic`.

A folder is written into a temporary sibling (`.NAME.tmp-<pid>-<hex>`), its files and folders are fsynced, then it is
swapped into place: in one step where the system can exchange two folders (Linux `renameat2`), else in two renames
with a rollback, so an interrupted write leaves the old output or the new one, never neither. An existing output is
replaced only when an earlier hfprune write made it (`OUTPUT_MARKER_NAME` in it), when it is empty, or when the caller
passes `overwrite=True`; a path that is a file is always refused. The temporaries of a write that died (SIGKILL,
power loss) are removed by the next write to the same target, and a backup left between the two renames is moved
back first.

Both writers give their output the umask's mode, as `mkdir` and `open` do: `tempfile.mkdtemp` / `mkstemp` would make
it owner-only (0700 / 0600), which a server or a teammate could not read. safetensors (0.8) writes its files
owner-only too, so `atomic_dir` sets the mode of everything in the folder before moving it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path

from .names import OUTPUT_MARKER_NAME
from .stale import stale_siblings

# Temporaries this process is writing right now (their names): never stale, whatever the pid says.
_IN_FLIGHT: set[str] = set()


def check_output(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise unless `output_dir` may be (re)written: absent, an empty folder, a folder an earlier hfprune write made
    (it holds `OUTPUT_MARKER_NAME`), or any folder with `overwrite=True`. Nothing is changed.

    Raises:
        FileExistsError: `output_dir` is a file (always refused), or a folder with other files and no marker; the
            message names the path.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"output {output_dir} is a file, not a folder; hfprune writes a folder there and never "
                              "replaces a file (choose another path, or remove the file)")
    if output_dir.is_dir() and not overwrite and not is_hfprune_output(output_dir) and any(output_dir.iterdir()):
        found = sorted(p.name for p in output_dir.iterdir())
        raise FileExistsError(f"output folder {output_dir} exists and was not written by hfprune (no "
                              f"{OUTPUT_MARKER_NAME}; holds {found[:5]}); pass overwrite=True to replace it, or "
                              "choose another folder")
    return output_dir


def is_hfprune_output(folder: str | os.PathLike) -> bool:
    """Whether `folder` is an output of an earlier hfprune write (it holds `OUTPUT_MARKER_NAME`)."""
    return (Path(folder) / OUTPUT_MARKER_NAME).is_file()


@contextmanager
def atomic_dir(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to `output_dir`; on success it replaces `output_dir`, on error it is removed.

    An interrupted run never leaves a half-written folder, and an earlier `output_dir` is replaced only once the new
    one is complete and fsynced. The folder gets `OUTPUT_MARKER_NAME`, and it and everything in it the umask's mode
    (files: without the execute bits).

    Args:
        output_dir (`str` or `os.PathLike`): the folder to write.
        overwrite (`bool`, defaults to `False`): replace an existing folder that hfprune did not write.

    Raises:
        FileExistsError: `output_dir` is a file, or a folder hfprune did not write (see `check_output`); checked
            before the body runs and again before the swap. Nothing is touched then.

    Example:
        ```py
        >>> with atomic_dir("out/pruned") as tmp:
        ...     model.save_pretrained(tmp)
        ```
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_backup(output_dir)
    check_output(output_dir, overwrite)
    remove_stale(output_dir)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()  # mkdir follows the umask; the folder becomes the output
    _IN_FLIGHT.add(tmp.name)
    try:
        yield tmp
        _finish(tmp)
        check_output(output_dir, overwrite)  # something may have appeared there while the body ran
        replace_dir(tmp, output_dir)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _IN_FLIGHT.discard(tmp.name)


def _finish(tmp: Path) -> None:
    """Marker, the umask's mode, and everything on disk before the swap."""
    marker = {"written_by": "hfprune", "note": "a later hfprune write may replace this folder"}
    (tmp / OUTPUT_MARKER_NAME).write_text(json.dumps(marker) + "\n")
    _follow_umask(tmp)
    fsync_tree(tmp)


def _follow_umask(folder: Path) -> None:
    """Give everything below `folder` the umask's mode, read off `folder` itself (made by mkdir: 0o777 & ~umask)."""
    dir_mode = stat.S_IMODE(folder.stat().st_mode) & 0o777
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(dir_mode if path.is_dir() else dir_mode & 0o666)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder below `folder`, and `folder` itself."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir() and not path.is_symlink():
            fsync_dir(path)
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """fsync a folder's entries (a rename is durable only then); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the data files were synced
    finally:
        os.close(fd)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`. An existing `dst` is swapped out in one step where the system can
    (`exchange`), else renamed to a backup first and moved back if the second rename fails; then removed."""
    src, dst = Path(src), Path(dst)
    if not dst.exists() and not dst.is_symlink():
        rename(src, dst)
        fsync_dir(dst.parent)
        return
    if exchange(src, dst):  # src now holds the old output
        fsync_dir(dst.parent)
        _remove(src)
        return
    backup = dst.with_name(f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex}")
    _IN_FLIGHT.add(backup.name)
    try:
        rename(dst, backup)
        try:
            rename(src, dst)
        except BaseException:
            os.rename(backup, dst)  # the rollback: the old output is back where it was
            raise
        fsync_dir(dst.parent)
        _remove(backup)
    finally:
        _IN_FLIGHT.discard(backup.name)


def rename(src: Path, dst: Path) -> None:
    """One rename of `replace_dir` (a function of its own so that tests can fail it)."""
    os.rename(src, dst)


def exchange(src: Path, dst: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); `False` where the system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_exchange) == 0


def recover_backup(output_dir: Path) -> None:
    """Where a write died between its two renames (`output_dir` gone, its backup left), move the backup back."""
    if output_dir.exists() or output_dir.is_symlink():
        return
    backups = [p for p in stale_siblings(output_dir, _IN_FLIGHT) if ".old-" in p.name and p.is_dir()]
    if backups:
        newest = max(backups, key=lambda p: p.stat().st_mtime)
        os.rename(newest, output_dir)


def remove_stale(target: Path) -> None:
    """Remove the temporaries and backups of earlier writes to `target` that died (see `hfprune.io.stale`)."""
    for path in stale_siblings(target, _IN_FLIGHT):
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to the file `path` through a temporary file in the same folder, so no reader sees half a file.

    The file is fsynced before it replaces `path`, and the folder after. A new file gets the umask's mode (as
    `open(path, "w")` would); a file that is replaced keeps its mode. Temporaries of earlier writes that died are
    removed.

    Args:
        path (`str` or `os.PathLike`): the file; its folder must exist.
        data (`str` or `bytes`): the whole content (text is written as UTF-8).

    Returns:
        `Path`: the file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; write_atomic writes a file")
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
    remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


__all__ = ["atomic_dir", "check_output", "is_hfprune_output", "replace_dir", "write_atomic"]
