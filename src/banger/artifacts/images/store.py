"""Managed image storage: list, load, remove, publish, and clean up after crashes.

Every in-flight artifact lives in a fresh directory under tmp_dir whose name starts
with `image-`, and reaches images_dir only through one atomic rename; so images_dir
never holds a half-built image, and sweep_tmp (run when nothing is building: the
daemon calls it at start) removes whatever an interrupted build left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from banger.artifacts.images.info import ImageInfo, check_name, quick_check, read_info
from banger.errors import BangerError, NotFound
from banger.system import run

# Everything this package creates in tmp_dir starts with this, so sweep_tmp can clean
# up after us without touching other builders (kernels) that share the directory.
TMP_PREFIX = "image-"


def load_image(images_dir: Path, name: str) -> ImageInfo | None:
    """The managed image `name`, or None if it is absent or its image.json is unusable."""
    if not name or name.startswith(".") or "/" in name:
        return None
    info = read_info(images_dir / name)
    return info if info is not None and info.name == name else None


def intact_image(images_dir: Path, name: str) -> ImageInfo | None:
    """load_image, and only if every file is there with its recorded size."""
    info = load_image(images_dir, name)
    return info if info is not None and not quick_check(info) else None


def list_images(images_dir: Path) -> list[ImageInfo]:
    """Managed images with a readable image.json, by name (hidden entries skipped)."""
    if not images_dir.is_dir():
        return []
    found = (
        load_image(images_dir, d.name)
        for d in sorted(images_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    )
    return [i for i in found if i is not None]


def remove_image(images_dir: Path, name: str, tmp_dir: Path) -> None:
    """Delete managed image `name`. It leaves images_dir atomically (a rename into
    tmp_dir), then is deleted; an interrupted delete is finished by sweep_tmp."""
    src = images_dir / name
    if not name or name.startswith(".") or "/" in name or not src.is_dir():
        raise NotFound(f"image {name!r} is not in managed storage", hint="see `banger image list`")
    trash = new_work_dir(tmp_dir, f"rm-{name}")
    publish_rename(src, trash / name)
    remove_tree(trash)


def new_work_dir(tmp_dir: Path, what: str) -> Path:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{what}-", dir=tmp_dir))


def publish_rename(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise BangerError(
                f"cannot move {src} to {dst}: they are on different filesystems",
                hint="keep banger's tmp and images directories on one filesystem",
            ) from exc
        raise


def publish(out: Path, images_dir: Path, name: str, work: Path) -> ImageInfo:
    """Rename the finished image directory `out` to images_dir/name, atomically.

    When a concurrent pull got there first, its image is returned and ours dropped; a
    broken leftover under the name is moved into `work` (deleted with it).
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    dest = images_dir / name
    if dest.exists():
        if (won := intact_image(images_dir, name)) is not None:
            return won
        publish_rename(dest, work / "stale")
    try:
        publish_rename(out, dest)
    except OSError as exc:
        won = intact_image(images_dir, name)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and won is not None:
            return won
        raise
    _fsync_dir(images_dir)
    info = load_image(images_dir, name)
    if info is None:
        raise BangerError(f"image {name} was published but its image.json cannot be read")
    return info


def fsync_tree(directory: Path) -> None:
    """Flush every file in `directory` (not recursive) and the directory itself, so a
    crash after the publishing rename cannot leave an image.json naming lost data."""
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def build_lock(tmp_dir: Path, name: str) -> Iterator[None]:
    """Serialise builds of one image name across threads and processes (flock)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp_dir / f".{TMP_PREFIX}{check_name(name)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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


def sweep_tmp(tmp_dir: Path) -> list[Path]:
    """Remove leftovers of interrupted image builds/promotes/removals; returns them.

    Only call it when no image work is running (the daemon does, at start).
    """
    if not tmp_dir.is_dir():
        return []
    removed = []
    for entry in sorted(tmp_dir.iterdir()):
        if entry.name.startswith(TMP_PREFIX):
            remove_tree(entry)
            removed.append(entry)
    return removed
