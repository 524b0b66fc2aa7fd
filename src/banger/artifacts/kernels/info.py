"""What a pulled kernel directory holds, and its `manifest.json`.

kernels_dir/<name>/
  vmlinux          ELF kernel (Firecracker and QEMU microvm via PVH)
  initrd.img       gzip'd newc initramfs (pulled kernels only)
  config           the kernel's build config
  modules.txt      module names in load order (pulled kernels only)
  fragment.config  the config fragments a built kernel was made from (built only)
  manifest.json    KernelManifest: provenance plus sha256 and size of every file

A pulled kernel (`kind = "pulled"`) is a Debian linux-image package plus banger's
initramfs; a built one (`kind = "built"`, `banger kernel build`) is compiled from a
Debian linux-source package with everything built in and boots without initramfs.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from banger.artifacts.manifest import (
    FileRecord,
    hash_problems,
    sha256_file,
    size_problems,
    write_durably,
)

MANIFEST = "manifest.json"
VMLINUX = "vmlinux"
INITRD = "initrd.img"
CONFIG = "config"
MODULES_TXT = "modules.txt"
FRAGMENT_CONFIG = "fragment.config"
FORMAT = 1


class FileDigest(BaseModel):
    model_config = ConfigDict(frozen=True)

    sha256: str
    size: int


class KernelManifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: int = FORMAT
    name: str
    description: str = ""
    package: str  # the concrete Debian package, e.g. linux-image-6.1.0-56-cloud-amd64
    metapackage: str = ""  # what the catalog names, e.g. linux-image-cloud-amd64
    version: str  # the Debian package version
    arch: str = "amd64"
    deb_sha256: str = ""
    kernel_release: str  # `uname -r` inside the guest; the initramfs module dir
    compression: str = ""  # how vmlinux was packed inside the bzImage
    modules: tuple[str, ...] = ()
    # The catalog's module request this initramfs was built for: when the catalog
    # asks for different modules, a pull rebuilds instead of keeping a stale kernel.
    catalog_modules: tuple[str, ...] = ()
    # "pulled" (linux-image + initramfs) or "built" (`banger kernel build`, no initramfs)
    kind: str = "pulled"
    # Built kernels: digests of the final .config and of the fragments it came from
    # (base + banger's + the user's): a build with other fragments rebuilds.
    config_sha256: str = ""
    fragment_sha256: str = ""
    files: dict[str, FileDigest]
    created: datetime
    banger_version: str


class KernelInfo(KernelManifest):
    """A manifest plus where it lives; what the daemon and engines use."""

    path: Path

    @property
    def vmlinux(self) -> Path:
        return self.path / VMLINUX

    @property
    def initrd(self) -> Path:
        return self.path / INITRD

    @property
    def has_initrd(self) -> bool:
        """False for a kernel that boots without an initramfs (a built one)."""
        return INITRD in self.files

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def modules_txt(self) -> Path:
        return self.path / MODULES_TXT

    @property
    def created_at(self) -> float:
        return self.created.timestamp()

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def digest_files(directory: Path, names: list[str]) -> dict[str, FileDigest]:
    return {
        n: FileDigest(sha256=sha256_file(directory / n), size=(directory / n).stat().st_size)
        for n in names
    }


def write_manifest(directory: Path, manifest: KernelManifest) -> None:
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    write_durably(directory / MANIFEST, text)


def read_info(directory: Path) -> KernelInfo | None:
    """The kernel in `directory`, or None if its manifest is missing or unreadable."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        return KernelInfo(path=directory, **data)
    except (OSError, ValueError, TypeError, ValidationError):
        return None


def _records(info: KernelInfo) -> list[FileRecord]:
    return [(n, info.path / n, d.size, d.sha256) for n, d in info.files.items()]


def quick_check(info: KernelInfo) -> list[str]:
    """Cheap consistency check (presence and sizes), for the pull no-op path."""
    problems = size_problems(_records(info))
    for required in (VMLINUX, INITRD) if info.kind == "pulled" else (VMLINUX,):
        if required not in info.files:
            problems.append(f"the manifest does not list {required}")
    return problems


def verify(info: KernelInfo) -> list[str]:
    """Full check: every listed file is present with the recorded size and sha256."""
    return quick_check(info) or hash_problems(_records(info))
