"""Atomic publishing of managed artifacts (kernels, images), and cleaning up after it.

Every build, and every removal, works in a fresh directory under the shared tmp_dir
whose name starts with its package's prefix (`kernel-`, `image-`), and an artifact
enters or leaves its store directory only through one `os.rename`. So a store never
holds a half-written artifact, and `sweep_tmp` (run when nothing is building: the
daemon calls it at start) removes whatever an interrupted build left behind. A work
directory is flock()ed by the process using it, so a sweep by another daemon sharing
the data directory (tests and benchmarks share one artifact cache) skips it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from banger.errors import BangerError
from banger.system import run

T = TypeVar("T")


def is_plain_name(name: str) -> bool:
    """A name that stays one level inside its store (no '', '.', '..', hidden or '/')."""
    return bool(name) and not name.startswith(".") and "/" not in name


@contextlib.contextmanager
def work_dir(tmp_dir: Path, prefix: str) -> Iterator[Path]:
    """A fresh directory under tmp_dir, removed afterwards whatever happens (and by
    sweep_tmp if the process dies first, which is why `prefix` must be the package's)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_dir))
    # Held until the work is gone; the kernel drops it if this process dies.
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield work
    finally:
        try:
            remove_tree(work)
        finally:
            os.close(fd)


def rename(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise BangerError(
                f"cannot move {src} to {dst}: they are on different filesystems",
                hint="keep banger's tmp, kernels and images directories on one filesystem",
            ) from exc
        raise


def publish(out: Path, dest: Path, work: Path, intact: Callable[[], T | None]) -> T:
    """Rename the finished directory `out` to `dest` atomically; returns `intact()`.

    `intact` loads what is at `dest`, or None when nothing usable is there. When a
    concurrent build got there first, its result is returned and ours dropped; a
    broken leftover at `dest` is moved into `work` (deleted with it).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if (won := intact()) is not None:
            return won
        rename(dest, work / "stale")
    try:
        rename(out, dest)
    except OSError as exc:
        won = intact()
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and won is not None:
            return won
        raise
    fsync_dir(dest.parent)
    if (info := intact()) is None:
        raise BangerError(f"{dest} was published but its manifest cannot be read")
    return info


def discard(src: Path, tmp_dir: Path, prefix: str) -> None:
    """Delete the directory `src`: it leaves its store atomically (a rename into a
    work dir), then is deleted; an interrupted delete is finished by sweep_tmp."""
    with work_dir(tmp_dir, prefix) as trash:
        rename(src, trash / src.name)


def sweep_tmp(tmp_dir: Path, prefix: str) -> list[Path]:
    """Remove the leftovers whose names start with `prefix`; returns them.

    A work directory some live process still holds (its flock, see `work_dir`) is
    left alone, so a daemon starting beside another one on the same data directory
    does not pull a build out from under it.
    """
    if not tmp_dir.is_dir():
        return []
    removed = []
    for entry in sorted(tmp_dir.iterdir()):
        if not entry.name.startswith(prefix):
            continue
        if entry.is_dir() and not entry.is_symlink():
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue  # finished meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use
                _remove_settled(entry)
            finally:
                os.close(fd)
        else:
            remove_tree(entry)
        removed.append(entry)
    return removed


def _remove_settled(entry: Path, settle: float = 5.0) -> None:
    """remove_tree, again while something still adds to the tree: a child the dead
    process left (it gets SIGTERM with its parent, see system.run) may finish writing a
    file after the walk listed its directory."""
    deadline = time.monotonic() + settle
    while True:
        remove_tree(entry)
        if not entry.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def fsync_tree(directory: Path) -> None:
    """Flush every file in `directory` (not recursive) and the directory itself, so a
    crash after the publishing rename cannot leave a manifest naming lost data."""
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path.resolve())
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mnt = line.split()[4].encode().decode("unicode_escape")
                if mnt == prefix or mnt.startswith(prefix + "/"):
                    found.append(mnt)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that never deletes through a mount.

    A build killed while mmdebstrap had /dev, /proc and /sys mounted inside its tree
    would otherwise turn this into deleting the host's device nodes. Mounts are
    detached first (lazily: they may still be busy) and, as a second guard, the walk
    skips anything on another filesystem.
    """
    if not path.exists() and not path.is_symlink():
        return
    for mnt in _mounts_under(path):
        run(["umount", "--lazy", mnt], check=False)
    if remaining := _mounts_under(path):
        raise BangerError(
            f"cannot remove {path}: {remaining[0]} is still mounted",
            hint=f"unmount it (umount -R {remaining[0]}) and try again",
        )
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    _remove_same_fs(path, path.lstat().st_dev)
    with contextlib.suppress(OSError):
        path.rmdir()


def _remove_same_fs(directory: Path, dev: int) -> None:
    with os.scandir(directory) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.stat(follow_symlinks=False).st_dev != dev:
                continue  # another filesystem: never descend (rmdir below then fails)
            _remove_same_fs(Path(entry.path), dev)
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)
        else:
            os.unlink(entry.path)
