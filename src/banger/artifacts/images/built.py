"""The file side of `image build`: the inputs snapshotted (and digested) into the
build's work directory, the archives sent into the guest, the disks turned into an
image, and its publication.

The daemon's `services/imagebuild.py` drives the VM; everything here is blocking
file work it runs in a worker thread. A build works in a `image-build-*` directory
under tmp_dir (swept at daemon start) and reaches images_dir by one rename.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import banger
from banger.artifacts import ext4
from banger.artifacts.images.info import (
    FILE_NAMES,
    INITRD,
    MANIFEST,
    ROOTFS,
    VMLINUX,
    WORK_SEED,
    BuildRecord,
    BuildStep,
    ImageInfo,
    ImageManifest,
    describe_files,
    memory_floor,
)
from banger.artifacts.images.store import load_image, publish
from banger.errors import Conflict, InvalidInput, from_os_error
from banger.imagespec import (
    FileSpec,
    build_digest,
    packages_digest,
    sha256_file,
    sha256_tree,
)

MiB = ext4.MiB
SEED_FLOOR = 128 * MiB  # the golden image's work-seed is never smaller either


@dataclass(frozen=True)
class Input:
    """One file or script, copied into the work directory when the build starts: what
    the guest gets is what was digested, whatever happens to the original meanwhile."""

    kind: str  # "file" or "script"
    src: str  # as the user named it
    copy: Path  # the snapshot
    dest: str  # guest path (scripts: where it is put to run)
    sha256: str


@dataclass
class Snapshot:
    files: list[Input] = field(default_factory=list)
    scripts: list[Input] = field(default_factory=list)

    def steps(self, packages: list[str]) -> list[BuildStep]:
        """The steps in the order they run: files, packages, scripts."""
        out = [
            BuildStep(kind="file", what=f"{i.src} -> {i.dest}", sha256=i.sha256) for i in self.files
        ]
        if packages:
            out.append(
                BuildStep(
                    kind="packages", what=" ".join(packages), sha256=packages_digest(packages)
                )
            )
        out += [BuildStep(kind="script", what=i.src, sha256=i.sha256) for i in self.scripts]
        return out


def check_input(path: str, what: str, *, allow_dir: bool) -> Path:
    """`path` as an absolute host path that exists and can be read; input errors
    (never crashes) name the file and the fix."""
    try:
        p = Path(path)
        if not p.is_absolute():
            raise InvalidInput(f"{what} {path!r} is not an absolute path", hint="pass a full path")
        if not p.exists():
            raise InvalidInput(f"{what} {path} does not exist", hint="check the path")
        if p.is_dir() and not allow_dir:
            raise InvalidInput(f"{what} {path} is a directory", hint="pass a script file")
        if not (p.is_file() or p.is_dir()):
            raise InvalidInput(
                f"{what} {path} is not a regular file or directory", hint="pass a file"
            )
        if not os.access(p, os.R_OK):
            raise InvalidInput(
                f"{what} {path} is not readable", hint=f"fix its permissions (chmod a+r {path})"
            )
        return p
    except (OSError, ValueError) as exc:
        mapped = from_os_error(exc, what)
        if mapped is None:
            raise
        raise mapped from None


def snapshot_inputs(work: Path, files: list[FileSpec], scripts: list[str]) -> Snapshot:
    """Copy every input into work/inputs and digest the copies."""
    base = work / "inputs"
    base.mkdir()
    snap = Snapshot()
    for n, spec in enumerate(files):
        src = check_input(spec.src, "--file", allow_dir=True)
        copy = base / f"file-{n}"
        if src.is_dir():
            shutil.copytree(src, copy, symlinks=True)
        else:
            shutil.copy2(src, copy)
        snap.files.append(Input("file", spec.src, copy, spec.dest, sha256_tree(copy)))
    for n, path in enumerate(scripts):
        src = check_input(path, "--script", allow_dir=False)
        copy = base / f"script-{n}"
        shutil.copyfile(src, copy)
        os.chmod(copy, 0o755)
        dest = f"/tmp/banger-build/{n:02d}-{_safe_name(src.name)}"
        snap.scripts.append(Input("script", path, copy, dest, sha256_file(copy)))
    return snap


def _safe_name(name: str) -> str:
    kept = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return kept[:64] or "script"


def archive(local: Path, out: Path) -> Path:
    """A tar of `local` (file or tree) for a tar-in stream: everything owned by root
    in the guest, whoever owns it on the host, modes and symlinks kept."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    # A directory goes as its contents ("./…"), extracted into the destination
    # directory; a file as one member, renamed to the destination.
    arcname = "." if local.is_dir() else local.name
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(str(local), arcname=arcname, recursive=True, filter=as_root)
    return out


def script_archive(data: bytes, name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def take_disk(src: Path, dst: Path) -> str:
    """Move a stopped VM's disk into the build (a rename; a sparse copy across
    filesystems)."""
    try:
        os.rename(src, dst)
        return "moved"
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    how = ext4.clone_file(src, dst)
    src.unlink()
    return how


def finish_disks(out: Path) -> int:
    """Check both disks, drop the blocks the build freed, and size the work-seed to
    what /root holds; returns the seed's size."""
    ext4.compact(out / FILE_NAMES[ROOTFS])
    seed = out / FILE_NAMES[WORK_SEED]
    ext4.compact(seed)
    return ext4.shrink_to_fit(seed, SEED_FLOOR)


@dataclass(frozen=True)
class Provenance:
    base: str
    base_source: str
    base_rootfs_sha256: str
    nat: bool


def publish_built(
    name: str,
    out: Path,
    work: Path,
    images_dir: Path,
    *,
    kernel: str | None,
    base_info: ImageInfo | None,
    provenance: Provenance,
    steps: list[BuildStep],
    packages_rows: list[str],
    agent: bool,
    suite: str | None,
    mirror: str | None,
    apt_sources: tuple[str, ...],
) -> ImageInfo:
    """Write packages.manifest, bring the base's own kernel files along (a built
    image owns all its files), hash everything and rename it into images_dir."""
    (out / FILE_NAMES[MANIFEST]).write_text("".join(f"{r}\n" for r in packages_rows))
    roles = [ROOTFS, WORK_SEED, MANIFEST]
    for role in (VMLINUX, INITRD):
        src = base_info.file(role) if base_info is not None else None
        if src is not None and src.exists():
            ext4.clone_file(src, out / FILE_NAMES[role])
            roles.append(role)
    record = BuildRecord(
        base=provenance.base,
        base_source=provenance.base_source,
        base_rootfs_sha256=provenance.base_rootfs_sha256,
        steps=tuple(steps),
        digest=build_digest(
            provenance.base, provenance.base_rootfs_sha256, [s.sha256 for s in steps]
        ),
        nat=provenance.nat,
    )
    # What the base needs, the built image needs too (a build only adds to it).
    floor = memory_floor(base_info) if base_info is not None else None
    manifest = ImageManifest(
        name=name,
        kernel=kernel,
        files=describe_files(out, roles),
        created=datetime.now(UTC),
        banger_version=banger.__version__,
        source=f"build:{provenance.base}",
        suite=suite,
        mirror=mirror,
        apt_sources=apt_sources,
        agent=agent,
        build=record,
        min_memory_mib=floor.mib if floor is not None else None,
        min_memory_reason=floor.reason if floor is not None else "",
        # How the base boots (systemd, or banger-init for OCI images) carries over.
        **(
            {
                "oci": base_info.oci,
                "init": base_info.init,
                "ssh": base_info.ssh,
                "cmdline": base_info.cmdline,
            }
            if base_info is not None
            else {}
        ),
    )
    if load_image(images_dir, name) is not None or (images_dir / name).exists():
        raise Conflict(
            f"image `{name}` was created while this build ran",
            hint=f"build again under another --name, or `banger image rm {name}` first",
        )
    return publish(out, manifest, images_dir, work)
