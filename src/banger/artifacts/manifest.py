"""File checks shared by kernel and image manifests.

Both kinds of artifact record the size and sha256 of every file they hold. The size
check is cheap (one stat per file) and guards the no-op path of a pull; the full
check re-hashes, and only runs once every size matches, so a truncated file is
reported without reading gigabytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

# (label in messages, path, recorded size, recorded sha256 or None: never hashed)
FileRecord = tuple[str, Path, int, str | None]


def sha256_file(path: Path) -> str:
    """sha256 of the whole file; holes read as zeros, so it is the content's hash."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 * 1024 * 1024)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def size_problems(records: Iterable[FileRecord]) -> list[str]:
    """Missing or unreadable files and wrong sizes, without reading any content."""
    problems = []
    for label, path, size, _ in records:
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{label} is missing")
        except OSError as exc:
            problems.append(f"{label}: {exc.strerror}")
        else:
            if actual != size:
                problems.append(f"{label} has size {actual}, expected {size}")
    return problems


def hash_problems(records: Iterable[FileRecord]) -> list[str]:
    """Files whose content no longer matches their recorded sha256."""
    problems = []
    for label, path, _, sha256 in records:
        if sha256 and (actual := sha256_file(path)) != sha256:
            problems.append(f"{label} has sha256 {actual}, expected {sha256}")
    return problems


def write_durably(path: Path, text: str) -> None:
    """Write `path` via a temp file, fsync and rename: a crash leaves old or new, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
