"""`image register` (validate files that stay where they are) and `image promote`
(copy a registered image into managed storage)."""

from __future__ import annotations

import os
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
    FileInfo,
    ImageInfo,
    ImageManifest,
    check_name,
    describe_files,
)
from banger.artifacts.images.store import build_lock, load_image, publish, work_dir
from banger.errors import Conflict, InvalidInput, from_os_error
from banger.progress import Progress, null_progress


def _readable(path: Path, what: str) -> Path:
    """`path` made absolute, if it is a non-empty regular file this user can read.

    Hostile paths (NUL bytes, symlink loops, names too long, unreadable parents) are
    input errors naming the file, never crashes."""
    try:
        return _check_readable(path, what)
    except (OSError, ValueError, RuntimeError) as exc:
        mapped = from_os_error(exc, what)
        if mapped is None and isinstance(exc, RuntimeError):  # e.g. `~nobody/x`
            mapped = InvalidInput(f"{what} {path!r}: {exc}", hint="pass an absolute path")
        if mapped is None:
            raise
        raise mapped from None


def _check_readable(path: Path, what: str) -> Path:
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise InvalidInput(f"{what} {path} does not exist", hint="check the path")
    if not path.is_file():
        raise InvalidInput(f"{what} {path} is not a regular file", hint="pass the image file")
    if not os.access(path, os.R_OK):
        raise InvalidInput(
            f"{what} {path} is not readable by this user",
            hint=f"fix its permissions, e.g. chmod a+r {path}",
        )
    if path.stat().st_size == 0:
        raise InvalidInput(f"{what} {path} is empty", hint="pass the real file")
    return path


def _check_kernel_file(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(0x210)
    # Firecracker boots ELF vmlinux; QEMU also takes a bzImage ("HdrS" at 0x202).
    if head[:4] != b"\x7fELF" and head[0x202:0x206] != b"HdrS":
        raise InvalidInput(
            f"kernel {path} is neither an ELF vmlinux nor a bzImage",
            hint="pass the uncompressed vmlinux (e.g. from `banger kernel pull`), "
            "or use --kernel NAME to boot a catalog kernel",
        )


def register_image(
    name: str,
    rootfs: Path,
    work_seed: Path | None = None,
    kernel: str | None = None,
    vmlinux: Path | None = None,
    initrd: Path | None = None,
) -> ImageInfo:
    """Validate an unmanaged image and describe it; the daemon stores the result.

    `kernel` names a kernel (catalog or pulled) to boot it with; `vmlinux`/`initrd`
    are files to boot instead. Files are checked (readable, ext4 where it must be) but
    not hashed or copied: they stay where they are, and may be large.
    """
    check_name(name)
    if kernel is not None and vmlinux is not None:
        raise InvalidInput(
            "give either a kernel name or a vmlinux file, not both",
            hint="--kernel NAME boots a pulled kernel; --vmlinux FILE boots that file",
        )
    if kernel is not None:
        check_name(kernel)
    if initrd is not None and vmlinux is None:
        raise InvalidInput("an initrd needs a vmlinux to go with it", hint="add --vmlinux FILE")
    files: dict[str, FileInfo] = {}

    def add(role: str, path: Path, what: str) -> Path:
        p = _readable(path, what)
        files[role] = FileInfo(path=str(p), size=p.stat().st_size)
        return p

    ext4.require_ext4(add(ROOTFS, rootfs, "rootfs"), "rootfs")
    if work_seed is not None:
        ext4.require_ext4(add(WORK_SEED, work_seed, "work-seed"), "work-seed")
    if vmlinux is not None:
        _check_kernel_file(add(VMLINUX, vmlinux, "kernel"))
    if initrd is not None:
        add(INITRD, initrd, "initrd")
    return ImageInfo(
        name=name,
        kernel=kernel,
        files=files,
        created=datetime.now(UTC),
        banger_version=banger.__version__,
        source="registered",
        managed=False,
        directory=None,
    )


def promote_image(
    info: ImageInfo, images_dir: Path, tmp_dir: Path, progress: Progress = null_progress
) -> ImageInfo:
    """Copy image `info` (typically registered) into images_dir/<name> as a managed image.

    Files are cloned (reflink when the filesystem can, else a sparse copy that keeps
    holes) into a fresh directory under tmp_dir, hashed, and renamed into place; an
    interruption leaves nothing in images_dir.
    """
    name = check_name(info.name)
    with build_lock(tmp_dir, name):
        if load_image(images_dir, name) is not None or (images_dir / name).exists():
            raise Conflict(
                f"a managed image named {name} already exists",
                hint=f"remove it first (banger image rm {name}) or register under another name",
            )
        with work_dir(tmp_dir, f"promote-{name}") as work:
            out = work / "out"
            out.mkdir()
            roles = [r for r in (ROOTFS, WORK_SEED, VMLINUX, INITRD, MANIFEST) if info.file(r)]
            for n, role in enumerate(roles):
                src = info.file(role)
                assert src is not None
                dst = out / FILE_NAMES[role]
                progress("copy", f"{src} -> {FILE_NAMES[role]}", 0.8 * n / len(roles))
                how = ext4.clone_file(src, dst)
                progress("copy", f"{FILE_NAMES[role]}: {how} copy", 0.8 * (n + 1) / len(roles))
                if role in (ROOTFS, WORK_SEED):
                    ext4.require_ext4(dst, role.replace("_", "-"))
            progress("finalize", "hashing files", 0.8)
            manifest = ImageManifest(
                name=name,
                kernel=info.kernel,
                files=describe_files(out, roles),
                created=datetime.now(UTC),
                banger_version=banger.__version__,
                source="promoted",
                suite=info.suite,
                mirror=info.mirror,
                apt_sources=info.apt_sources,
                agent=info.agent,
            )
            result = publish(out, manifest, images_dir, work)
    progress("finalize", f"{name} is now managed", 1.0)
    return result
