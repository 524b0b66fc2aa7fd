"""`image pull <catalog-name>`: build a golden image on this host from its recipe.

Stages (each reported through `progress` with the overall fraction done):

  mirror       find the Debian mirror in the host's apt sources (or debian_mirror)
  debootstrap  mmdebstrap the recipe's packages into a fresh tree under tmp_dir
  configure    apply the recipe: files, units (by symlink, no chroot), clean-up
  tools        npm-published tools (mise, opencode) from the host's npm registry,
               integrity-checked; skipped whole, and recorded, when it is unreachable
  manifest     packages.manifest from the tree's dpkg database
  work-seed    move /root into work-seed.ext4, leaving /root an empty mount point
  mkfs         rootfs.ext4 from the tree (mkfs.ext4 -d: no loop mount, sparse)
  finalize     image.json with sizes and sha256, then one rename into images_dir

Building needs root: mmdebstrap's root mode creates device nodes and files owned by
system users (_apt, messagebus, sshd), and that ownership must reach the ext4 image.
A non-root build is possible but not wired up: `mmdebstrap --mode=unshare` (needs
unprivileged user namespaces, the `uidmap` package and subordinate id ranges for the
user in /etc/subuid and /etc/subgid), the configure steps run as --customize-hook
commands inside that namespace, a tarball as output, and `mke2fs -d <tarball>`
(e2fsprogs >= 1.47.1; bookworm has 1.47.0) because unpacking the tarball as a plain
user would lose the ownership.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import banger
from banger.artifacts import ext4
from banger.artifacts.images.catalog import ImageSpec, get_spec
from banger.artifacts.images.configure import (
    apply_recipe,
    mkfs_rootfs,
    mkfs_work_seed,
    write_packages_manifest,
)
from banger.artifacts.images.info import (
    FILE_NAMES,
    MANIFEST,
    ROOTFS,
    WORK_SEED,
    ImageInfo,
    ImageManifest,
    check_name,
    describe_files,
)
from banger.artifacts.images.recipe import Recipe, load_recipe, recipe_digest
from banger.artifacts.images.store import (
    build_lock,
    intact_image,
    list_images,
    load_image,
    publish,
    remove_image,
    sweep_tmp,
    work_dir,
)
from banger.artifacts.images.tools import install_tools
from banger.artifacts.mirror import Mirror, discover_mirror
from banger.errors import CommandFailed, PrivilegeError
from banger.progress import Progress, null_progress
from banger.system import is_root, run

__all__ = ["list_images", "load_image", "pull_image", "remove_image", "sweep_tmp"]

MiB = ext4.MiB


def pull_image(
    name: str,
    images_dir: Path,
    tmp_dir: Path,
    progress: Progress = null_progress,
    *,
    debian_mirror: str | None = None,
    npm_registry: str | None = None,
) -> ImageInfo:
    """Build catalog image `name` into images_dir/<name>; a no-op if it is already there.

    `debian_mirror` overrides the mirror found in the host's apt sources, `npm_registry`
    the host's npm registry ("off" builds without npm-published tools). Verified npm
    tarballs are cached in images_dir/../cache/npm. Blocking
    (minutes): the daemon runs it in a worker thread. On any failure or interruption
    nothing is left in images_dir; leftovers in tmp_dir are removed here, or by
    sweep_tmp if the process died.
    """
    check_name(name)
    if (existing := intact_image(images_dir, name)) is not None:
        progress("finalize", f"{name} is already pulled", 1.0)
        return existing
    spec = get_spec(name)
    recipe = load_recipe(spec.recipe)
    if not is_root():
        raise PrivilegeError(
            f"building the {name} image needs root (mmdebstrap --mode=root)",
            hint="run the banger daemon as root for this pull, or build the image "
            "elsewhere and `banger image register` it; see artifacts/images/build.py "
            "for what a non-root build would need",
        )
    with build_lock(tmp_dir, name):
        if (existing := intact_image(images_dir, name)) is not None:
            progress("finalize", f"{name} was pulled meanwhile", 1.0)
            return existing
        with work_dir(tmp_dir, f"build-{name}") as work:
            npm_cache = images_dir.parent / "cache" / "npm"
            out, manifest = _build(
                spec, recipe, work, progress, debian_mirror, npm_registry, npm_cache
            )
            progress("finalize", f"publishing {name}", 0.97)
            info = publish(out, manifest, images_dir, work)
    progress("finalize", f"{name} ready", 1.0)
    return info


def _build(
    spec: ImageSpec,
    recipe: Recipe,
    work: Path,
    progress: Progress,
    override: str | None,
    npm_registry: str | None,
    npm_cache: Path,
) -> tuple[Path, ImageManifest]:
    """Build the image's files into work/out; returns it and the manifest to publish."""
    progress("mirror", "reading the host's apt sources", 0.0)
    mirror = discover_mirror(spec.suite, override=override)
    progress("mirror", f"{mirror.uri} (from {mirror.source})", 0.01)

    tree = work / "tree"
    progress("debootstrap", f"{spec.suite}: {len(recipe.packages)} packages + dependencies", 0.02)
    _debootstrap(recipe, mirror, tree, work)

    progress("configure", f"applying recipe {recipe.name}", 0.55)
    agent = apply_recipe(tree, recipe, progress)
    tools = install_tools(tree, recipe, npm_cache, work, progress, registry_override=npm_registry)

    out = work / "out"
    out.mkdir()
    progress("manifest", "listing installed packages", 0.6)
    count = write_packages_manifest(tree, out / FILE_NAMES[MANIFEST])
    progress("manifest", f"{count} packages", 0.61)

    mkfs_work_seed(tree, work / "seed", out / FILE_NAMES[WORK_SEED], progress, 0.62)
    mkfs_rootfs(tree, out / FILE_NAMES[ROOTFS], spec.rootfs_size_mib * MiB, progress, 0.65)

    progress("finalize", "hashing files", 0.85)
    manifest = ImageManifest(
        name=spec.name,
        kernel=spec.kernel,
        files=describe_files(out, [ROOTFS, WORK_SEED, MANIFEST]),
        created=datetime.now(UTC),
        banger_version=banger.__version__,
        source=f"recipe:{recipe.name}",
        suite=spec.suite,
        mirror=mirror.uri,
        apt_sources=tuple(mirror.apt_lines(recipe.components)),
        agent=agent,
        recipe_digest=recipe_digest(recipe),
        tools=tools,
        min_memory_mib=spec.min_memory_mib,
        min_memory_reason=spec.min_memory_reason,
    )
    return out, manifest


def _debootstrap(recipe: Recipe, mirror: Mirror, tree: Path, work: Path) -> None:
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        '--aptopt=Acquire::Languages "none"',
        *(f"--dpkgopt=path-exclude={p}" for p in recipe.dpkg_path_exclude),
        *(f"--dpkgopt=path-include={p}" for p in recipe.dpkg_path_include),
        mirror.suite,
        str(tree),
        # Full sources lines, so the image's apt sources list -updates and security too.
        *mirror.apt_lines(recipe.components),
    ]
    # mmdebstrap keeps its scratch files in TMPDIR: inside our work dir, so an
    # interrupted build leaves nothing anywhere else.
    try:
        run(argv, env={**os.environ, "TMPDIR": str(work)}, timeout=3600)
    except CommandFailed as exc:
        raise CommandFailed(
            f"mmdebstrap could not build {mirror.suite} from {mirror.uri} "
            f"(mirror from {mirror.source}): {exc.message}",
            hint="check that this host reaches the mirror (`apt-get update`), "
            "or set debian_mirror in the config to one it can reach",
        ) from exc
