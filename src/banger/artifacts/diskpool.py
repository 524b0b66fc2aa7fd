"""Warm per-VM disks: ready-made rootfs + work disk pairs, so create only renames.

Cloning the rootfs is most of banger's own create time on filesystems without
reflink (a sparse copy of a few hundred MB), and growing both disks costs two
resize2fs runs. The pool does that work ahead of time, in the background, for
the disk layout the last create asked for. An entry is keyed by everything it
was built from (image files and their mtimes, sizes, the injected key), so a
rebuilt image or a changed key never hands out a stale disk; stale entries are
swept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("banger.diskpool")

ROOTFS, WORK = "rootfs.ext4", "work.ext4"


@dataclass(frozen=True)
class DiskSpec:
    rootfs: Path  # the image's rootfs
    work_seed: Path | None
    disk_bytes: int
    work_bytes: int
    authorized_key: str

    def key(self) -> str:
        def stamp(p: Path | None) -> str:
            if p is None:
                return "-"
            st = p.stat()
            return f"{p}:{st.st_size}:{st.st_mtime_ns}"

        raw = "|".join(
            [stamp(self.rootfs), stamp(self.work_seed), str(self.disk_bytes),
             str(self.work_bytes), self.authorized_key]
        )  # fmt: skip
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


Builder = Callable[[DiskSpec, Path, Path], None]


class DiskPool:
    def __init__(self, pool_dir: Path, size: int, build: Builder) -> None:
        self.dir = pool_dir
        self.size = size
        self._build = build
        self._lock = threading.Lock()

    def _ready(self, key: str) -> list[Path]:
        d = self.dir / key
        if not d.is_dir():
            return []
        return sorted(e for e in d.iterdir() if e.is_dir() and _complete(e))

    def take(self, spec: DiskSpec, rootfs: Path, work: Path) -> bool:
        """Move a ready pair into place; False when the pool has none for `spec`."""
        if self.size <= 0:
            return False
        try:
            key = spec.key()
        except OSError:
            return False
        with self._lock:
            entries = self._ready(key)
            if not entries:
                return False
            entry = entries[0]
            os.rename(entry / ROOTFS, rootfs)
            os.rename(entry / WORK, work)
            shutil.rmtree(entry, ignore_errors=True)
        return True

    def fill(self, spec: DiskSpec) -> int:
        """Build entries until `size` are ready for `spec`; returns how many were made."""
        if self.size <= 0:
            return 0
        key = spec.key()
        self.sweep(keep=key)
        made = 0
        while len(self._ready(key)) < self.size:
            work_dir = self.dir / key / f".building-{uuid.uuid4().hex[:8]}"
            work_dir.mkdir(parents=True)
            try:
                self._build(spec, work_dir / ROOTFS, work_dir / WORK)
                meta = {k: str(v) for k, v in asdict(spec).items() if k != "authorized_key"}
                (self.dir / key / "source.json").write_text(json.dumps(meta))
                os.rename(work_dir, self.dir / key / uuid.uuid4().hex[:12])
                made += 1
            finally:
                shutil.rmtree(work_dir, ignore_errors=True)
        return made

    def sweep(self, keep: str | None = None) -> None:
        """Remove half-built entries and entries for other layouts (only `keep` stays:
        the pool holds disks for the layout creates use now, not every one seen)."""
        if not self.dir.is_dir():
            return
        with self._lock:
            self._sweep(keep)

    def sweep_partial(self) -> None:
        """Remove entries a killed daemon left half-built or half-taken."""
        if not self.dir.is_dir():
            return
        with self._lock:
            for d in self.dir.iterdir():
                if not d.is_dir():
                    continue
                for entry in d.iterdir():
                    if entry.is_dir() and not _complete(entry):
                        log.warning("disk pool: removing partial entry %s", entry)
                        shutil.rmtree(entry, ignore_errors=True)

    def _sweep(self, keep: str | None) -> None:
        for d in self.dir.iterdir():
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
                continue
            for entry in d.iterdir():
                if entry.name.startswith(".building-"):
                    shutil.rmtree(entry, ignore_errors=True)


def _complete(entry: Path) -> bool:
    """A ready entry: published (no leading dot) with both disks still in it."""
    return (
        not entry.name.startswith(".") and (entry / ROOTFS).is_file() and (entry / WORK).is_file()
    )
