"""What an image is: its files, provenance, and `image.json`.

A managed image is a directory images_dir/<name>/:

  rootfs.ext4        the root filesystem (sparse); each VM boots a clone of it
  work-seed.ext4     the image's /root, cloned and grown into each VM's work disk
  packages.manifest  "name<TAB>version<TAB>arch" of every installed package
  vmlinux, initrd.img  only for images that bring their own kernel (promoted ones)
  image.json         ImageManifest: provenance plus size and sha256 of every file

A registered (unmanaged) image is an ImageInfo whose files are absolute paths that
stay where the user keeps them; the daemon stores it in its database.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from banger.artifacts.images.catalog import catalog, default_image
from banger.artifacts.manifest import (
    FileRecord,
    hash_problems,
    sha256_file,
    size_problems,
    write_durably,
)
from banger.errors import InvalidInput
from banger.sizing import INIT_MIN_MEMORY_MIB, MIN_MEMORY_MIB, MemoryFloor

IMAGE_JSON = "image.json"
FORMAT = 1

# Role -> file name inside a managed image directory.
ROOTFS = "rootfs"
WORK_SEED = "work_seed"
VMLINUX = "vmlinux"
INITRD = "initrd"
MANIFEST = "manifest"
FILE_NAMES = {
    ROOTFS: "rootfs.ext4",
    WORK_SEED: "work-seed.ext4",
    VMLINUX: "vmlinux",
    INITRD: "initrd.img",
    MANIFEST: "packages.manifest",
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class FileInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str  # a name inside the image directory, or an absolute path (registered)
    size: int
    sha256: str | None = None  # None for registered images: we never read them whole


class ToolInfo(BaseModel):
    """An npm-published tool of the recipe: installed at a pinned version, or skipped
    (whole) with the reason."""

    model_config = ConfigDict(frozen=True)

    package: str
    version: str
    installed: bool
    skipped: str = ""  # why it is not in the image


class OciInfo(BaseModel):
    """Where an OCI image came from and its config (what banger-init runs)."""

    model_config = ConfigDict(frozen=True)

    reference: str  # as pulled, normalised (docker.io/library/debian:bookworm)
    digest: str  # the manifest's
    platform: str
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    ports: tuple[str, ...] = ()  # ExposedPorts, e.g. "80/tcp"


class BuildStep(BaseModel):
    """One provisioning step of `image build`, with the sha256 of what went in."""

    model_config = ConfigDict(frozen=True)

    kind: str  # "file", "packages", "script"
    what: str  # "SRC -> DST", the package list, the script's file name
    sha256: str


class BuildRecord(BaseModel):
    """How a built image was made: its base and steps, in the order they ran."""

    model_config = ConfigDict(frozen=True)

    base: str
    base_source: str = ""  # the base's own `source` (e.g. recipe:debian-bookworm)
    base_rootfs_sha256: str = ""
    steps: tuple[BuildStep, ...] = ()
    digest: str = ""  # over the base and every step (banger.imagespec.build_digest)
    nat: bool = False  # scripts ran with internet access


class ImageManifest(BaseModel):
    """The content of image.json."""

    model_config = ConfigDict(frozen=True)

    format: int = FORMAT
    name: str
    kernel: str | None = None  # kernel catalog reference, e.g. "debian-6.1"
    files: dict[str, FileInfo]  # role -> file
    created: datetime
    banger_version: str
    source: str  # "recipe:debian-bookworm", "promoted", "registered"
    suite: str | None = None
    mirror: str | None = None
    apt_sources: tuple[str, ...] = ()
    # banger-agent is installed and enabled (False for images built before it was).
    agent: bool = False
    # recipe_digest() of the recipe it was built from ("" for registered/promoted ones).
    recipe_digest: str = ""
    # Recipe tools (mise, opencode) by name; empty for images built before them.
    tools: dict[str, ToolInfo] = {}
    # Pulled OCI images: the reference and config (None for every other image).
    oci: OciInfo | None = None
    # How it boots: "systemd" (golden and images with systemd+sshd) or "banger-init".
    init: str = "systemd"
    # An SSH server banger configured: readiness waits for it and `vm ssh` works.
    ssh: bool = True
    # Kernel command-line fragments the image needs (init=/sbin/banger-init).
    cmdline: tuple[str, ...] = ()
    # `image build`: the base and the steps (None for images not built that way).
    build: BuildRecord | None = None
    # The least memory a VM of it may have and what needs it, as known when it was
    # made (None: made before banger recorded it; see `memory_floor`).
    min_memory_mib: int | None = None
    min_memory_reason: str = ""


class ImageInfo(ImageManifest):
    """A manifest plus where it lives: what the daemon and engines use."""

    managed: bool
    directory: Path | None  # images_dir/<name> for managed images

    def file(self, role: str) -> Path | None:
        entry = self.files.get(role)
        if entry is None:
            return None
        p = Path(entry.path)
        if p.is_absolute() or self.directory is None:
            return p
        return self.directory / p

    @property
    def rootfs(self) -> Path:
        path = self.file(ROOTFS)
        assert path is not None, "every image has a rootfs"
        return path

    @property
    def work_seed(self) -> Path | None:
        return self.file(WORK_SEED)

    @property
    def vmlinux(self) -> Path | None:
        return self.file(VMLINUX)

    @property
    def initrd(self) -> Path | None:
        return self.file(INITRD)

    @property
    def packages_manifest(self) -> Path | None:
        return self.file(MANIFEST)

    @property
    def created_at(self) -> float:
        return self.created.timestamp()

    @property
    def size_bytes(self) -> int:
        """Apparent size of all files (sparse images use less on disk)."""
        return sum(f.size for f in self.files.values())

    def summary(self) -> dict[str, Any]:
        """Provenance for `image show`: JSON-able, without the paths."""
        out = self.model_dump(
            mode="json",
            include={
                "source",
                "suite",
                "mirror",
                "apt_sources",
                "banger_version",
                "files",
                "agent",
                "tools",
                "oci",
                "init",
                "ssh",
                "cmdline",
                "build",
            },
        )
        for key in ("oci", "build"):  # only for images pulled / built that way
            if out.get(key) is None:
                out.pop(key, None)
        return out


def oci_memory(init: str) -> tuple[int, str]:
    """The minimum of a pulled OCI image, by how it boots: banger-init runs only the
    agent and the entrypoint; a systemd image gets the golden recipe's services."""
    if init == "banger-init":
        return INIT_MIN_MEMORY_MIB, "banger-init, the agent and the image's entrypoint run in it"
    golden = default_image()
    return golden.min_memory_mib, "systemd, sshd, the agent and the image's services run in it"


def memory_floor(m: ImageManifest) -> MemoryFloor:
    """The least memory a VM of image `m` may have. An image of a catalog recipe gets
    the catalog's value (a better measurement needs no rebuild); others what their
    image.json recorded; images made before it was recorded, what their kind needs:
    the recipe their build started from, an OCI image's by its init, and for the rest
    (registered, promoted) only the minimum of any VM."""
    source = m.source
    if m.min_memory_mib is None and m.build is not None and m.build.base_source:
        source = m.build.base_source  # an image built on a base needs what the base did
    if source.startswith("recipe:"):
        recipe = source.removeprefix("recipe:")
        for spec in catalog().values():
            if spec.recipe == recipe:
                return MemoryFloor(m.name, spec.min_memory_mib, spec.min_memory_reason)
    if m.min_memory_mib is not None:
        return MemoryFloor(m.name, max(m.min_memory_mib, MIN_MEMORY_MIB), m.min_memory_reason)
    if m.oci is not None or source.startswith("oci:"):
        return MemoryFloor(m.name, *oci_memory(m.init))
    return MemoryFloor(m.name, MIN_MEMORY_MIB)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"image name {name!r} is not valid",
            hint="use 1-63 characters: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit",
        )
    return name


def describe_files(directory: Path, roles: list[str]) -> dict[str, FileInfo]:
    """FileInfo (name, size, sha256) of the standard file of each role in `directory`."""
    out = {}
    for role in roles:
        path = directory / FILE_NAMES[role]
        out[role] = FileInfo(path=path.name, size=path.stat().st_size, sha256=sha256_file(path))
    return out


def write_manifest(directory: Path, manifest: ImageManifest) -> None:
    write_durably(directory / IMAGE_JSON, manifest.model_dump_json(indent=2) + "\n")


def read_info(directory: Path) -> ImageInfo | None:
    """The image in `directory`, or None when image.json is missing or unreadable."""
    try:
        data = json.loads((directory / IMAGE_JSON).read_text())
        manifest = ImageManifest.model_validate(data)
    except (OSError, ValueError, ValidationError):
        return None
    if manifest.format != FORMAT:
        return None
    return ImageInfo(**manifest.model_dump(), managed=True, directory=directory)


def _records(info: ImageInfo) -> list[FileRecord]:
    records: list[FileRecord] = []
    for role, entry in info.files.items():
        path = info.file(role)
        assert path is not None  # every role in `files` has a path
        records.append((f"{role} ({path})", path, entry.size, entry.sha256))
    return records


def quick_check(info: ImageInfo) -> list[str]:
    """Problems found without reading file contents: missing files, wrong sizes."""
    return size_problems(_records(info))


def verify(info: ImageInfo) -> list[str]:
    """quick_check plus a re-hash of every file that has a recorded sha256."""
    return quick_check(info) or hash_problems(_records(info))
