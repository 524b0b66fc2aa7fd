"""`image pull REF` of an OCI image: skopeo fetches, umoci unpacks, banger boots it.

Stages (each reported through `progress` with the overall fraction done):

  fetch      `skopeo copy REF oci:<work>/layout:banger` (registry credentials from the
             containers auth file or --authfile; --insecure for plain-HTTP registries);
             a multi-platform index resolves to linux/amd64
  config     the image config from the layout; anything but linux/amd64 is refused
  unpack     `umoci unpack` as root: layers applied in order, whiteouts honoured,
             ownership, modes, setuid bits and xattrs kept
  bootable   banger's private Python, agent and init (artifacts/images/bootable.py)
  work-seed  Debian/Ubuntu-family images: /root moves to work-seed.ext4, as golden
  mkfs       rootfs.ext4 from the tree (mkfs.ext4 -d copies owners, modes, xattrs)
  finalize   image.json (with the image config), one rename into images_dir

Everything happens in a work directory under tmp_dir, removed whatever happens;
skopeo and umoci run as children that a cancel kills at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import banger
from banger.artifacts import ext4
from banger.artifacts import publish as pub
from banger.artifacts.images.bootable import make_bootable
from banger.artifacts.images.catalog import default_image
from banger.artifacts.images.configure import guest_path, mkfs_rootfs, mkfs_work_seed
from banger.artifacts.images.info import (
    FILE_NAMES,
    ROOTFS,
    WORK_SEED,
    ImageInfo,
    ImageManifest,
    OciInfo,
    check_name,
    describe_files,
    oci_memory,
    write_manifest,
)
from banger.artifacts.images.oci_ref import OciRef
from banger.artifacts.images.store import TMP_PREFIX, load_image, work_dir
from banger.errors import BangerError, CommandFailed, NotFound, PrivilegeError
from banger.progress import Progress
from banger.system import arun, is_root

MiB = ext4.MiB
LAYOUT_TAG = "banger"
# Work directories of pulls: tmp_dir/image-pull-<name>-*; skopeo and umoci name them.
WORK_PREFIX = f"{TMP_PREFIX}pull-"
PLATFORM = ("linux", "amd64")

T = TypeVar("T")


class OciPullError(BangerError):
    code = "oci_pull"
    http_status = 424


# skopeo's words for a registry it could not reach.
_UNREACHABLE = (
    "connection refused",
    "no such host",
    "no route to host",
    "network is unreachable",
    "i/o timeout",
    "connection reset",
    "temporary failure in name resolution",
    "server misbehaving",
)


def explain_skopeo(ref: OciRef, stderr: str, insecure: bool) -> BangerError:
    """One-line error naming the problem and the fix, from skopeo's stderr."""
    low = stderr.lower()
    last = (stderr.strip().splitlines() or ["no output"])[-1][:300]
    where = ref.registry or ref.path
    if not ref.is_registry and ("no such file" in low or "not a directory" in low):
        return NotFound(f"{ref.path} does not exist", hint="check the path of the archive")
    if "gave http response to https client" in low:
        return OciPullError(
            f"registry {where} speaks plain HTTP, not HTTPS",
            hint="add --insecure to pull from a plain-HTTP registry",
        )
    why = next((s for s in _UNREACHABLE if s in low), None)
    if why is not None:
        return OciPullError(
            f"registry {where} is unreachable ({why})",
            hint="check the registry address and port and that it is running"
            + ("" if insecure else "; for a plain-HTTP registry add --insecure"),
        )
    if "x509" in low or "certificate" in low or "tls:" in low:
        return OciPullError(
            f"registry {where} has a TLS certificate this host does not trust",
            hint="install its CA under /etc/containers/certs.d/ or, for a registry you "
            "trust, add --insecure",
        )
    if "no image found in manifest list" in low or "no matching manifest" in low:
        return OciPullError(
            f"image {ref} has no linux/amd64 variant",
            hint="banger runs linux/amd64 images: pick a tag or digest built for linux/amd64",
        )
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        return OciPullError(
            f"registry {where} refused access to {ref.repository or ref} (not logged in, "
            "or no permission)",
            hint="log in with `skopeo login` (or `docker login`), or pass --authfile FILE",
        )
    if "manifest unknown" in low or "name unknown" in low or "not found" in low:
        if "name unknown" in low or "repository name not known" in low:
            return NotFound(
                f"repository {ref.repository} does not exist on {where}",
                hint="check the image name (and the registry)",
            )
        if ref.is_registry:
            at = f"@{ref.digest}" if ref.digest else f":{ref.tag}"
            return NotFound(
                f"{ref.repository}{at} does not exist on {where} (no such tag or repository)",
                hint=f"check the name and tag; `skopeo list-tags docker://{ref.registry}/"
                f"{ref.repository}` lists the tags",
            )
        return NotFound(
            f"{ref.archive_ref or 'the image'} is not in {ref.path}",
            hint="check the tag inside the archive",
        )
    return OciPullError(
        f"skopeo could not copy {ref}: {last}", hint="see the daemon log for the full output"
    )


def read_config(layout: Path, tag: str = LAYOUT_TAG) -> tuple[str, dict[str, Any]]:
    """(manifest digest, image config) of `tag` in the OCI layout directory."""
    index = json.loads((layout / "index.json").read_text())
    manifests = index.get("manifests") or []
    chosen = next(
        (
            m
            for m in manifests
            if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag
        ),
        manifests[0] if len(manifests) == 1 else None,
    )
    if chosen is None:
        raise OciPullError(f"the OCI layout {layout} has no image tagged {tag}")

    def blob(digest: str) -> dict[str, Any]:
        algo, _, hexd = digest.partition(":")
        data = json.loads((layout / "blobs" / algo / hexd).read_text())
        if not isinstance(data, dict):
            raise OciPullError(f"blob {digest} of {layout} is not a JSON object")
        return data

    manifest = blob(chosen["digest"])
    return chosen["digest"], blob(manifest["config"]["digest"])


def check_platform(ref: OciRef, config: dict[str, Any]) -> None:
    got = (str(config.get("os") or "?"), str(config.get("architecture") or "?"))
    if got != PLATFORM:
        raise OciPullError(
            f"image {ref} is {got[0]}/{got[1]}; banger runs linux/amd64 images only",
            hint="pull a tag or digest built for linux/amd64",
        )


def oci_info(ref: OciRef, digest: str, config: dict[str, Any]) -> OciInfo:
    c = config.get("config") or {}

    def strings(v: Any) -> tuple[str, ...]:
        return tuple(str(x) for x in v) if isinstance(v, list) else ()

    return OciInfo(
        reference=str(ref),
        digest=digest,
        platform="/".join(PLATFORM),
        env=strings(c.get("Env")),
        entrypoint=strings(c.get("Entrypoint")),
        cmd=strings(c.get("Cmd")),
        workdir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
        ports=tuple(sorted((c.get("ExposedPorts") or {}).keys())),
    )


def is_loopback_registry(registry: str) -> bool:
    """True for localhost[:port], 127.x.y.z[:port] and [::1][:port]."""
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a thread; a cancel waits for it to finish (so the work
    directory is not removed under it), then propagates."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


async def pull_oci_image(
    ref: OciRef,
    name: str,
    images_dir: Path,
    tmp_dir: Path,
    progress: Progress,
    *,
    authfile: str | None = None,
    insecure: bool = False,
) -> ImageInfo:
    """Pull `ref` into images_dir/<name>, replacing an earlier pull of that name.

    Needs root: umoci must create files owned by any user, device nodes and setuid
    binaries exactly as the layers say. On any failure or cancel nothing is left.
    """
    check_name(name)
    if not is_root():
        raise PrivilegeError(
            "pulling an OCI image needs root (umoci unpack must keep every file's owner)",
            hint="run the banger daemon as root",
        )
    # Like Docker, a registry on this host's loopback may speak plain HTTP: nothing
    # of it leaves the machine.
    insecure = insecure or is_loopback_registry(ref.registry)
    with work_dir(tmp_dir, f"pull-{name}") as work:
        layout = work / "layout"
        progress("fetch", f"{ref} (skopeo)", 0.0)
        argv = ["skopeo", "--command-timeout", "3600s"]
        if not Path("/etc/containers/policy.json").exists():
            argv.append("--insecure-policy")  # no policy on this host: accept, as docker does
        argv += ["copy", "--retry-times", "2"]
        if ref.is_registry:
            argv += [f"--src-tls-verify={'false' if insecure else 'true'}"]
            if authfile:
                argv += ["--src-authfile", authfile]
        argv += [ref.skopeo(), f"oci:{layout}:{LAYOUT_TAG}"]
        env = {**os.environ, "TMPDIR": str(work)}
        try:
            await arun(argv, env=env, timeout=3600)
        except CommandFailed as exc:
            raise explain_skopeo(ref, exc.message, insecure) from exc
        digest, config = read_config(layout)
        check_platform(ref, config)
        info = oci_info(ref, digest, config)
        progress("config", f"{info.platform} {digest[:19]}", 0.4)

        bundle = work / "bundle"
        progress("unpack", "applying layers (umoci)", 0.45)
        try:
            await arun(
                ["umoci", "unpack", "--image", f"{layout}:{LAYOUT_TAG}", str(bundle)],
                env=env,
                timeout=3600,
            )
        except CommandFailed as exc:
            raise OciPullError(
                f"umoci could not unpack {ref}: {exc.message}",
                hint="the image may be damaged; see the daemon log",
            ) from exc
        layout_size = sum(f.stat().st_size for f in layout.rglob("*") if f.is_file())
        pub.remove_tree(layout)  # the layers are applied; free the space before mkfs
        progress("unpack", f"{layout_size // MiB} MiB of layers applied", 0.6)
        out, manifest = await _in_thread(_finish, bundle / "rootfs", work, name, info, progress)
        progress("finalize", f"publishing {name}", 0.97)
        published = await _in_thread(_publish, out, manifest, images_dir, work)
    progress("finalize", f"{name} ready", 1.0)
    return published


def _finish(
    tree: Path, work: Path, name: str, info: OciInfo, progress: Progress
) -> tuple[Path, ImageManifest]:
    config = {
        "env": list(info.env),
        "entrypoint": list(info.entrypoint),
        "cmd": list(info.cmd),
        "workdir": info.workdir,
        "user": info.user,
    }
    setup = make_bootable(tree, config, progress)
    progress("bootable", f"init: {setup.init}, ssh: {'yes' if setup.ssh else 'no'}", 0.7)
    out = work / "out"
    out.mkdir()
    roles = [ROOTFS]
    if setup.debian_family and guest_path(tree, "/root", follow_last=True).is_dir():
        mkfs_work_seed(tree, work / "seed", out / FILE_NAMES[WORK_SEED], progress, 0.72)
        roles.append(WORK_SEED)
    mkfs_rootfs(tree, out / FILE_NAMES[ROOTFS], 512 * MiB, progress, 0.75)
    progress("finalize", "hashing files", 0.9)
    min_mib, why = oci_memory(setup.init)
    manifest = ImageManifest(
        name=name,
        kernel=default_image().kernel,
        files=describe_files(out, roles),
        created=datetime.now(UTC),
        banger_version=banger.__version__,
        source=f"oci:{info.reference}",
        agent=True,
        oci=info,
        init=setup.init,
        ssh=setup.ssh,
        cmdline=setup.cmdline,
        min_memory_mib=min_mib,
        min_memory_reason=why,
    )
    return out, manifest


def _publish(out: Path, manifest: ImageManifest, images_dir: Path, work: Path) -> ImageInfo:
    """Rename `out` into images_dir, replacing an earlier pull of the same name (moved
    aside first, and back if the rename fails)."""
    write_manifest(out, manifest)
    pub.fsync_tree(out)
    dest = images_dir / manifest.name
    images_dir.mkdir(parents=True, exist_ok=True)
    old = work / "replaced"
    if dest.exists():
        pub.rename(dest, old)
    try:
        pub.rename(out, dest)
    except BaseException:
        if old.exists() and not dest.exists():
            pub.rename(old, dest)
        raise
    info = load_image(images_dir, manifest.name)
    assert info is not None
    return info


__all__ = [
    "TMP_PREFIX",
    "WORK_PREFIX",
    "OciPullError",
    "explain_skopeo",
    "is_loopback_registry",
    "pull_oci_image",
    "read_config",
]
