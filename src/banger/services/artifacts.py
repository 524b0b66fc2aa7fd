"""Kernels and images as the daemon sees them: listing, pulls as shared operations,
registration, promotion, and safe removal.

Managed artifacts live on disk under $XDG_DATA_HOME/banger (their manifests are
the truth); registered images are rows in the store pointing at files that stay
where the user keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.api.models import Image, Kernel, KernelBuild, PullOciImage, RegisterImage
from banger.artifacts import images as image_lib
from banger.artifacts import kernels as kernel_lib
from banger.config import Config
from banger.engines import process
from banger.errors import Conflict, InvalidInput, NotFound
from banger.paths import Paths
from banger.progress import Progress
from banger.services.operations import OperationManager
from banger.sizing import MIN_MEMORY_MIB, MemoryFloor
from banger.store import Store

log = logging.getLogger("banger.artifacts")


@dataclass(frozen=True)
class BootKernel:
    name: str
    vmlinux: Path
    initrd: Path | None


@dataclass(frozen=True)
class BootImage:
    name: str
    rootfs: Path
    work_seed: Path | None
    kernel: str | None
    vmlinux: Path | None
    initrd: Path | None
    agent: bool = False  # banger-agent is installed: create waits for its /healthz
    ssh: bool = True  # an SSH server answers once booted (False: OCI images on banger-init)
    cmdline: tuple[str, ...] = ()  # kernel command-line fragments it needs (init=)


class ArtifactService:
    def __init__(self, paths: Paths, config: Config, store: Store, ops: OperationManager) -> None:
        self.paths = paths
        self.config = config
        self.store = store
        self.ops = ops

    def sweep(self) -> None:
        """Remove half-written pulls left by a daemon that died mid-way, after killing
        the skopeo/umoci children such a pull left running (they name its work dir)."""
        orphans = process.processes_with_arg(f"{self.paths.tmp_dir}/{image_lib.OCI_WORK_PREFIX}")
        for orphan in orphans:
            log.info("killing pid %d left by an interrupted image pull", orphan.pid)
            process.kill(orphan.pid, orphan.start_time)
        deadline = time.monotonic() + 5
        while any(process.is_alive(o.pid, o.start_time) for o in orphans):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for swept in kernel_lib.sweep_tmp(self.paths.tmp_dir) + image_lib.sweep_tmp(
            self.paths.tmp_dir
        ):
            log.info("removed leftover %s", swept)

    # -- kernels -------------------------------------------------------------------

    def kernels(self) -> list[Kernel]:
        return [self._kernel_api(k) for k in kernel_lib.list_kernels(self.paths.kernels_dir)]

    def kernel(self, name: str) -> Kernel:
        info = kernel_lib.load_kernel(self.paths.kernels_dir, name)
        if info is None:
            known = ", ".join(kernel_lib.catalog())
            raise NotFound(
                f"kernel `{name}` is not pulled",
                hint=f"`banger kernel pull {name}` (catalog: {known})",
            )
        return self._kernel_api(info)

    @staticmethod
    def _kernel_api(info: Any) -> Kernel:
        return Kernel(
            name=info.name,
            path=str(info.path),
            vmlinux=str(info.vmlinux),
            initrd=str(info.initrd) if info.has_initrd else None,
            kind=info.kind,
            package=info.package,
            version=info.version,
            kernel_release=info.kernel_release,
            config_sha256=info.config_sha256,
            fragment_sha256=info.fragment_sha256,
            created_at=info.created_at,
            size_bytes=info.size_bytes,
        )

    def pull_kernel(self, name: str) -> Any:
        kernel_lib.get_spec(name)  # unknown names fail the request, not the operation

        async def work(progress: Progress) -> dict[str, str]:
            info = await asyncio.to_thread(
                kernel_lib.pull_kernel, name, self.paths.kernels_dir, self.paths.tmp_dir, progress
            )
            return {"name": info.name, "version": info.version}

        return self.ops.start("kernel.pull", name, work, key=f"kernel:{name}")

    def build_kernel(self, req: KernelBuild) -> Any:
        """`banger kernel build` as an operation; bad input fails the request itself."""
        fragment = None
        if req.fragment is not None:
            origin = req.fragment_origin or "the --config-fragment"
            fragment = kernel_lib.Fragment(origin, req.fragment)
        build = kernel_lib.BuildRequest(req.name, req.source, fragment, req.jobs)
        kernel_lib.check_build_request(build)

        async def work(progress: Progress) -> dict[str, str]:
            # The build runs in a thread; on cancel, wait for it to notice (its next
            # progress report raises), kill make and clean up before we report.
            task = asyncio.ensure_future(
                asyncio.to_thread(
                    kernel_lib.build_kernel,
                    build,
                    self.paths.kernels_dir,
                    self.paths.tmp_dir,
                    self.paths.kernel_build_cache,
                    progress,
                )
            )
            try:
                info = await asyncio.shield(task)
            except asyncio.CancelledError:
                with contextlib.suppress(BaseException):
                    await task
                raise
            return {"name": info.name, "version": info.version, "release": info.kernel_release}

        return self.ops.start("kernel.build", req.name, work, key=f"kernel:{req.name}")

    def remove_kernel(self, name: str, force: bool) -> list[str]:
        self.kernel(name)
        users = [
            r["name"] for r in self.store.query("SELECT name FROM vms WHERE kernel=?", (name,))
        ]
        users += [
            f"image {r['name']}"
            for r in self.store.query("SELECT name FROM images WHERE kernel=?", (name,))
        ]
        if users and not force:
            raise Conflict(
                f"kernel `{name}` is used by {', '.join(users)}",
                hint="delete those first, or pass --force (they will not boot until it is "
                "pulled again)",
            )
        kernel_lib.remove_kernel(self.paths.kernels_dir, name, self.paths.tmp_dir)
        return users

    # -- images --------------------------------------------------------------------

    def images(self) -> list[Image]:
        managed = [self._image_api(i) for i in image_lib.list_images(self.paths.images_dir)]
        names = {i.name for i in managed}
        registered = [self._registered_api(r) for r in self.store.all("images", order="name")]
        return managed + [r for r in registered if r.name not in names]

    def image(self, name: str) -> Image:
        info = image_lib.load_image(self.paths.images_dir, name)
        if info is not None:
            return self._image_api(info)
        row = self.store.get("images", "name", name)
        if row is not None:
            return self._registered_api(row)
        raise NotFound(
            f"image `{name}` does not exist",
            hint=f"`banger image pull {name}` for a catalog image, or `banger image register`",
        )

    def memory_floor(self, name: str) -> MemoryFloor | None:
        """The least memory a VM of image `name` may have: a pulled or registered
        image's, or a catalog image's not pulled yet (a create pulls it). None for a
        name that is none of these (creating from it fails on the missing image)."""
        info = image_lib.load_image(self.paths.images_dir, name)
        if info is not None:
            return image_lib.memory_floor(info)
        if self.store.get("images", "name", name) is not None:
            return MemoryFloor(name, MIN_MEMORY_MIB)  # registered: nothing known of it
        spec = image_lib.catalog().get(name)
        if spec is not None:
            return MemoryFloor(name, spec.min_memory_mib, spec.min_memory_reason)
        return None

    @staticmethod
    def _image_api(info: Any) -> Image:
        floor = image_lib.memory_floor(info)
        return Image(
            name=info.name,
            managed=True,
            rootfs=str(info.rootfs),
            work_seed=str(info.work_seed) if info.work_seed else None,
            kernel=info.kernel,
            vmlinux=str(info.vmlinux) if info.vmlinux else None,
            initrd=str(info.initrd) if info.initrd else None,
            size_bytes=info.size_bytes,
            created_at=info.created_at,
            info=info.summary(),
            min_memory_mib=floor.mib,
            min_memory_reason=floor.reason,
        )

    @staticmethod
    def _registered_api(row: dict[str, Any]) -> Image:
        rootfs = Path(row["rootfs"])
        return Image(
            name=row["name"],
            managed=False,
            rootfs=row["rootfs"],
            work_seed=row["work_seed"],
            kernel=row["kernel"],
            vmlinux=row["vmlinux"],
            initrd=row["initrd"],
            size_bytes=rootfs.stat().st_size if rootfs.exists() else 0,
            created_at=row["created_at"],
            info=row["info"],
            min_memory_mib=MIN_MEMORY_MIB,
        )

    def pull_image(self, name: str) -> Any:
        image_lib.get_spec(name)

        async def work(progress: Progress) -> dict[str, str]:
            info = await asyncio.to_thread(
                image_lib.pull_image,
                name,
                self.paths.images_dir,
                self.paths.tmp_dir,
                progress,
                debian_mirror=self.config.debian_mirror,
                npm_registry=self.config.npm_registry,
            )
            return {"name": info.name}

        return self.ops.start("image.pull", name, work, key=f"image:{name}")

    def pull_oci_image(self, req: PullOciImage) -> Any:
        """Pull an OCI image (registry reference or archive) as an operation. The
        reference, the name and a clash with an image not pulled from OCI are refused
        here, before any operation starts."""
        if image_lib.is_catalog_name(req.ref):
            return self.pull_image(req.ref)
        ref = image_lib.parse_reference(req.ref)
        if not ref.is_registry and not Path(ref.path).exists():
            raise NotFound(
                f"{ref.path} does not exist", hint=f"check the path of the {ref.transport}"
            )
        name = image_lib.check_name(req.name or ref.default_name())
        if name in image_lib.catalog():
            raise Conflict(
                f"`{name}` is a catalog image name", hint="pick another name with --name"
            )
        existing = image_lib.load_image(self.paths.images_dir, name)
        if (existing is not None and existing.oci is None) or self.store.get(
            "images", "name", name
        ):
            raise Conflict(
                f"image `{name}` already exists and was not pulled from a registry",
                hint="pick another name with --name, or `banger image rm` it first",
            )
        if req.authfile and not Path(req.authfile).is_file():
            raise NotFound(
                f"auth file {req.authfile} does not exist",
                hint="pass the containers auth file written by `skopeo login`/`docker login`",
            )

        async def work(progress: Progress) -> dict[str, str]:
            info = await image_lib.pull_oci_image(
                ref,
                name,
                self.paths.images_dir,
                self.paths.tmp_dir,
                progress,
                authfile=req.authfile,
                insecure=req.insecure,
            )
            return {"name": info.name, "reference": str(ref)}

        return self.ops.start("image.pull", name, work, key=f"image:{name}")

    def register_image(self, req: RegisterImage) -> Image:
        if image_lib.load_image(self.paths.images_dir, req.name) or self.store.get(
            "images", "name", req.name
        ):
            raise Conflict(f"image `{req.name}` already exists", hint="pick another --name")
        if req.kernel and (req.vmlinux or req.initrd):
            raise InvalidInput("give --kernel or --vmlinux/--initrd, not both")
        info = self._validate_registration(req)
        self.store.insert(
            "images",
            {
                "name": info.name,
                "managed": 0,
                "rootfs": str(info.rootfs),
                "work_seed": str(info.work_seed) if info.work_seed else None,
                "kernel": info.kernel,
                "vmlinux": str(info.vmlinux) if info.vmlinux else None,
                "initrd": str(info.initrd) if info.initrd else None,
                "info": {},
                "created_at": time.time(),
            },
        )
        return self.image(req.name)

    @staticmethod
    def _validate_registration(req: RegisterImage) -> Any:
        def p(v: str | None) -> Path | None:
            return Path(v) if v else None

        return image_lib.register_image(
            req.name, Path(req.rootfs), p(req.work_seed), req.kernel, p(req.vmlinux), p(req.initrd)
        )

    def promote_image(self, name: str) -> Any:
        img = self.image(name)
        if img.managed:
            raise Conflict(f"image `{name}` is already managed")

        info = self._validate_registration(
            RegisterImage(
                name=img.name,
                rootfs=img.rootfs,
                work_seed=img.work_seed,
                kernel=img.kernel,
                vmlinux=img.vmlinux,
                initrd=img.initrd,
            )
        )

        async def work(progress: Progress) -> dict[str, str]:
            await asyncio.to_thread(
                image_lib.promote_image, info, self.paths.images_dir, self.paths.tmp_dir, progress
            )
            self.store.delete("images", "name", name)
            return {"name": name}

        return self.ops.start("image.promote", name, work, key=f"image:{name}")

    def remove_image(self, name: str, force: bool) -> list[str]:
        img = self.image(name)
        users = [
            f"{r['name']} (building image {r['purpose'].split(':', 1)[-1]})"
            if r["purpose"]
            else r["name"]
            for r in self.store.query("SELECT name, purpose FROM vms WHERE image=?", (name,))
        ]
        if users and not force:
            raise Conflict(
                f"image `{name}` is used by VMs: {', '.join(users)}",
                hint="delete those VMs first, or pass --force (they will not start again)",
            )
        if img.managed:
            image_lib.remove_image(self.paths.images_dir, name, self.paths.tmp_dir)
        else:
            self.store.delete("images", "name", name)
        return users

    # -- what a VM boots with; pulls missing catalog artifacts ---------------------

    async def _await_pull(self, op: Any, progress: Progress) -> None:
        """Follow a (possibly shared) pull operation, relaying its stages."""
        async for item in self.ops.events(op.id):
            if hasattr(item, "stage") and not hasattr(item, "state"):
                progress(item.stage, item.detail, item.fraction)
        final = self.ops.get(op.id)
        if final.state != "succeeded":
            from banger.errors import from_dict

            raise from_dict(final.error.model_dump() if final.error else {"message": "pull failed"})

    async def ensure_image(self, name: str, progress: Progress, *, refresh: bool) -> BootImage:
        """The image to boot. A missing catalog image is pulled; with `refresh` (new
        VMs) one built from an older recipe is rebuilt first. Existing VMs have their
        own disks and never wait for a rebuild."""
        try:
            img = self.image(name)
        except NotFound:
            if name not in image_lib.catalog():  # only catalog images can be pulled
                raise
            progress("image", f"pulling {name} (first use)")
            await self._await_pull(self.pull_image(name), progress)
            img = self.image(name)
        else:
            info = image_lib.load_image(self.paths.images_dir, name) if img.managed else None
            if refresh and info is not None and image_lib.is_outdated(info):
                progress("image", f"rebuilding {name}: banger's image recipe changed")
                await self._await_pull(self.pull_image(name), progress)
                img = self.image(name)
        return BootImage(
            name=img.name,
            rootfs=Path(img.rootfs),
            work_seed=Path(img.work_seed) if img.work_seed else None,
            kernel=img.kernel,
            vmlinux=Path(img.vmlinux) if img.vmlinux else None,
            initrd=Path(img.initrd) if img.initrd else None,
            agent=bool(img.info.get("agent", False)),
            ssh=bool(img.info.get("ssh", True)),
            cmdline=tuple(str(c) for c in img.info.get("cmdline") or ()),
        )

    async def ensure_kernel_for(
        self, image: BootImage, override: str | None, progress: Progress
    ) -> BootKernel:
        if not override and image.vmlinux is not None:
            return BootKernel(f"{image.name}:vmlinux", image.vmlinux, image.initrd)
        name = override or image.kernel or self.config.default_kernel
        info = kernel_lib.load_kernel(self.paths.kernels_dir, name)
        if info is None and name not in kernel_lib.catalog():
            raise NotFound(
                f"kernel `{name}` does not exist",
                hint=f"`banger kernel build --name {name}` builds it; `banger kernel list` "
                "shows the kernels there are",
            )
        if info is None or kernel_lib.is_outdated(info):
            why = "first use" if info is None else "the catalog's kernel recipe changed"
            progress("image", f"pulling kernel {name} ({why})")
            await self._await_pull(self.pull_kernel(name), progress)
        k = self.kernel(name)
        return BootKernel(k.name, Path(k.vmlinux), Path(k.initrd) if k.initrd else None)
