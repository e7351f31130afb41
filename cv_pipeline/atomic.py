"""Atomic file and folder writes: write to a temporary name beside the target, then rename.

A reader (or a crash) therefore only ever sees the old complete file or the new complete one.
Temporary names start with "." so globs over the data folder never pick them up. What is published
gets the permissions an ordinary `open()` would give (mkstemp/mkdtemp create 0600/0700, which
would lock out a webserver or a colleague running under another user). What is published is fsynced
before the rename (a folder's every file too), and the parent folder after it, so that a power loss
right after success can neither undo it nor leave short files behind it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    # /proc says it without changing it (os.umask can only be read by setting it, racy in threads).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    _fsync_path(str(folder), os.O_RDONLY)


# A temporary file untouched this long belongs to a writer that was killed (SIGKILL, out of memory,
# a lost node): every writer here fills its file within seconds of creating it.
STALE_TMP_S = 3600


def _remove_stale_tmps(target: Path, suffix: str) -> None:
    # A killed writer's temporary file would otherwise stay, as large as the output, for good.
    # Only old ones: a concurrent writer of the same target may be filling a fresh one.
    cutoff = time.time() - STALE_TMP_S
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*{glob.escape(suffix)}.tmp"):
        try:
            if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:  # gone already, or not ours to remove
            pass


@contextlib.contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; rename it over ``target`` on success.

    Temporary files of ``target`` that killed writers left (older than ``STALE_TMP_S``) are removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmps(target, suffix)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # make the bytes durable before the rename publishes them
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: Path | str, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: Path | str, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: Path | str, obj: Any, *, indent: int | None = 1) -> Path:
    """Deterministic JSON (sorted keys) so that equal content gives byte-identical files."""
    return write_text(target, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """An inter-process lock (flock): two runs writing the same folder take turns instead of racing."""
    import fcntl

    with open(lock_file, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ordinary_permissions(folder: Path) -> None:
    """The folder and everything in it get the modes an ordinary mkdir()/open() gives (umask applied).

    Not only mkdtemp's 0700: some writers create 0600 files whatever the umask (safetensors' save_file,
    which save_pretrained uses), and shutil.copy2 carries that on. An executable file stays executable."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):  # a link's target lies outside what is published
                os.chmod(path, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not os.path.islink(path):  # an executable stays one (for everyone the umask allows)
                os.chmod(path, (0o777 if st.st_mode & 0o111 else 0o666) & ~mask)


def _fsync_tree(folder: Path) -> None:
    """Make every file in ``folder``, and the folders that name them, durable before a rename publishes them:
    without it a power loss right after the swap could leave the new folder with empty or short files
    (save_pretrained and the datasets library do not fsync what they write)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                _fsync_path(path, os.O_RDONLY)
        _fsync_path(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path: str, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. a platform that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _aside_and_lock(target: Path) -> tuple[Path, Path]:
    """Where a swap of ``target`` moves the old folder, and the lock its writers hold."""
    return target.parent / f".{target.name}.old.dirtmp", target.parent / f".{target.name}.lock"


def _restore_aside(old: Path, target: Path) -> None:
    """Put the folder a swap moved aside back, if the new one never arrived: no ``target``, or an empty folder
    in its place (one a reader's ``mkdir`` made meanwhile; a swap never publishes an empty folder here)."""
    if not old.is_dir():
        return
    if target.is_dir() and not target.is_symlink():
        try:
            target.rmdir()  # only an empty one
        except OSError:
            return
    if not os.path.lexists(target):
        os.replace(old, target)


def settled_dir(target: Path | str) -> Path:
    """``target`` as the last complete swap left it, for a reader: if a writer died between its two renames,
    the old folder is put back first (under the writers' lock), so the reader neither finds nothing nor
    creates an empty folder that would hide the old one. A reader that may not write there (a read-only
    mount, another user) reads the old folder where it lies."""
    target = Path(target)
    old, lock = _aside_and_lock(target)
    if old.is_dir():
        try:
            with exclusive(lock):
                _restore_aside(old, target)
        except PermissionError:
            if not target.is_dir() or not any(target.iterdir()):
                return old
    return target


def _delete_dir(folder: Path) -> None:
    """Rename, then delete: a deletion cut short never leaves a partial folder under a name that means something
    (the old folder's is the one a later swap restores from)."""
    doomed = Path(tempfile.mkdtemp(prefix=f".{folder.name.lstrip('.')}.", suffix=".dirtmp", dir=folder.parent))
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; swap it in for ``target`` on success.

    The old folder is moved aside to ``.<name>.old.dirtmp`` first and deleted only after the new
    one is in place. If the second rename fails, the old folder is moved back; if the process dies
    between the two renames, the next writer (or reader, through ``settled_dir``) finds no ``target``,
    or an empty folder, beside an ``.old`` folder and restores it before anything else. So ``target``
    only ever holds the old complete folder or the new one. Writers of the same target hold a lock, so
    a scheduled run and a manual one cannot interleave their swaps or delete each other's work in
    progress.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old, lock = _aside_and_lock(target)
    with exclusive(lock):
        _restore_aside(old, target)  # a writer died mid-swap
        # What is left of killed writers: their temporary folders, and an old folder they had not deleted yet
        # (the target beside it is the newer, complete one).
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.dirtmp"):
            if leftover == old:
                with contextlib.suppress(OSError):  # said below, clearly
                    _delete_dir(old)
            else:
                shutil.rmtree(leftover, ignore_errors=True)
        if old.exists():  # the swap would fail at its end, losing what this writer made
            raise OSError(f"{old} is left from an earlier write and cannot be removed: delete it, then run again")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".dirtmp", dir=target.parent))
        try:
            yield tmp
            _ordinary_permissions(tmp)
            _fsync_tree(tmp)
            if target.exists():
                os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                _restore_aside(old, target)
                raise
            _fsync_dir(target.parent)
            if old.is_dir():
                _delete_dir(old)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
