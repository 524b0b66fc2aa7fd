"""Pull, list, load, verify and remove kernels.

A pull works only inside a fresh directory under `tmp_dir` and publishes with a
single `os.rename` into `kernels_dir/<name>` (see banger.artifacts.publish), so an
interrupted or failed pull leaves nothing half-written where the daemon looks.
Everything here is synchronous (the daemon runs it in a thread); the progress
callback may raise `Cancelled`, and cleanup still runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import banger
from banger.artifacts import publish as pub
from banger.artifacts.kernels import apt
from banger.artifacts.kernels.bzimage import extract_vmlinux_file
from banger.artifacts.kernels.catalog import KernelSpec, catalog, get_spec
from banger.artifacts.kernels.info import (
    CONFIG,
    INITRD,
    MODULES_TXT,
    VMLINUX,
    KernelInfo,
    KernelManifest,
    digest_files,
    quick_check,
    read_info,
    verify,
    write_manifest,
)
from banger.artifacts.kernels.initrd import build_initramfs, host_busybox
from banger.artifacts.kernels.modules import ModuleTree
from banger.errors import BangerError, NotFound
from banger.progress import Progress, null_progress

# Everything this module creates in tmp_dir starts with this, so sweep_tmp can
# clean up after us without touching other builders sharing the directory.
_TMP_PREFIX = "kernel-"


class KernelPackageError(BangerError):
    code = "kernel_package"
    http_status = 422


def load_kernel(kernels_dir: Path, name: str) -> KernelInfo | None:
    """The pulled kernel `name`, or None if it is absent or has no valid manifest."""
    if not pub.is_plain_name(name):
        return None
    info = read_info(kernels_dir / name)
    return info if info is not None and info.name == name else None


def list_kernels(kernels_dir: Path) -> list[KernelInfo]:
    if not kernels_dir.is_dir():
        return []
    found = (load_kernel(kernels_dir, d.name) for d in sorted(kernels_dir.iterdir()) if d.is_dir())
    return [k for k in found if k is not None]


def verify_kernel(info: KernelInfo) -> list[str]:
    """Re-hash every file against the manifest; returns problems (empty means intact)."""
    return verify(info)


def remove_kernel(kernels_dir: Path, name: str, tmp_dir: Path) -> None:
    """Delete a pulled kernel (atomically gone from kernels_dir, then deleted)."""
    if not pub.is_plain_name(name) or not (kernels_dir / name).is_dir():
        raise NotFound(f"kernel {name!r} is not pulled", hint="see `banger kernel list`")
    pub.discard(kernels_dir / name, tmp_dir, f"{_TMP_PREFIX}rm-{name}-")


def sweep_tmp(tmp_dir: Path) -> list[Path]:
    """Remove leftovers of interrupted kernel pulls/removals; returns what was removed.

    Only call it when no pull is running (the daemon does, at start).
    """
    return pub.sweep_tmp(tmp_dir, _TMP_PREFIX)


def pull_kernel(
    name: str,
    kernels_dir: Path,
    tmp_dir: Path,
    progress: Progress = null_progress,
    apt_options: Sequence[str] = (),
) -> KernelInfo:
    """Fetch catalog kernel `name` with apt and publish it in `kernels_dir/<name>`.

    `apt_options` are extra `-o Key=Value` settings for apt-get/apt-cache (for
    example a different Dir::Etc::sourcelist); the host's configuration is used
    otherwise. A kernel that is already pulled and intact is returned as is.
    """
    spec = get_spec(name)
    if (existing := _intact(kernels_dir, name)) is not None:
        progress("finalize", f"{name} is already pulled ({existing.version})", 1.0)
        return existing

    kernels_dir.mkdir(parents=True, exist_ok=True)
    with pub.work_dir(tmp_dir, f"{_TMP_PREFIX}pull-{name}-") as work:
        out = _build(spec, work, progress, apt_options)
        progress("finalize", f"publishing {name}", 0.98)
        info = pub.publish(out, kernels_dir / name, work, lambda: _intact(kernels_dir, name))
    progress("finalize", f"{name} ready ({info.package} {info.version})", 1.0)
    return info


def _intact(kernels_dir: Path, name: str) -> KernelInfo | None:
    """A pulled kernel that is complete and built for the catalog's current recipe."""
    info = load_kernel(kernels_dir, name)
    if info is None or quick_check(info):
        return None
    return None if is_outdated(info) else info


def is_outdated(info: KernelInfo) -> bool:
    """True when the catalog now asks for different initramfs modules than `info` has."""
    return info.name in catalog() and info.catalog_modules != tuple(get_spec(info.name).modules)


def _build(spec: KernelSpec, work: Path, progress: Progress, apt_options: Sequence[str]) -> Path:
    progress("resolve", f"resolving {spec.package} with apt", 0.0)
    pkg = apt.resolve(spec, apt_options)
    root = apt.unpack(pkg, work, apt_options, progress, at=(0.05, 0.6))
    vmlinuz, config, modroot = _locate(root, pkg.name)
    release = modroot.name

    progress("extract", f"vmlinux from {vmlinuz.name}", 0.7)
    out = work / "kernel"
    out.mkdir()
    extracted = extract_vmlinux_file(vmlinuz, out / VMLINUX)

    progress("initramfs", f"modules for {release}", 0.8)
    tree = ModuleTree.scan(modroot)
    order = tree.load_order(spec.modules)
    busybox, applets = host_busybox()
    build_initramfs(out / INITRD, tree, order, busybox, applets)
    shutil.copyfile(config, out / CONFIG)
    (out / MODULES_TXT).write_text("".join(f"{m}\n" for m in order))

    progress("finalize", "writing manifest", 0.95)
    manifest = KernelManifest(
        name=spec.name,
        description=spec.description,
        package=pkg.name,
        metapackage=spec.package,
        version=pkg.version,
        arch=pkg.arch,
        deb_sha256=pkg.sha256,
        kernel_release=release,
        compression=extracted.codec,
        modules=tuple(order),
        catalog_modules=tuple(spec.modules),
        files=digest_files(out, [VMLINUX, INITRD, CONFIG, MODULES_TXT]),
        created=datetime.now(UTC),
        banger_version=banger.__version__,
    )
    write_manifest(out, manifest)
    return out


def _locate(root: Path, package: str) -> tuple[Path, Path, Path]:
    """Find vmlinuz-<release>, config-<release> and the module tree in the unpacked .deb."""
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise KernelPackageError(
            f"{package} holds {len(images)} boot/vmlinuz-* files, expected exactly one",
            hint="the package layout is unexpected; check package_pattern in kernels.toml",
        )
    release = images[0].name.removeprefix("vmlinuz-")
    config = root / "boot" / f"config-{release}"
    if not config.is_file():
        raise KernelPackageError(f"{package} has no boot/config-{release}")
    for base in ("lib/modules", "usr/lib/modules"):
        if (root / base / release).is_dir():
            return images[0], config, root / base / release
    raise KernelPackageError(f"{package} has no module directory for {release}")
