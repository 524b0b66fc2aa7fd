"""The "newc" cpio format the kernel unpacks initramfs archives from.

Writing it ourselves needs no cpio tool and no root: device nodes such as
/dev/console are just header fields. Output is reproducible (fixed owner and
mtime, entries in insertion order). `read_newc` exists for verification/tests.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Protocol

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    data: bytes
    rdev: tuple[int, int] = (0, 0)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


class CpioWriter:
    """Append-only newc writer; parent directories are created implicitly."""

    def __init__(self, out: Sink, mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._ino = 0
        self._seen: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        name = name.strip("/") or "."
        if name in self._seen and name != _TRAILER:
            raise ValueError(f"duplicate cpio entry {name!r}")
        self._seen.add(name)
        self._ino += 1
        raw_name = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self._ino, mode, 0, 0, nlink, self._mtime, len(data), 0, 0, *rdev)
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        header += b"%08X%08X" % (len(raw_name), 0)
        self._out.write(header + raw_name + b"\0" * _pad(len(header) + len(raw_name)))
        self._out.write(data + b"\0" * _pad(len(data)))

    def _parents(self, name: str) -> None:
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._seen:
                self._entry(parent, stat.S_IFDIR | 0o755)

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._parents(name)
        if name.strip("/") not in self._seen:
            self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        self._entry(_TRAILER, 0)


def read_newc(data: bytes) -> list[Entry]:
    """Parse a newc archive (uncompressed) up to its trailer."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != _MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += _pad(pos)
        if name == _TRAILER:
            return entries
        body = data[pos : pos + size]
        if len(body) != size:
            raise ValueError(f"cpio entry {name!r} is truncated")
        pos += size + _pad(size)
        entries.append(Entry(name, mode, body, (rmaj, rmin)))
