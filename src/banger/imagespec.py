"""What `banger image build` is asked to do: its inputs, checked the same way by the
CLI (before it contacts the daemon) and by the daemon (which reads the files).

A build provisions a VM booted from a base image in a fixed order: every `--file`
is copied (in the order given), then the `--package`s are installed with apt in one
transaction, then every `--script` runs (in the order given). Each step is recorded
in the image with a sha256 digest of what went in, so `image show` says exactly how
an image was made.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from banger.errors import InvalidInput

# Debian package names (policy §5.6.1), optionally `name:arch`, `name=version` or
# `name/release`: passed to apt-get as argv, never through a shell.
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?([=/][A-Za-z0-9.+~:_-]+)?", re.ASCII)
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    src: str  # on the host (absolute once the CLI or daemon resolved it)
    dest: str  # absolute path in the guest

    def __str__(self) -> str:
        return f"{self.src}:{self.dest}"


def parse_file_spec(spec: str) -> FileSpec:
    """`SRC:DST` with DST an absolute guest path (split at the last `:/`)."""
    at = spec.rfind(":/") if isinstance(spec, str) else -1
    src, dest = (spec[:at], spec[at + 1 :]) if at >= 0 else ("", "")
    if not src or not dest or "\0" in spec:
        raise InvalidInput(
            f"--file {spec!r} is not SRC:DST",
            hint="give a host path and an absolute path in the image, e.g. --file ./motd:/etc/motd",
        )
    parts = PurePosixPath(dest).parts
    if ".." in parts or dest.rstrip("/") == "":
        raise InvalidInput(
            f"--file {spec!r}: the destination {dest!r} is not a path below /",
            hint="name the file or directory to create in the image, e.g. /etc/motd",
        )
    return FileSpec(src, dest)


def check_package(name: str) -> str:
    if not isinstance(name, str) or not _PACKAGE.fullmatch(name):
        raise InvalidInput(
            f"--package {name!r} is not a Debian package name",
            hint="use the name apt knows (e.g. ripgrep), optionally name=version",
        )
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: Path) -> str:
    """Digest of a file, or of a directory: every entry's relative path, type, mode
    and content (files) or target (symlinks), in sorted order."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return sha256_file(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs + files):
            p = Path(root) / name
            rel = p.relative_to(path).as_posix()
            s = p.lstat()
            mode = stat.S_IMODE(s.st_mode)
            if stat.S_ISLNK(s.st_mode):
                entry = f"l {rel} {os.readlink(p)}"
            elif stat.S_ISDIR(s.st_mode):
                entry = f"d {rel} {mode:o}"
            elif stat.S_ISREG(s.st_mode):
                entry = f"f {rel} {mode:o} {sha256_file(p)}"
            else:
                entry = f"? {rel}"
            h.update(entry.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def packages_digest(packages: list[str]) -> str:
    return hashlib.sha256("".join(f"{p}\n" for p in packages).encode()).hexdigest()


def build_digest(base: str, base_rootfs_sha256: str, step_digests: list[str]) -> str:
    """One digest for the whole recipe: the base (by name and rootfs content) and
    every step's digest, in order."""
    h = hashlib.sha256(f"{base}\n{base_rootfs_sha256}\n".encode())
    for d in step_digests:
        h.update(f"{d}\n".encode())
    return h.hexdigest()
