"""Managed image storage: list, load, remove, publish, and clean up after crashes.

Builds, promotes and removals work in directories under tmp_dir named `image-*` and
reach images_dir only through one atomic rename (see banger.artifacts.publish).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from banger.artifacts import publish as pub
from banger.artifacts.images.info import (
    ImageInfo,
    ImageManifest,
    check_name,
    quick_check,
    read_info,
    write_manifest,
)
from banger.artifacts.images.recipe import load_recipe, recipe_digest
from banger.errors import BangerError, NotFound

# Everything this package creates in tmp_dir starts with this, so sweep_tmp can clean
# up after us without touching other builders (kernels) that share the directory.
TMP_PREFIX = "image-"


def load_image(images_dir: Path, name: str) -> ImageInfo | None:
    """The managed image `name`, or None if it is absent or its image.json is unusable."""
    if not pub.is_plain_name(name):
        return None
    info = read_info(images_dir / name)
    return info if info is not None and info.name == name else None


def intact_image(images_dir: Path, name: str) -> ImageInfo | None:
    """load_image, and only if every file is there with its recorded size and it was
    built from the recipe banger ships now."""
    info = load_image(images_dir, name)
    if info is None or quick_check(info) or is_outdated(info):
        return None
    return info


def is_outdated(info: ImageInfo) -> bool:
    """True for a recipe-built image whose recipe (or guest agent) has changed since."""
    if not info.source.startswith("recipe:"):
        return False  # registered or promoted: not ours to rebuild
    try:
        recipe = load_recipe(info.source.removeprefix("recipe:"))
    except BangerError:
        return False
    return info.recipe_digest != recipe_digest(recipe)


def list_images(images_dir: Path) -> list[ImageInfo]:
    """Managed images with a readable image.json, by name (hidden entries skipped)."""
    if not images_dir.is_dir():
        return []
    found = (load_image(images_dir, d.name) for d in sorted(images_dir.iterdir()) if d.is_dir())
    return [i for i in found if i is not None]


def remove_image(images_dir: Path, name: str, tmp_dir: Path) -> None:
    """Delete managed image `name` (atomically gone from images_dir, then deleted)."""
    if not pub.is_plain_name(name) or not (images_dir / name).is_dir():
        raise NotFound(f"image {name!r} is not in managed storage", hint="see `banger image list`")
    pub.discard(images_dir / name, tmp_dir, f"{TMP_PREFIX}rm-{name}-")


def work_dir(tmp_dir: Path, what: str) -> contextlib.AbstractContextManager[Path]:
    """A fresh `image-<what>-*` directory under tmp_dir, removed when the block ends."""
    return pub.work_dir(tmp_dir, f"{TMP_PREFIX}{what}-")


def publish(out: Path, manifest: ImageManifest, images_dir: Path, work: Path) -> ImageInfo:
    """Write `manifest` into the finished directory `out`, flush it all to disk and
    rename it to images_dir/<name>; a concurrent build that won is returned instead."""
    write_manifest(out, manifest)
    pub.fsync_tree(out)
    name = manifest.name
    return pub.publish(out, images_dir / name, work, lambda: intact_image(images_dir, name))


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


def sweep_tmp(tmp_dir: Path) -> list[Path]:
    """Remove leftovers of interrupted image builds/promotes/removals; returns them.

    Only call it when no image work is running (the daemon does, at start).
    """
    return pub.sweep_tmp(tmp_dir, TMP_PREFIX)
