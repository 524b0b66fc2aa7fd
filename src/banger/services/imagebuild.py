"""`image build`: a managed image made by provisioning a throwaway VM.

  inputs     files and scripts copied into the build's work dir, digested
  (create)   the VM service's own create: the base's rootfs cloned and grown to
             --size, capabilities, engine, readiness (its stages are relayed)
  files      each --file copied in through the guest agent (a tar-in stream)
  packages   the guest's apt, sources pointed at the host's mirror (as the golden
             image build does), through NAT
  scripts    each --script run in /root; its output streamed as `output` events
  manifest   dpkg-query in the guest
  cleanup    what the golden recipe removes (apt lists, host keys, machine-id), the
             daemon's SSH key out of /root; then a clean shutdown
  publish    the VM's disks checked, trimmed, the work-seed shrunk to fit; image.json
             with the provenance; one rename into images_dir

The VM is marked with a `purpose`, so `vm list` does not show it and the next daemon
start removes it if this one dies. Whatever ends the build (failure, cancel), the VM
is deleted with everything it holds, and the work dir goes with its context.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from banger.agent.client import AgentClient, AgentUnavailable, wait_healthy
from banger.api.models import BuildImage, CreateVM, Operation, SetVM
from banger.artifacts import images as image_lib
from banger.artifacts.images import built
from banger.artifacts.images.configure import DPKG_QUERY_FORMAT, packages_manifest
from banger.artifacts.images.info import FILE_NAMES, ROOTFS, WORK_SEED, ImageInfo
from banger.artifacts.images.recipe import load_recipe
from banger.artifacts.images.store import work_dir
from banger.artifacts.mirror import discover_mirror
from banger.capabilities.workdisk import WorkDiskCapability
from banger.config import Config
from banger.errors import BangerError, Conflict, InvalidInput, NotFound
from banger.imagespec import FileSpec, check_package, parse_file_spec
from banger.paths import Paths
from banger.progress import Progress, null_progress
from banger.services.artifacts import ArtifactService
from banger.services.operations import OperationManager
from banger.services.vms import VMService
from banger.units import parse_size
from banger.vm import VMRecord

log = logging.getLogger("banger.imagebuild")

T = TypeVar("T")
PURPOSE = "image-build"
AGENT_WAIT = 120.0
OUTPUT_TAIL = 12  # lines of a failed step's output quoted in the error
CHUNK = 256 * 1024
BUILD_ENV = {"DEBIAN_FRONTEND": "noninteractive", "BANGER_BUILD": "1"}
# What the guest drops before shutdown, with whatever the base's recipe drops too.
DEFAULT_CLEANUP = (
    "/etc/ssh/ssh_host_*",  # only where banger-hostkeys makes each VM its own
    "/var/cache/apt/*.bin",
    "/var/cache/apt/archives/*.deb",
    "/var/lib/apt/lists/*",
    "/var/log/apt/*",
    "/tmp/*",
)
DEFAULT_TRUNCATE = ("/etc/machine-id",)  # empty: systemd makes a fresh one per VM


class BuildFailed(BangerError):
    code = "build_failed"
    http_status = 422


@dataclass(frozen=True)
class Plan:
    name: str
    base: str
    size: int | None
    packages: list[str]
    scripts: list[str]
    files: list[FileSpec]
    nat: bool


class ImageBuilder:
    def __init__(
        self,
        *,
        vms: VMService,
        artifacts: ArtifactService,
        ops: OperationManager,
        paths: Paths,
        config: Config,
    ) -> None:
        self.vms = vms
        self.artifacts = artifacts
        self.ops = ops
        self.paths = paths
        self.config = config

    # -- the request: refused at the door -------------------------------------------

    def plan(self, req: BuildImage) -> Plan:
        name = image_lib.check_name(req.name)
        try:
            self.artifacts.image(name)
        except NotFound:
            pass
        else:
            raise Conflict(
                f"image `{name}` already exists",
                hint=f"pick another --name, or `banger image rm {name}` first",
            )
        try:
            base = self.artifacts.image(req.base)
        except NotFound:
            if req.base not in image_lib.catalog():
                known = ", ".join(i.name for i in self.artifacts.images()) or "none yet"
                raise NotFound(
                    f"base image `{req.base}` does not exist",
                    hint=f"pass --from one of: {known} (or a catalog image: "
                    f"{', '.join(image_lib.catalog())})",
                ) from None
            base_size = None
        else:
            base_size = Path(base.rootfs).stat().st_size if Path(base.rootfs).exists() else None
        size = None
        if req.size is not None:
            size = parse_size(req.size)
            if base_size is not None and size < base_size:
                raise InvalidInput(
                    f"--size {req.size} is smaller than the base's rootfs "
                    f"({base_size // (1024 * 1024)} MiB)",
                    hint="leave --size out to keep the base's size, or give a larger one",
                )
        files = [parse_file_spec(f) for f in req.files]
        for f in files:
            built.check_input(f.src, "--file", allow_dir=True)
        for s in req.scripts:
            built.check_input(s, "--script", allow_dir=False)
        packages = [check_package(p) for p in req.packages]
        return Plan(name, req.base, size, packages, list(req.scripts), files, req.nat)

    def start(self, req: BuildImage) -> Operation:
        plan = self.plan(req)

        async def work(progress: Progress) -> dict[str, Any]:
            info = await self.build(plan, progress)
            return {"name": info.name, "rootfs": str(info.rootfs)}

        return self.ops.start("image.build", plan.name, work, key=f"image:{plan.name}")

    # -- the build --------------------------------------------------------------------

    async def build(self, plan: Plan, progress: Progress) -> ImageInfo:
        with work_dir(self.paths.tmp_dir, f"build-{plan.name}") as work:
            progress("inputs", f"{len(plan.files)} file(s), {len(plan.scripts)} script(s)")
            snap = await _thread(built.snapshot_inputs, work, plan.files, plan.scripts)
            boot_image = await self.artifacts.ensure_image(plan.base, progress, refresh=False)
            base_info = image_lib.load_image(self.paths.images_dir, plan.base)
            vm_name = f"imgbuild-{secrets.token_hex(3)}"
            try:
                return await self._in_vm(
                    plan, snap, work, vm_name, boot_image.rootfs, base_info, progress
                )
            finally:
                # Whatever ended the build: the VM goes, with its disks, TAP, lease.
                await asyncio.shield(self._discard_vm(vm_name))

    async def _in_vm(
        self,
        plan: Plan,
        snap: built.Snapshot,
        work: Path,
        vm_name: str,
        base_rootfs: Path,
        base_info: ImageInfo | None,
        progress: Progress,
    ) -> ImageInfo:
        size = plan.size or base_rootfs.stat().st_size
        nat = bool(plan.packages) or plan.nat
        req = CreateVM(name=vm_name, image=plan.base, disk_size=str(size), nat=nat)
        progress("vm", f"booting {plan.base} as {vm_name} (hidden; removed afterwards)")
        vm = await self.vms.create(req, progress, purpose=f"{PURPOSE}:{plan.name}")
        agent = _agent_channel(vm)
        progress("agent", "waiting for the guest agent")
        try:
            await wait_healthy(agent, AGENT_WAIT)
        except AgentUnavailable as exc:
            raise BuildFailed(
                f"base image `{plan.base}` has no working guest agent: {exc.message}",
                hint="image build provisions through banger-agent; build from an image "
                "that has it (e.g. debian-bookworm, or one built from it)",
            ) from None
        guest = Guest(AgentClient(agent), progress)

        for n, f in enumerate(snap.files, 1):
            progress("files", f"[{n}/{len(snap.files)}] {f.src} -> {f.dest}")
            tar = await _thread(built.archive, f.copy, work / f"file-{n}.tar")
            is_dir = f.copy.is_dir()
            if is_dir:  # merged into the directory, like `cp -a SRC/. DST`
                await guest.run(["mkdir", "-p", f.dest], f"mkdir {f.dest}", show=False)
            await guest.put(tar.read_bytes(), f.dest, f"--file {f.src}", exact=not is_dir)

        mirror_uri, apt_sources, suite = await self._packages(plan, base_info, guest, progress)
        if plan.packages and not plan.nat:
            progress("scripts", "NAT off: scripts run without internet (--nat gives it)")
            await self.vms.update(vm.id, SetVM(nat=False))

        for n, s in enumerate(snap.scripts, 1):
            progress("scripts", f"[{n}/{len(snap.scripts)}] {s.src}")
            data = s.copy.read_bytes()
            await guest.put(built.script_archive(data, "x"), s.dest, f"--script {s.src}")
            argv = [s.dest] if data.startswith(b"#!") else ["/bin/sh", s.dest]
            await guest.run(argv, f"script {s.src}", show=True, env={"BANGER_IMAGE": plan.name})

        progress("manifest", "dpkg-query")
        out = await guest.run(  # an image without dpkg gets an empty manifest
            [
                "/bin/sh",
                "-c",
                'command -v dpkg-query >/dev/null 2>&1 || exit 0; exec dpkg-query -W -f="$1"',
                "sh",
                DPKG_QUERY_FORMAT,
            ],
            "dpkg-query",
            show=False,
        )
        rows = packages_manifest(out)
        progress("manifest", f"{len(rows)} packages")

        progress("cleanup", "apt caches, host keys, machine-id, the build's SSH key")
        await guest.run(
            ["/bin/sh", "-c", self._cleanup_script(base_info)],
            "cleanup",
            show=False,
            env={"BANGER_KEY": self._authorized_key()},
        )
        progress("shutdown", "graceful")
        await self.vms.stop(vm.id, null_progress)
        vm = self.vms.get(vm.id)

        out_dir = work / "out"
        out_dir.mkdir()
        disks = self._disks()
        await _thread(built.take_disk, disks.rootfs(vm), out_dir / FILE_NAMES[ROOTFS])
        await _thread(built.take_disk, disks.work(vm), out_dir / FILE_NAMES[WORK_SEED])
        progress("publish", "checking the disks, trimming freed blocks, sizing the work-seed")
        seed_size = await _thread(built.finish_disks, out_dir)
        progress("publish", f"work-seed {seed_size // (1024 * 1024)} MiB; hashing")
        provenance = built.Provenance(
            base=plan.base,
            base_source=base_info.source if base_info else "registered",
            base_rootfs_sha256=(base_info.files[ROOTFS].sha256 or "") if base_info else "",
            nat=plan.nat,
        )
        info = await _thread(
            lambda: built.publish_built(
                plan.name,
                out_dir,
                work,
                self.paths.images_dir,
                kernel=vm.kernel if not vm.kernel.endswith(":vmlinux") else None,
                base_info=base_info,
                provenance=provenance,
                steps=snap.steps(plan.packages),
                packages_rows=rows,
                agent=True,  # it answered throughout the build
                suite=suite,
                mirror=mirror_uri,
                apt_sources=apt_sources,
            )
        )
        progress("publish", f"{plan.name} ready")
        return info

    async def _packages(
        self, plan: Plan, base_info: ImageInfo | None, guest: Guest, progress: Progress
    ) -> tuple[str | None, tuple[str, ...], str | None]:
        """Install the packages with the guest's apt; returns (mirror, sources, suite)."""
        suite = base_info.suite if base_info else None
        mirror = base_info.mirror if base_info else None
        sources = base_info.apt_sources if base_info else ()
        if not plan.packages:
            return mirror, sources, suite
        if not suite:
            rel = await guest.run(
                ["/bin/sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME"],
                "reading /etc/os-release",
                show=False,
            )
            suite = rel.strip() or None
        if not suite:
            raise BuildFailed(
                f"cannot tell which Debian release base `{plan.base}` is",
                hint="its /etc/os-release has no VERSION_CODENAME; use a Debian-family base",
            )
        m = await _thread(discover_mirror, suite, override=self.config.debian_mirror)
        components = _components(sources)
        lines = tuple(m.apt_lines(components))
        progress("packages", f"apt sources: {m.uri} {suite} (from {m.source})")
        await guest.put(
            built.script_archive("".join(f"{line}\n" for line in lines).encode(), "x"),
            "/etc/apt/sources.list",
            "apt sources",
            mode_fix=True,
        )
        progress("packages", "apt-get update")
        await guest.run(["apt-get", "update"], "apt-get update", show=True, apt=m.uri)
        progress("packages", f"apt-get install {' '.join(plan.packages)}")
        await guest.run(
            ["apt-get", "install", "-y", *plan.packages],
            f"apt-get install {' '.join(plan.packages)}",
            show=True,
            apt=m.uri,
        )
        return m.uri, lines, suite

    def _cleanup_script(self, base_info: ImageInfo | None) -> str:
        remove, truncate = list(DEFAULT_CLEANUP), list(DEFAULT_TRUNCATE)
        recipe_name = _recipe_of(base_info)
        if recipe_name:
            try:
                recipe = load_recipe(recipe_name)
            except BangerError:
                pass
            else:
                remove += [p for p in recipe.cleanup.remove if p not in remove]
                truncate += [p for p in recipe.cleanup.truncate if p not in truncate]
        lines = ["apt-get clean >/dev/null 2>&1 || true"]
        for pattern in remove:
            if pattern.startswith("/etc/ssh/ssh_host_"):
                # Only where each VM makes its own (banger-hostkeys): elsewhere sshd
                # would have none.
                lines.append(
                    "systemctl -q is-enabled banger-hostkeys.service 2>/dev/null && "
                    f"rm -rf {pattern}"
                )
            else:
                lines.append(f"rm -rf {pattern}")
        lines += [f"[ -e {p} ] && : > {p}" for p in truncate]
        # The daemon's key went into /root for the build; the image must not carry it.
        lines.append(
            'k=/root/.ssh/authorized_keys; if [ -f "$k" ]; then '
            'grep -vxF "$BANGER_KEY" "$k" > "$k.new" || true; '
            'if [ -s "$k.new" ]; then cat "$k.new" > "$k"; else rm -f "$k"; fi; '
            'rm -f "$k.new"; fi'
        )
        lines += ["rm -rf /tmp/banger-build /root/.bash_history", "sync"]
        return "\n".join(lines) + "\n"

    def _disks(self) -> WorkDiskCapability:
        for cap in self.vms.capabilities:
            if isinstance(cap, WorkDiskCapability):
                return cap
        raise BangerError("the VM service has no disks capability")  # composition bug

    def _authorized_key(self) -> str:
        return self._disks().authorized_key.strip()

    async def _discard_vm(self, vm_name: str) -> None:
        vm = self.vms.repo.find(vm_name)
        if vm is None:
            return
        try:
            await self.vms.delete(vm.id, null_progress, force=True)
        except NotFound:
            pass
        except Exception:
            log.exception("could not remove build VM %s", vm_name)


class Guest:
    """Provisioning through the guest agent: the same exec and tar-in streams as
    `vm exec` and `vm cp`, driven from the daemon."""

    def __init__(self, client: AgentClient, progress: Progress) -> None:
        self.client = client
        self.progress = progress

    async def put(
        self, tar: bytes, dest: str, what: str, *, exact: bool = True, mode_fix: bool = False
    ) -> None:
        """Extract `tar` at `dest` (`exact`: its one top-level member becomes `dest`)."""
        stream, info = await self.client.open({"kind": "tar-in", "path": dest, "exact": exact})
        try:
            if "error" not in info:
                for at in range(0, len(tar), CHUNK):
                    await stream.write(tar[at : at + CHUNK])
                await stream.write(b"")
            while True:
                ev = await stream.next_event()
                if ev.kind == "exit":
                    break
                if ev.kind in ("stdout", "stderr"):
                    await stream.consumed(len(ev.data))
        finally:
            await stream.close()
        if int(ev.info.get("code", 255)) != 0:
            raise BuildFailed(
                f"copying {what} to {dest} in the build VM failed: "
                f"{ev.info.get('error') or 'exit ' + str(ev.info.get('code'))}",
                hint="check the destination path (its parent must be a directory)",
            )
        if mode_fix:
            await self.run(["chmod", "0644", dest], f"chmod {dest}", show=False)

    async def run(
        self,
        argv: list[str],
        what: str,
        *,
        show: bool,
        env: dict[str, str] | None = None,
        apt: str | None = None,
    ) -> str:
        """Run argv in /root; with `show`, each output line is an `output` event.
        Returns stdout; a non-zero exit is a BuildFailed quoting the output's tail."""
        spec = {
            "kind": "exec",
            "argv": argv,
            "env": {**BUILD_ENV, **(env or {})},
            "workdir": "/root",
        }
        stream, _ = await self.client.open(spec)  # a refused one queues its exit
        stdout = bytearray()
        tail: list[str] = []
        pending = {"stdout": b"", "stderr": b""}
        try:
            while True:
                ev = await stream.next_event()
                if ev.kind == "exit":
                    break
                if ev.kind not in ("stdout", "stderr"):
                    continue
                if ev.kind == "stdout" and not show:
                    stdout += ev.data
                data = pending[ev.kind] + ev.data
                *lines, pending[ev.kind] = data.split(b"\n")
                for raw in lines:
                    self._line(raw, show, tail)
                await stream.consumed(len(ev.data))
        finally:
            await stream.close()
        for rest in pending.values():
            if rest:
                self._line(rest, show, tail)
        code = int(ev.info.get("code", 255))
        if code != 0:
            raise _failure(what, code, ev.info, tail, apt)
        return stdout.decode(errors="replace")

    def _line(self, raw: bytes, show: bool, tail: list[str]) -> None:
        # A progress meter redraws its line with \r: keep what it showed last.
        pieces = [p for p in raw.decode(errors="replace").split("\r") if p.strip()]
        line = pieces[-1] if pieces else ""
        tail.append(line)
        del tail[:-OUTPUT_TAIL]
        if show:
            self.progress("output", line)


def _failure(
    what: str, code: int, info: dict[str, Any], tail: list[str], apt: str | None
) -> BuildFailed:
    if info.get("error"):
        return BuildFailed(
            f"{what}: {info['error']}",
            hint="check the command exists in the image; the daemon log has details",
        )
    errors = [line for line in tail if line.startswith("E: ")]
    if apt is not None:
        why = errors[-1][3:] if errors else (tail[-1] if tail else f"exit {code}")
        return BuildFailed(
            f"{what} failed: {why}",
            hint=f"check the package names (`apt-cache policy NAME`) and that the guest "
            f"reaches the mirror {apt}; the output above shows apt's messages",
        )
    last = next((line for line in reversed(tail) if line.strip()), "")
    return BuildFailed(
        f"{what} exited {code}" + (f": {last.strip()}" if last else ""),
        hint="fix it and build again; its output was streamed above",
    )


def _agent_channel(vm: VMRecord) -> dict[str, Any] | None:
    handle = vm.engine_handle
    channel = handle.extra.get("agent") if handle is not None else None
    return channel if isinstance(channel, dict) else None


def _components(sources: tuple[str, ...]) -> tuple[str, ...]:
    for line in sources:
        words = line.split()
        if len(words) >= 4 and words[0] == "deb":
            return tuple(words[3:])
    return ("main",)


def _recipe_of(info: ImageInfo | None) -> str | None:
    if info is None:
        return None
    for source in (info.source, info.build.base_source if info.build else ""):
        if source.startswith("recipe:"):
            return source.removeprefix("recipe:")
    return None


async def _thread(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run blocking work in a thread; a cancel takes effect once it has finished
    (a thread cannot be cut, and rolling back under it would race its writes)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kw))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        raise
