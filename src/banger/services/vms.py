"""The VM lifecycle: create, start, stop, restart, delete, set, and re-adoption.

One path for create: record the VM → resolve artifacts (pulling what is missing)
→ choose the launch (`services.launch`: boot, or restore a golden snapshot) →
capabilities prepare (disks, lease) → wait for a boot slot (`queued`) →
capabilities attach (TAP, …) → guest config → engine start (`boot` or `restore`,
then `identity`) → SSH ready. A failure or cancel at any step undoes, in reverse,
whatever ran.

Crash safety rests on three rules:
- intent before action: the record (and each resource in it: lease, TAP, engine
  pid) is saved before or the instant the resource exists, so `reconcile` at the
  next daemon start can find and remove whatever a killed daemon left;
- one operation per VM at a time: create, start, stop, restart, set and delete take
  the VM's lock and read its state under it; delete and stop cancel a create;
- the daemon watches each running VM's process (`EngineWatcher`) and marks the VM
  stopped, with the reason, the moment it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from banger.agent.client import wait_healthy
from banger.api.models import CreateVM, SetVM
from banger.artifacts import ext4
from banger.capabilities.base import BootContributions, Capability, PrepareContext
from banger.config import Config
from banger.engines import process
from banger.engines.base import (
    Engine,
    EngineHandle,
    GuestConfig,
    config_from_dict,
    config_to_dict,
)
from banger.engines.guest_config import build_guest_config
from banger.engines.state import SavedState, has_state, read_state
from banger.errors import BangerError, Conflict, InvalidInput
from banger.net.addresses import mac_for
from banger.paths import Paths
from banger.progress import Progress
from banger.services import launch as launch_mod
from banger.services.admission import Admission, default_boot_limit, host_memory_mib
from banger.services.artifacts import ArtifactService, BootImage, BootKernel
from banger.services.golden import GoldenSnapshots, can_restore
from banger.services.launch import STALE_SUFFIX, ColdBoot, Identity, Launch, Restore, Resume
from banger.services.readiness import BootWatch, exit_reason
from banger.services.ssh import forget_host, public_key, wait_for_ssh
from banger.services.watch import EngineWatcher
from banger.sizing import HostLimits, check_memory, check_sizing, check_vcpus
from banger.store import Store
from banger.units import check_vm_name
from banger.vm import SnapshotRecord, SnapshotRepository, VMRecord, VMRepository, VMState

log = logging.getLogger("banger.vms")

EngineFactory = Callable[[str], Engine]
FaultHook = Callable[[str], None]  # called after each create stage; raises to inject a failure
PointHook = Callable[[str], None]  # called at each named crash point (tests kill the daemon)
NOT_RUNNING = (VMState.CREATING, VMState.STOPPED, VMState.ERROR, VMState.SUSPENDED)
STATE_DIR = "state"  # a suspended VM's saved memory and device state, in its directory
# Readiness lasts as long as the guest makes progress (BootWatch); this only caps it.
READY_LIMIT = 3600.0
AGENT_TIMEOUT = 60.0  # after SSH works; the agent starts with multi-user.target too
# States in which a VM's memory counts against the host (admission).
HOLDS_MEMORY = (
    VMState.CREATING,
    VMState.STARTING,
    VMState.RUNNING,
    VMState.STOPPING,
    VMState.SUSPENDING,
    VMState.RESUMING,
)
FAILED_LOGS_KEPT = 10  # logs/failed/ keeps the newest failed creates' logs


class VMService:
    def __init__(
        self,
        *,
        store: Store,
        paths: Paths,
        config: Config,
        artifacts: ArtifactService,
        engine_for: EngineFactory,
        resolve_engine: Callable[[str | None], str],
        capabilities: list[Capability],
        ssh_key: Path,
        admission: Admission | None = None,
        watcher: EngineWatcher | None = None,
        golden: GoldenSnapshots | None = None,
        fault: FaultHook = lambda stage: None,
        point: PointHook = lambda name: None,
    ) -> None:
        self.store = store
        self.repo = VMRepository(store)
        self.snapshots = SnapshotRepository(store)
        self.fault = fault
        self.point = point
        self.paths = paths
        self.config = config
        self.artifacts = artifacts
        self.engine_for = engine_for
        self.resolve_engine = resolve_engine
        self.capabilities = capabilities
        self.ssh_key = ssh_key
        self.admission = admission or Admission(
            config.max_concurrent_boots or default_boot_limit(),
            config.memory_overcommit,
            host_memory_mib(),
        )
        self.watcher = watcher or EngineWatcher()
        self.golden = golden
        self._locks: dict[str, asyncio.Lock] = {}
        # The task of each create in flight, so a delete or stop can cancel it.
        self._creates: dict[str, asyncio.Task[Any]] = {}
        self._forking: dict[str, int] = {}  # snapshot id -> forks of it in flight
        self._background: set[asyncio.Task[None]] = set()

    # -- queries -------------------------------------------------------------------

    def all(self) -> list[VMRecord]:
        return self.repo.all()

    def get(self, name: str) -> VMRecord:
        return self.repo.get(name)

    def vm_dir(self, vm: VMRecord) -> Path:
        return self.paths.vm_dir(vm.id)

    def lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    # -- create --------------------------------------------------------------------

    def new_record(self, req: CreateVM) -> VMRecord:
        """Validate a create request into a record (nothing is made or stored yet).
        A fork (`from_snapshot`) takes its snapshot's machine: image, kernel, engine,
        vCPUs, memory and disk sizes."""
        # Only an absent name generates one: an explicit "" is a mistake, not a request.
        name = check_vm_name(req.name) if req.name is not None else self._generate_name()
        if self.repo.name_taken(name):
            raise Conflict(
                f"a VM named `{name}` already exists",
                hint=f"pick another --name, or `banger vm delete {name}`",
            )
        c = self.config
        image = req.image or c.default_image
        # A fork gets its snapshot's machine, memory included: nothing to check here.
        floor = None if req.from_snapshot is not None else self.artifacts.memory_floor(image)
        size = check_sizing(
            req.vcpus if req.vcpus is not None else c.default_vcpus,
            req.memory if req.memory is not None else c.default_memory,
            req.disk_size if req.disk_size is not None else c.default_disk_size,
            req.work_size if req.work_size is not None else c.default_work_size,
            self.host_limits(),
            floor,
            configured_memory=req.memory is None,
        )
        options = req.model_dump()
        for cap in self.capabilities:  # their own options (e.g. --publish), before anything
            cap.validate(options)
        snap = self.fork_source(req) if req.from_snapshot is not None else None
        vm_id = secrets.token_hex(6)
        vm = VMRecord(
            id=vm_id,
            name=name,
            state=VMState.CREATING,
            image=image,
            kernel=req.kernel or "",
            engine=self.resolve_engine(req.engine),
            vcpus=size.vcpus,
            memory_mib=size.memory_mib,
            disk_bytes=size.disk_bytes,
            work_bytes=size.work_bytes,
            mac=mac_for(vm_id),
            nat=req.nat,
        )
        if snap is not None:
            vm.image, vm.kernel, vm.engine = snap.image, snap.kernel, snap.engine
            vm.vcpus, vm.memory_mib = snap.vcpus, snap.memory_mib
            vm.disk_bytes, vm.work_bytes = snap.disk_bytes, snap.work_bytes
            vm.nat = req.nat or snap.nat
        self.admission.check_memory(name, vm.memory_mib, self._memory_held())
        return vm

    def fork_source(self, req: CreateVM) -> SnapshotRecord:
        """The ready snapshot a fork restores. Its machine is the snapshot's: options
        that would change it are refused rather than ignored."""
        assert req.from_snapshot is not None
        snap = self.snapshots.get(req.from_snapshot)
        if snap.state != "ready":
            raise Conflict(
                f"snapshot `{snap.name}` is still being taken",
                hint="wait for `banger vm snapshot` to finish",
            )
        given = [
            f"--{flag}"
            for flag, value in (
                ("image", req.image),
                ("kernel", req.kernel),
                ("engine", req.engine),
                ("vcpus", req.vcpus),
                ("memory", req.memory),
                ("disk-size", req.disk_size),
                ("work-size", req.work_size),
            )
            if value is not None
        ]
        if given or req.cold:
            raise InvalidInput(
                f"a VM made from snapshot `{snap.name}` has the snapshot's machine; "
                f"{', '.join(given + (['--cold'] if req.cold else []))} cannot change it",
                hint=f"drop {'them' if len(given) + req.cold > 1 else 'it'}, or create "
                "without --from",
            )
        engine = self.engine_for(snap.engine)
        if not can_restore(engine):
            raise Conflict(
                f"the {snap.engine} engine here cannot restore snapshot `{snap.name}` into a "
                "new VM: the guest would keep its source's vsock CID",
                hint="forks need an engine whose restored copies run side by side: QEMU "
                "with its virtio-serial agent channel, or Firecracker",
            )
        return snap

    def host_limits(self) -> HostLimits:
        """What one VM may be given here (RAM, CPUs, free space where disks live)."""
        return HostLimits.probe(self.paths.vms_dir)

    def _generate_name(self) -> str:
        taken = {vm.name for vm in self.all()}
        for _ in range(100):
            name = f"vm-{secrets.token_hex(2)}"
            if name not in taken:
                return name
        raise Conflict("could not generate a free VM name", hint="pass --name")

    def _memory_held(self, exclude: str | None = None) -> int:
        return sum(
            vm.memory_mib for vm in self.all() if vm.state in HOLDS_MEMORY and vm.id != exclude
        )

    async def create(self, req: CreateVM, progress: Progress, *, purpose: str = "") -> VMRecord:
        """Create and boot a VM. Holds the VM's lock throughout; a `delete` or `stop`
        of the VM meanwhile cancels it, and the rollback removes all it made.
        A `purpose` marks a VM banger made for its own work (hidden from `vm list`,
        removed by `reconcile` whatever state it is in)."""
        vm = self.new_record(req)
        vm.purpose = purpose
        task = asyncio.current_task()
        assert task is not None
        async with self.lock(vm.id):
            self._creates[vm.id] = task
            # A snapshot being forked is not removed under the fork (`delete_snapshot`).
            source = self.fork_source(req).id if req.from_snapshot is not None else None
            if source is not None:
                self._forking[source] = self._forking.get(source, 0) + 1
            try:
                return await self._create_locked(vm, req, progress)
            finally:
                self._creates.pop(vm.id, None)
                if source is not None:
                    self._forking[source] -= 1

    async def _create_locked(self, vm: VMRecord, req: CreateVM, progress: Progress) -> VMRecord:
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        # Intent first: the record exists before anything it owns, so a daemon
        # killed from here on finds it (state "creating") and removes what it made.
        self.repo.save(vm)
        log.info("creating vm %s (%s) image=%s engine=%s", vm.name, vm.id, vm.image, vm.engine)
        async with AsyncExitStack() as undo:
            undo.push_async_callback(self._forget, vm)  # runs last
            try:
                self.point("create:recorded")
                progress("image", vm.image)
                image = await self.artifacts.ensure_image(vm.image, progress, refresh=True)
                kernel = await self.artifacts.ensure_kernel_for(
                    image, req.kernel or vm.kernel or None, progress
                )
                vm.kernel = kernel.name
                self.repo.save(vm, durable=False)
                timings["image"] = time.monotonic() - t0
                launch: Launch = ColdBoot(image.rootfs)
                shape = None
                work_seed, kind = image.work_seed, ""
                if req.from_snapshot is not None:
                    launch, work_seed = self._fork_launch(self.fork_source(req), vm)
                    kind = "fork"
                elif self.golden is not None and image.agent and image.ssh and not image.cmdline:
                    launch, shape = self.golden.choose(vm, image, kernel, cold=req.cold)
                await self._prepare(
                    vm, req, launch.rootfs, work_seed, progress, timings, undo,
                    kind or launch.stage,
                )  # fmt: skip
                # A new VM has a new identity: whatever was recorded for its address
                # or name belonged to a VM that is gone.
                forget_host(self.paths.known_hosts, _host_names(vm))
                undo.callback(forget_host, self.paths.known_hosts, _host_names(vm))
                await self._boot(
                    vm, kernel, image, progress, timings, undo, op="create", launch=launch
                )
            except BaseException as exc:
                log.warning("create of %s failed (%r); rolling back", vm.name, exc)
                vm.state = VMState.ERROR
                self._keep_failed_logs(vm, exc)
                raise
            undo.pop_all()
        vm.timings = {k: round(v, 3) for k, v in timings.items()}
        vm.timings["total"] = round(time.monotonic() - t0, 3)
        self._mark_running(vm)
        log.info("vm %s ready in %.2fs: %s", vm.name, vm.timings["total"], vm.timings)
        if shape is not None and not launch.restored and self.golden is not None:
            # The next create of this shape restores; once the snapshot is there the
            # capabilities (the disk pool) get ready for such a create.
            template = dataclasses.replace(vm)
            self.golden.build_later(
                shape, lambda rootfs: self._anticipate(template, req, rootfs, image.work_seed)
            )
        return vm

    def _fork_launch(self, snap: SnapshotRecord, vm: VMRecord) -> tuple[Restore, Path]:
        """Restore `snap` into a new VM: its saved machine on clones of both its
        disks, then the agent gives the guest this VM's identity (its `/root` is
        already mounted: the clone of the snapshot's work disk)."""
        d = Path(snap.dir)
        state = read_state(d / STATE_DIR, what=f"snapshot {snap.name}")
        identity = Identity(self.paths.known_hosts, public_key(self.ssh_key), mount_work=False)

        async def hold(held: bool) -> None:
            for cap in self.capabilities:
                await cap.hold(vm, held)

        restore = Restore(state, d / k_name("rootfs"), identity, f"snapshot {snap.name}", hold=hold)
        return restore, d / k_name("work")

    def _anticipate(self, vm: VMRecord, req: CreateVM, rootfs: Path, seed: Path | None) -> None:
        ctx = PrepareContext(
            self.vm_dir(vm), rootfs, seed, lambda *a, **k: None, req.model_dump(), "restore"
        )
        for cap in self.capabilities:
            cap.anticipate(vm, ctx)

    async def _prepare(
        self,
        vm: VMRecord,
        req: CreateVM,
        rootfs: Path,
        work_seed: Path | None,
        progress: Progress,
        timings: dict[str, float],
        undo: AsyncExitStack,
        launch: str = "boot",
    ) -> None:
        """Every capability's `prepare` (disks, lease), each undone by its `destroy`.
        `launch` ("boot", "restore" or "fork") tells them what `rootfs` (and
        `work_seed`) are: a fork's are the disks saved with a snapshot."""
        ctx = PrepareContext(
            self.vm_dir(vm), rootfs, work_seed, progress, req.model_dump(), launch=launch
        )
        for cap in self.capabilities:
            t = time.monotonic()
            stage = cap.stage
            progress(stage, "")
            undo.push_async_callback(cap.destroy, vm)
            await _whole(cap.prepare(vm, ctx))
            self.repo.save(vm, durable=False)
            timings[stage] = timings.get(stage, 0.0) + time.monotonic() - t
            self.fault(stage)
            self.point(f"create:{cap.name}")

    async def _forget(self, vm: VMRecord) -> None:
        self.repo.delete(vm.id)

    def _keep_failed_logs(self, vm: VMRecord, exc: BaseException) -> None:
        """Rollback deletes the VM's directory: keep its console and engine logs under
        logs/failed/ (the newest FAILED_LOGS_KEPT) and point the error's hint there."""
        vm_dir = self.vm_dir(vm)
        logs = [vm_dir / "console.log", *sorted((vm_dir / "run").glob("*.log"))]
        logs = [p for p in logs if p.is_file()]
        if not logs:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        dest = self.paths.failed_logs_dir / f"{stamp}-{vm.name}-{vm.id}"
        try:
            dest.mkdir(mode=0o700, parents=True, exist_ok=True)
            for p in logs:
                shutil.copyfile(p, dest / p.name)
                os.chmod(dest / p.name, 0o600)
            kept = sorted(self.paths.failed_logs_dir.iterdir())
            for old in kept[:-FAILED_LOGS_KEPT]:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as err:
            log.warning("could not keep the logs of failed create %s: %s", vm.name, err)
            return
        log.info("kept the logs of failed create %s in %s", vm.name, dest)
        if isinstance(exc, BangerError):
            for old_dir in (str(vm_dir / "run"), str(vm_dir)):
                exc.message = exc.message.replace(old_dir, str(dest))
                exc.hint = exc.hint.replace(old_dir, str(dest))
            exc.hint = exc.hint.replace("`banger vm logs`", f"{dest / 'console.log'}")
            if str(dest) not in exc.hint:
                names = ", ".join(p.name for p in logs)
                exc.hint = (exc.hint + "; " if exc.hint else "") + f"logs ({names}) kept in {dest}"

    async def _boot(
        self,
        vm: VMRecord,
        kernel: BootKernel,
        image: BootImage,
        progress: Progress,
        timings: dict[str, float],
        undo: AsyncExitStack,
        *,
        op: str,
        launch: Launch | None = None,
    ) -> None:
        """Attach runtime resources, start the engine (boot, or restore and apply the
        identity), wait until the guest answers on SSH (and its agent, when the image
        has one). Pushes undo steps. Waits for a boot slot first (`queued`), so the
        host is not asked to boot more than it can."""
        launch = launch or ColdBoot(Path())
        t, queued = time.monotonic(), self.admission.full
        async with self.admission.boot_slot(progress):
            if queued:
                timings["queued"] = time.monotonic() - t
            boot = await self._attach(vm, progress, timings, undo)
            log.debug("vm %s: attached", vm.name)
            self.point(f"{op}:attached")
            boot.cmdline[:0] = image.cmdline  # what the image needs (init=) comes first
            engine, handle = await self._spawn(
                vm, kernel, boot, progress, timings, undo, op, launch
            )
            settle = functools.partial(launch.settle, vm, engine, handle, boot, progress, timings)
            ready = functools.partial(
                self._wait_ready, vm, engine, handle, image, progress, timings,
                login=not launch.resumed, probe=not launch.sshd_listens,
            )  # fmt: skip
            if launch.settles_while_ready:  # e.g. a resume's clock, meanwhile sshd answers
                settling = asyncio.ensure_future(settle())
                self.point(f"{op}:booted")
                try:
                    await ready()
                except BaseException:
                    settling.cancel()
                    with contextlib.suppress(BaseException):
                        await settling
                    raise
                await settling
            else:
                await settle()
                log.debug("vm %s: settled", vm.name)
                self.point(f"{op}:booted")
                await ready()
            log.debug("vm %s: ready", vm.name)
            await launch.ready(handle)
            log.debug("vm %s: launch ready", vm.name)
        if op == "create":
            self.point("create:ready")

    async def _attach(
        self, vm: VMRecord, progress: Progress, timings: dict[str, float], undo: AsyncExitStack
    ) -> BootContributions:
        """Every capability's `attach` (TAP, NAT rule, DNS record), undone by `detach`.
        The record is saved after each, so the TAP a VM holds is known at once."""
        boot = BootContributions()
        t = time.monotonic()
        progress("network", "")
        for cap in self.capabilities:
            undo.push_async_callback(cap.detach, vm)
            await _whole(cap.attach(vm, boot))
            self.repo.save(vm, durable=False)
        timings["network"] = timings.get("network", 0.0) + time.monotonic() - t
        self.fault("network")
        return boot

    async def _spawn(
        self,
        vm: VMRecord,
        kernel: BootKernel,
        boot: BootContributions,
        progress: Progress,
        timings: dict[str, float],
        undo: AsyncExitStack,
        op: str,
        launch: Launch,
    ) -> tuple[Engine, EngineHandle]:
        """Start the hypervisor; its handle is recorded the moment the process exists."""
        t = time.monotonic()
        progress(launch.stage, vm.engine)
        engine = self.engine_for(vm.engine)
        run_dir = self.vm_dir(vm) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        drives = {d.drive_id: d.path for d in boot.drives}
        nic = boot.nics[0] if boot.nics else None
        cfg = build_guest_config(
            vm_id=vm.id,
            name=vm.name,
            kernel=kernel.vmlinux,
            initrd=kernel.initrd,
            rootfs=drives["rootfs"],
            work_disk=drives.get("work"),
            vcpus=vm.vcpus,
            memory_mib=vm.memory_mib,
            run_dir=run_dir,
            ip=boot.ip,
            prefix=boot.prefix or 24,
            gateway=boot.gateway,
            dns=boot.dns,
            tap=nic.tap if nic else None,
            mac=nic.mac if nic else vm.mac,
            extra_cmdline=boot.cmdline,
            vsock_cid=boot.vsock_cid,
            console_log=self.console_log(vm),
        )

        def spawned(handle: EngineHandle) -> None:
            # The machine as launched, for a later suspend or snapshot.
            handle.extra["guest"] = config_to_dict(cfg)
            vm.handle = handle.to_dict()
            self.repo.save(vm, durable=False)
            undo.push_async_callback(engine.kill, handle)
            self.point(f"{op}:spawned")

        log.debug("vm %s: starting the engine", vm.name)
        handle = await launch.start(engine, cfg, spawned)
        log.debug("vm %s: engine started", vm.name)
        if vm.handle != handle.to_dict():  # an engine that did not call on_spawn
            spawned(handle)
        if not launch.resumed:  # a resumed guest kept running: its uptime goes on
            vm.started_at = time.time()
        self.repo.save(vm, durable=False)
        timings[launch.stage] = time.monotonic() - t
        self.fault("boot")
        return engine, handle

    async def _wait_ready(
        self,
        vm: VMRecord,
        engine: Engine,
        handle: EngineHandle,
        image: BootImage,
        progress: Progress,
        timings: dict[str, float],
        *,
        login: bool = True,
        probe: bool = True,
    ) -> None:
        """Wait for SSH (then the agent) for as long as the guest makes progress; an
        image without an SSH server is ready when its agent answers. Without `login`
        (a resumed guest: sshd and its keys already took a login) sshd's answer is
        enough; without `probe` (sshd known to listen) the login starts at once.
        The agent is asked after the login, not during it: under TCG a request the
        guest serves meanwhile slows the login down (measured: warm create SSH
        stage ~2 s longer on a loaded host)."""
        t = time.monotonic()
        assert vm.ip is not None
        watch = BootWatch(
            self.console_log(vm),
            lambda: engine.is_running(handle),
            self.config.boot_stall_timeout,
        )
        if not image.ssh:
            progress("agent", "healthz (the image has no SSH server)")
            await wait_healthy(handle.extra.get("agent"), READY_LIMIT, check=watch)
            timings["agent"] = time.monotonic() - t
            return
        progress("ssh", f"{vm.ip}:22")
        await wait_for_ssh(
            vm.ip,
            self.ssh_key,
            self.paths.known_hosts,
            [vm.name, f"{vm.name}.vm"],
            READY_LIMIT,
            check=watch,
            login=login,
            probe=probe,
        )
        timings["ssh"] = time.monotonic() - t
        log.debug("vm %s: ssh answered", vm.name)
        self.fault("ssh")
        if image.agent:
            t = time.monotonic()
            progress("agent", "healthz")
            await wait_healthy(handle.extra.get("agent"), AGENT_TIMEOUT)
            timings["agent"] = time.monotonic() - t

    def console_log(self, vm: VMRecord) -> Path:
        return self.vm_dir(vm) / "console.log"

    # -- watching running VMs ------------------------------------------------------

    def _mark_running(self, vm: VMRecord) -> None:
        vm.state = VMState.RUNNING
        vm.last_error = None
        self.repo.save(vm)
        self._watch(vm)

    def _watch(self, vm: VMRecord) -> None:
        handle = vm.engine_handle
        if handle is not None:
            vm_id = vm.id
            engine = self.engine_for(vm.engine)
            self.watcher.watch(
                vm_id,
                handle,
                lambda: self._engine_exited(vm_id, handle),
                lambda: engine.is_running(handle),
            )

    async def _engine_exited(self, vm_id: str, handle: EngineHandle) -> None:
        """A running VM's process ended on its own: the VM is stopped, and says why."""
        async with self.lock(vm_id):
            vm = self.repo.find(vm_id)
            if vm is None or not vm.running or vm.handle != handle.to_dict():
                return  # stopped or restarted by an operation meanwhile
            reason = self._exit_reason(vm, handle)
            log.warning("vm %s: %s", vm.name, reason)
            await self._release_runtime(vm, last_error=reason)

    def _exit_reason(self, vm: VMRecord, handle: EngineHandle) -> str:
        engine_log = handle.extra.get("log")
        return exit_reason(
            vm.engine, handle.pid, self.console_log(vm), Path(engine_log) if engine_log else None
        )

    # -- start / stop / restart ----------------------------------------------------

    async def start(self, name: str, progress: Progress, *, cold: bool = False) -> VMRecord:
        """Start a VM: a suspended one is restored from its saved state (processes
        carry on), unless `cold`, which discards that state and boots."""
        vm = self.get(name)
        async with self.lock(vm.id):
            return await self._start_locked(self.get(vm.id), progress, cold=cold)

    async def _start_locked(
        self, vm: VMRecord, progress: Progress, *, cold: bool = False
    ) -> VMRecord:
        if vm.running:
            handle = vm.engine_handle
            if handle is not None and self.engine_for(vm.engine).is_running(handle):
                return vm
            # Its process is gone and nobody noticed yet: release, then boot it.
            await self._release_runtime(
                vm, last_error=self._exit_reason(vm, handle) if handle else None
            )
        if vm.state is VMState.SUSPENDED:
            if not cold:
                return await self._resume_locked(vm, progress)
            progress("discard", "the saved state (--cold)")
            self._discard_state(vm)
            self._mark_stopped(vm)
        vm.require(VMState.STOPPED, VMState.ERROR, action="start", hint="wait for it to finish")
        self._discard_state(vm)  # a boot makes any leftover state stale
        return await self._launch_recorded(vm, progress, VMState.STARTING, op="start")

    async def _launch_recorded(
        self,
        vm: VMRecord,
        progress: Progress,
        state: VMState,
        *,
        op: str,
        launch: Launch | None = None,
        state_after_failure: Callable[[], VMState] = lambda: VMState.STOPPED,
    ) -> VMRecord:
        """Start or resume a VM that keeps its record: admission, its artifacts, the
        record in `state` (fault point `<op>:recorded`), the boot with its undo stack,
        then running with its timings. On failure the undo stack has killed the engine
        and detached; only the record is left, in `state_after_failure()`."""
        self.admission.check_memory(vm.name, vm.memory_mib, self._memory_held(exclude=vm.id))
        image = await self.artifacts.ensure_image(vm.image, progress, refresh=False)
        kernel = await self.artifacts.ensure_kernel_for(image, vm.kernel or None, progress)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        vm.state = state
        self.repo.save(vm)
        self.point(f"{op}:recorded")
        try:
            async with AsyncExitStack() as undo:
                await self._boot(vm, kernel, image, progress, timings, undo, op=op, launch=launch)
                undo.pop_all()
        except BaseException as exc:
            error = str(exc) or f"{op} {type(exc).__name__}"
            self._mark_stopped(vm, last_error=error, state=state_after_failure())
            raise
        vm.timings = {k: round(v, 3) for k, v in timings.items()}
        vm.timings["total"] = round(time.monotonic() - t0, 3)
        self._mark_running(vm)
        return vm

    # -- suspend / resume ------------------------------------------------------------

    def state_dir(self, vm: VMRecord) -> Path:
        return self.vm_dir(vm) / STATE_DIR

    def _discard_state(self, vm: VMRecord) -> None:
        """Remove a VM's saved state (and a save cut short)."""
        final = self.state_dir(vm)
        for d in (final, *(final.with_name(STATE_DIR + x) for x in (".partial", STALE_SUFFIX))):
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)

    def _launched_config(self, vm: VMRecord, handle: EngineHandle, action: str) -> GuestConfig:
        saved = handle.extra.get("guest")
        if not isinstance(saved, dict):
            raise Conflict(
                f"VM `{vm.name}` was started by an older banger that did not record its "
                f"machine; {action} needs it restarted once",
                hint=f"`banger vm restart {vm.name}`, then {action} it",
            )
        return config_from_dict(saved)

    async def suspend(self, name: str, progress: Progress) -> VMRecord:
        """Pause the guest, save its memory and device state beside its disks, end its
        process and release its runtime resources (TAP, NAT, DNS). A failed save
        lets the guest run on as before."""
        vm = self.get(name)
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            if vm.state is VMState.SUSPENDED:
                return vm
            vm.require(VMState.RUNNING, action="suspend", hint=f"`banger vm start {vm.name}` first")
            handle = vm.engine_handle
            assert handle is not None
            engine = self.engine_for(vm.engine)
            cfg = self._launched_config(vm, handle, "suspend")
            t0 = time.monotonic()
            vm.state = VMState.SUSPENDING
            self.repo.save(vm)
            self.watcher.unwatch(vm.id)
            self.point("suspend:recorded")
            final = self.state_dir(vm)
            partial = final.with_name(STATE_DIR + ".partial")
            self._discard_state(vm)
            progress("save", f"memory and device state to {final}")
            try:
                await engine.save_state(handle, cfg, partial)
            except BaseException as exc:
                log.warning("suspend of %s failed (%r); resuming it", vm.name, exc)
                shutil.rmtree(partial, ignore_errors=True)
                await self._resume_in_place(vm, engine, handle)
                raise
            os.replace(partial, final)
            saved_s = time.monotonic() - t0
            self.point("suspend:saved")
            progress("shutdown", "the paused process")
            await engine.kill(handle)
            await self._release_runtime(vm, state=VMState.SUSPENDED)
            vm.timings = {"save": round(saved_s, 3), "total": round(time.monotonic() - t0, 3)}
            self.repo.save(vm)
            progress("suspended", vm.name)
            log.info("vm %s suspended in %.2fs", vm.name, vm.timings["total"])
            return vm

    async def _resume_in_place(self, vm: VMRecord, engine: Engine, handle: EngineHandle) -> None:
        """After a save that did not finish: let the paused guest run on (or, when its
        process cannot, record the VM stopped)."""
        try:
            if engine.is_running(handle):
                await engine.resume(handle)
                vm.state = VMState.RUNNING
                self.repo.save(vm)
                self._watch(vm)
                return
        except Exception as exc:
            log.warning("vm %s: resuming after a failed save failed: %s", vm.name, exc)
            await engine.kill(handle)
        await self._release_runtime(vm, last_error="its process ended during a suspend")

    async def _resume_locked(self, vm: VMRecord, progress: Progress) -> VMRecord:
        """Restore a suspended VM. A state that is missing, truncated or does not fit
        is refused with the reason, the VM stays suspended and its disks untouched."""
        saved = read_state(self.state_dir(vm))
        # The state is still there when the guest never ran (the engine refused or
        # failed to load it): the VM stays suspended.
        await self._launch_recorded(
            vm,
            progress,
            VMState.RESUMING,
            op="resume",
            launch=Resume(saved),
            state_after_failure=lambda: (
                VMState.SUSPENDED if has_state(self.state_dir(vm)) else VMState.STOPPED
            ),
        )
        log.info("vm %s resumed in %.2fs: %s", vm.name, vm.timings["total"], vm.timings)
        return vm

    async def stop(self, name: str, progress: Progress, *, force: bool = False) -> VMRecord:
        """Stop a VM; a VM still being created is cancelled and rolled back instead."""
        vm = self.get(name)
        if await self._cancel_create(vm, progress):
            vm.state = VMState.DELETING  # and now gone
            return vm
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            if vm.running:
                await self._halt(vm, progress, force=force, op="stop")
            elif vm.state is VMState.SUSPENDED:
                # Its guest is not running: stopping it discards the saved state.
                progress("discard", "the saved state")
                self._discard_state(vm)
                self._mark_stopped(vm)
            return vm

    async def _halt(self, vm: VMRecord, progress: Progress, *, force: bool, op: str) -> None:
        """Stop the engine (gracefully unless `force`), then release runtime resources."""
        vm.state = VMState.STOPPING
        self.repo.save(vm)
        self.watcher.unwatch(vm.id)
        if op == "stop":
            self.point("stop:recorded")
        handle = vm.engine_handle
        if handle is not None:
            engine = self.engine_for(vm.engine)
            progress("shutdown", "kill" if force else "graceful")
            if force:
                await engine.kill(handle)
            else:
                await engine.stop(handle, self.config.stop_timeout)
        if op == "stop":
            self.point("stop:halted")
        await self._release_runtime(vm)
        progress("stopped", vm.name)

    async def _release_runtime(
        self, vm: VMRecord, last_error: str | None = None, state: VMState = VMState.STOPPED
    ) -> None:
        """Undo every `attach` (idempotent) and record the VM as stopped (or `state`)."""
        self.watcher.unwatch(vm.id)
        for cap in reversed(self.capabilities):
            try:
                await cap.detach(vm)
            except Exception:
                log.exception("detach %s for %s failed", cap.name, vm.name)
        self._mark_stopped(vm, last_error, state)

    def _mark_stopped(
        self, vm: VMRecord, last_error: str | None = None, state: VMState = VMState.STOPPED
    ) -> None:
        self.watcher.unwatch(vm.id)
        vm.state = state
        vm.handle = None
        if last_error is not None:
            vm.last_error = last_error
        self.repo.save(vm)

    async def restart(self, name: str, progress: Progress) -> VMRecord:
        vm = self.get(name)
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            if vm.running:
                await self._halt(vm, progress, force=False, op="stop")
            return await self._start_locked(vm, progress, cold=True)

    async def _cancel_create(self, vm: VMRecord, progress: Progress) -> bool:
        """Cancel the create of `vm` if one runs; True once its rollback is done."""
        task = self._creates.get(vm.id)
        if task is None or task.done() or not task.cancel():
            return False
        progress("cancel", f"cancelling the create of {vm.name}")
        await asyncio.wait([task])
        return True

    # -- named snapshots -------------------------------------------------------------

    async def snapshot(self, name: str, as_name: str | None, progress: Progress) -> SnapshotRecord:
        """Copy a running or suspended VM's memory, device state and both disks into a
        named snapshot. A running guest is paused for the copy and then continues."""
        vm = self.get(name)
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            vm.require(
                VMState.RUNNING,
                VMState.SUSPENDED,
                action="snapshot",
                hint=f"`banger vm start {vm.name}` first",
            )
            snap_name = check_vm_name(as_name) if as_name else _snapshot_name(vm.name)
            if self.snapshots.find(snap_name) is not None:
                raise Conflict(
                    f"a snapshot named `{snap_name}` already exists",
                    hint=f"pick another --as, or `banger snapshot rm {snap_name}`",
                )
            snap_id = secrets.token_hex(6)
            d = self.paths.snapshots_dir / snap_id
            snap = SnapshotRecord(
                id=snap_id,
                name=snap_name,
                state="creating",
                vm_id=vm.id,
                vm_name=vm.name,
                image=vm.image,
                kernel=vm.kernel,
                engine=vm.engine,
                vcpus=vm.vcpus,
                memory_mib=vm.memory_mib,
                disk_bytes=vm.disk_bytes,
                work_bytes=vm.work_bytes,
                nat=vm.nat,
                vm_state=vm.state.value,
                dir=str(d),
            )
            self.snapshots.save(snap)  # intent first: a crash leaves a `creating` row
            try:
                d.mkdir(parents=True, exist_ok=True)
                t0 = time.monotonic()
                if vm.running:
                    saved = await self._snapshot_running(vm, d, progress)
                else:
                    saved = await self._snapshot_suspended(vm, d, progress)
                snap.info = {
                    "fit": saved.fit,
                    "drives": {k: str(d / f"{k_name(k)}") for k in saved.drives},
                    "source_drives": saved.drives,
                    "state_files": saved.files,
                    "mac": vm.mac,
                    "ip": vm.ip,
                    "seconds": round(time.monotonic() - t0, 3),
                }
                snap.size_bytes = _du(d)
                snap.state = "ready"
                self.snapshots.save(snap)
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                self.snapshots.delete(snap_id)
                raise
            progress("snapshot", f"{snap_name} ({snap.size_bytes >> 20} MiB)")
            log.info("vm %s: snapshot %s taken", vm.name, snap_name)
            return snap

    async def _snapshot_running(self, vm: VMRecord, d: Path, progress: Progress) -> SavedState:
        handle = vm.engine_handle
        assert handle is not None
        engine = self.engine_for(vm.engine)
        cfg = self._launched_config(vm, handle, "a snapshot")
        progress("save", "memory and device state (the guest is paused)")
        try:
            saved = await engine.save_state(handle, cfg, d / STATE_DIR)
            progress("disks", "copying both disks while paused")
            for drive in cfg.drives:
                await asyncio.to_thread(ext4.clone_file, drive.path, d / k_name(drive.drive_id))
        finally:
            await _quietly(engine.resume(handle))
        return saved

    async def _snapshot_suspended(self, vm: VMRecord, d: Path, progress: Progress) -> SavedState:
        saved = read_state(self.state_dir(vm))
        progress("copy", "the saved state and both disks")
        await asyncio.to_thread(shutil.copytree, saved.dir, d / STATE_DIR)
        for drive_id, path in saved.drives.items():
            await asyncio.to_thread(ext4.clone_file, Path(path), d / k_name(drive_id))
        return read_state(d / STATE_DIR)

    def delete_snapshot(self, name: str) -> str:
        """Remove a snapshot: its row first (from then on it is gone, atomically),
        then its files (a crash meanwhile leaves a directory the next start sweeps)."""
        snap = self.snapshots.get(name)
        if self._forking.get(snap.id):
            raise Conflict(
                f"snapshot `{snap.name}` is being restored into a new VM",
                hint=f"`banger snapshot rm {snap.name}` once that create is done",
            )
        self.snapshots.delete(snap.id)
        shutil.rmtree(snap.dir, ignore_errors=True)
        return snap.name

    async def _reconcile_snapshots(self) -> None:
        """Snapshots cut by a crash (`creating`) and directories no row owns go; a
        running source VM the cut snapshot had paused carries on."""
        known = set()
        for snap in self.snapshots.all():
            if snap.state != "ready":
                log.warning("removing snapshot %s: its copy did not finish", snap.name)
                shutil.rmtree(snap.dir, ignore_errors=True)
                self.snapshots.delete(snap.id)
                vm = self.repo.find(snap.vm_id)
                handle = vm.engine_handle if vm is not None else None
                if vm is not None and vm.running and handle is not None:
                    engine = self.engine_for(vm.engine)
                    if engine.is_running(handle):
                        log.warning("vm %s: resuming it after the cut snapshot", vm.name)
                        await _quietly(engine.resume(handle))
            else:
                known.add(Path(snap.dir).name)
        root = self.paths.snapshots_dir
        if root.is_dir():
            for entry in root.iterdir():
                if entry.name not in known:
                    shutil.rmtree(entry, ignore_errors=True)

    # -- delete --------------------------------------------------------------------

    def check_deletable(self, vm: VMRecord, force: bool) -> None:
        if not force:
            vm.require(
                *NOT_RUNNING,
                action="delete",
                hint=f"stop it first (`banger vm stop {vm.name}`) or pass --force",
            )

    async def delete(self, name: str, progress: Progress, *, force: bool = False) -> str:
        """Delete a VM (killing it with `force`); a VM still being created is cancelled
        and rolled back. The state is read under the VM's lock, never before."""
        vm = self.get(name)
        if await self._cancel_create(vm, progress):
            return vm.name
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            self.check_deletable(vm, force)
            if vm.running:
                await self._halt(vm, progress, force=True, op="delete")
            self.point("delete:halted")
            vm.state = VMState.DELETING
            self.repo.save(vm)
            self.point("delete:recorded")
            progress("delete", vm.name)
            await self._teardown(vm, runtime=False)
        self._locks.pop(vm.id, None)
        return vm.name

    async def _teardown(self, vm: VMRecord, *, runtime: bool = True, quiet: bool = False) -> None:
        """Remove everything a VM owns, in reverse order of creation, then its record:
        with `runtime`, its process and runtime resources first (a stopped VM has none).
        Idempotent: reconciliation runs it for a VM whose create or delete was cut."""
        hosts = _host_names(vm)  # before `destroy` gives the address back
        if runtime:
            await self._kill_engine(vm)
            await self._release_runtime(vm)
        for cap in reversed(self.capabilities):
            if quiet:
                await _quietly(cap.destroy(vm))
            else:
                await cap.destroy(vm)
            if cap.name in ("disks", "network"):
                self.point(f"delete:{cap.name}")
        forget_host(self.paths.known_hosts, hosts)
        self.repo.delete(vm.id)

    async def _kill_engine(self, vm: VMRecord) -> None:
        """Kill the VM's hypervisor: the recorded one, and any process whose argv
        names the VM's directory (spawned in the instant before its pid was saved)."""
        engine = self.engine_for(vm.engine)
        handle = vm.engine_handle
        if handle is not None:
            await engine.kill(handle)
        for orphan in await asyncio.to_thread(process.processes_with_arg, f"{self.vm_dir(vm)}/"):
            log.warning("vm %s: killing unrecorded process %d", vm.name, orphan.pid)
            await process.terminate(orphan.pid, orphan.start_time, grace=0.0)

    async def update(self, name: str, req: SetVM) -> VMRecord:
        vm = self.get(name)
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            if req.vcpus is not None or req.memory is not None:
                vm.require(
                    VMState.CREATING,
                    VMState.STOPPED,
                    VMState.ERROR,
                    action="changing vcpus or memory",
                    hint=f"`banger vm stop {vm.name}` first"
                    + (" (that discards its saved state)" if vm.state is VMState.SUSPENDED else ""),
                )
            if req.vcpus is not None:
                vm.vcpus = check_vcpus(req.vcpus, self.host_limits())
            if req.memory is not None:
                floor = self.artifacts.memory_floor(vm.image)
                vm.memory_mib = check_memory(req.memory, self.host_limits(), floor)
            if req.nat is not None and req.nat != vm.nat:
                vm.nat = req.nat
                if vm.running:
                    # Live settings (NAT) apply now; the record is saved only if they did.
                    for cap in self.capabilities:
                        await cap.apply(vm)
            self.repo.save(vm)
            return vm

    # -- daemon start: re-adopt what survived, reclaim what did not ---------------

    async def reconcile(self) -> None:
        """At daemon start, square every record with the host.

        - mid-create or mid-delete: the VM goes, with all it made (its process too);
        - mid-start or mid-stop: the process is killed, the VM is stopped;
        - running: re-adopted and watched when its process lives, else stopped;
        - stopped with runtime resources still recorded: they are released;
        - banger's own work VMs (an image build's) go, in whatever state.
        The daemon then has each capability `reclaim` what no record owns (stray
        TAPs, NAT rules, VM directories, half-built pool disks).
        """
        if self.golden is not None:
            try:
                await self.golden.reclaim()  # golden boots a killed daemon left
            except Exception:
                log.exception("reclaiming golden snapshots failed")
        for vm in self.all():
            try:
                await self._reconcile_one(vm)
            except Exception:
                log.exception("reconciling vm %s failed", vm.name)
        try:
            await self._reconcile_snapshots()
        except Exception:
            log.exception("reconciling snapshots failed")

    async def _reconcile_one(self, vm: VMRecord) -> None:
        handle = vm.engine_handle
        engine = self.engine_for(vm.engine)
        if vm.state in (VMState.CREATING, VMState.DELETING):
            log.warning("vm %s was %s when the daemon died; removing it", vm.name, vm.state)
            await self._teardown(vm, quiet=True)
        elif vm.purpose:
            # banger's own work VM (an image build): the work died with the daemon.
            log.warning("vm %s (%s) outlived its daemon; removing it", vm.name, vm.purpose)
            await self._teardown(vm, quiet=True)
        elif vm.running and handle is not None and engine.is_running(handle):
            log.info("re-adopted running vm %s (pid %s)", vm.name, handle.pid)
            self._watch(vm)
        elif vm.running:
            reason = self._exit_reason(vm, handle) if handle else "no engine process recorded"
            log.warning("vm %s died while the daemon was away: %s", vm.name, reason)
            await self._release_runtime(vm, last_error=reason)
        elif vm.state is VMState.SUSPENDING:
            await self._reconcile_suspend(vm, engine, handle)
        elif vm.state is VMState.RESUMING:
            await self._reconcile_resume(vm, engine, handle)
        elif vm.state is VMState.SUSPENDED:
            if vm.handle or vm.tap:
                await self._kill_engine(vm)
                await self._release_runtime(vm, state=VMState.SUSPENDED)
        elif vm.state in (VMState.STARTING, VMState.STOPPING) or vm.handle or vm.tap:
            was = vm.state
            await self._kill_engine(vm)
            await self._release_runtime(
                vm,
                last_error="the daemon stopped during `vm start`; start the VM again"
                if was is VMState.STARTING
                else None,
            )

    async def _reconcile_resume(
        self, vm: VMRecord, engine: Engine, handle: EngineHandle | None
    ) -> None:
        """A resume cut by a daemon crash. The engine runs the guest only once the
        state is loaded and the daemon says so (`cont`): a restoring process that
        never got that far is killed and the state kept (still suspended); a guest
        that runs is adopted (its state is stale, so it goes). An engine that cannot
        tell is treated as having run: killed, its state discarded."""
        alive = handle is not None and engine.is_running(handle)
        ran: bool | None = False
        if alive:
            assert handle is not None
            ran = await engine.guest_ran(handle)
        if ran:
            log.warning("vm %s was resuming when the daemon died; adopting it", vm.name)
            self._discard_state(vm)
            vm.state = VMState.RUNNING
            vm.last_error = None
            self.repo.save(vm)
            self._watch(vm)
            agent = handle.extra.get("agent") if handle is not None else None
            if agent is not None:
                self._background.add(asyncio.create_task(self._set_clock_quietly(vm, agent)))
            return
        await self._kill_engine(vm)
        if ran is None:
            self._discard_state(vm)
        state = VMState.SUSPENDED if has_state(self.state_dir(vm)) else VMState.STOPPED
        why = "the daemon stopped during `vm start` (resume)"
        await self._release_runtime(
            vm,
            last_error=why
            + ("" if state is VMState.SUSPENDED else "; its saved state was discarded"),
            state=state,
        )

    async def _set_clock_quietly(self, vm: VMRecord, agent: dict[str, Any]) -> None:
        try:
            await launch_mod.set_guest_clock(agent)
        except BangerError as exc:
            log.warning("vm %s: could not set the clock after an adopted resume: %s", vm.name, exc)

    async def _reconcile_suspend(
        self, vm: VMRecord, engine: Engine, handle: EngineHandle | None
    ) -> None:
        """A suspend cut by a daemon crash: finished when its state was complete,
        else undone (the partial state removed, the paused guest let run on)."""
        partial = self.state_dir(vm).with_name(STATE_DIR + ".partial")
        if has_state(partial):
            os.replace(partial, self.state_dir(vm))
        if has_state(self.state_dir(vm)):
            log.warning("vm %s was suspending when the daemon died; finishing it", vm.name)
            await self._kill_engine(vm)
            await self._release_runtime(vm, state=VMState.SUSPENDED)
            return
        shutil.rmtree(partial, ignore_errors=True)
        if handle is not None and engine.is_running(handle):
            log.warning("vm %s was suspending when the daemon died; resuming it", vm.name)
            await self._resume_in_place(vm, engine, handle)
        else:
            await self._kill_engine(vm)
            await self._release_runtime(vm, last_error="its process ended during a suspend")


def k_name(drive_id: str) -> str:
    """A disk's file name in a snapshot: rootfs.ext4, work.ext4."""
    return f"{drive_id}.ext4"


def _snapshot_name(vm_name: str) -> str:
    return f"{vm_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _du(d: Path) -> int:
    """Bytes allocated under `d` (sparse disk copies count what they hold)."""
    return sum(p.stat().st_blocks * 512 for p in d.rglob("*") if p.is_file())


def _host_names(vm: VMRecord) -> list[str]:
    return [h for h in (vm.ip, vm.name, f"{vm.name}.vm") if h]


async def _whole(aw: Awaitable[None]) -> None:
    """Await a lifecycle step that a cancel must not cut in half.

    Hooks run work in threads (disk clones, netlink) that an asyncio cancel cannot
    stop; rolling back while they still write would race them. The step finishes,
    then the cancel takes effect.
    """
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        raise


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception:
        log.exception("cleanup step failed")
