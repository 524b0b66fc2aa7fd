"""The VM lifecycle: create, start, stop, restart, delete, set, and re-adoption.

One path for create: resolve artifacts (pulling what is missing) → capabilities
prepare (disks, lease) → capabilities attach (TAP, …) → guest config → engine
start → SSH ready. A failure at any step undoes, in reverse, whatever ran.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from banger.agent.client import wait_healthy
from banger.api.models import CreateVM, SetVM
from banger.capabilities.base import BootContributions, Capability, PrepareContext
from banger.config import Config
from banger.engines.base import Engine
from banger.engines.guest_config import MAX_VCPUS, build_guest_config, mac_for
from banger.errors import Conflict, InvalidInput
from banger.paths import Paths
from banger.progress import Progress
from banger.services.artifacts import ArtifactService, BootKernel
from banger.services.ssh import forget_host, wait_for_ssh
from banger.store import Store
from banger.units import check_vm_name, parse_size
from banger.vm import VMRecord, VMRepository, VMState

log = logging.getLogger("banger.vms")

EngineFactory = Callable[[str], Engine]
FaultHook = Callable[[str], None]  # called after each create stage; raises to inject a failure
NOT_RUNNING = (VMState.CREATING, VMState.STOPPED, VMState.ERROR)
SSH_TIMEOUT = 180.0
AGENT_TIMEOUT = 30.0  # after SSH works; the agent starts with multi-user.target too


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
        fault: FaultHook = lambda stage: None,
    ) -> None:
        self.store = store
        self.repo = VMRepository(store)
        self.fault = fault
        self.paths = paths
        self.config = config
        self.artifacts = artifacts
        self.engine_for = engine_for
        self.resolve_engine = resolve_engine
        self.capabilities = capabilities
        self.ssh_key = ssh_key
        self._locks: dict[str, asyncio.Lock] = {}

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
        """Validate a create request into a record (nothing is made or stored yet)."""
        name = check_vm_name(req.name) if req.name else self._generate_name()
        if self.repo.name_taken(name):
            raise Conflict(
                f"a VM named `{name}` already exists",
                hint=f"pick another --name, or `banger vm delete {name}`",
            )
        vcpus = req.vcpus if req.vcpus is not None else self.config.default_vcpus
        if not 1 <= vcpus <= MAX_VCPUS:
            raise InvalidInput(f"--vcpus {vcpus} is out of range", hint=f"use 1 to {MAX_VCPUS}")
        memory_mib = parse_size(req.memory or self.config.default_memory) // 1024**2
        if memory_mib < 128:
            raise InvalidInput(f"--memory {req.memory} is too small", hint="use at least 128M")
        disk = parse_size(req.disk_size or self.config.default_disk_size)
        work = parse_size(req.work_size or self.config.default_work_size)
        if work < 16 * 1024**2:
            raise InvalidInput(f"--work-size {req.work_size} is too small", hint="use at least 16M")
        options = req.model_dump()
        for cap in self.capabilities:  # their own options (e.g. --publish), before anything
            cap.validate(options)
        vm_id = secrets.token_hex(6)
        return VMRecord(
            id=vm_id,
            name=name,
            state=VMState.CREATING,
            image=req.image or self.config.default_image,
            kernel=req.kernel or "",
            engine=self.resolve_engine(req.engine),
            vcpus=vcpus,
            memory_mib=memory_mib,
            disk_bytes=disk,
            work_bytes=work,
            mac=mac_for(vm_id),
            nat=req.nat,
        )

    def _generate_name(self) -> str:
        taken = {vm.name for vm in self.all()}
        for _ in range(100):
            name = f"vm-{secrets.token_hex(2)}"
            if name not in taken:
                return name
        raise Conflict("could not generate a free VM name", hint="pass --name")

    async def create(self, req: CreateVM, progress: Progress) -> VMRecord:
        vm = self.new_record(req)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        progress("image", vm.image)
        image = await self.artifacts.ensure_image(vm.image, progress, refresh=True)
        kernel = await self.artifacts.ensure_kernel_for(image, req.kernel, progress)
        vm.kernel = kernel.name
        timings["image"] = time.monotonic() - t0
        self.repo.save(vm)  # state "creating": reconciliation removes it if we crash
        log.info("creating vm %s (%s) image=%s engine=%s", vm.name, vm.id, vm.image, vm.engine)
        async with self.lock(vm.id), AsyncExitStack() as undo:
            try:
                ctx = PrepareContext(
                    self.vm_dir(vm), image.rootfs, image.work_seed, progress, req.model_dump()
                )
                for cap in self.capabilities:
                    t = time.monotonic()
                    stage = cap.stage
                    progress(stage, "")
                    undo.push_async_callback(cap.destroy, vm)
                    await cap.prepare(vm, ctx)
                    timings[stage] = timings.get(stage, 0.0) + time.monotonic() - t
                    self.fault(stage)
                # A new VM has a new identity: whatever was recorded for its address
                # or name belonged to a VM that is gone.
                forget_host(
                    self.paths.known_hosts, [h for h in (vm.ip, vm.name, f"{vm.name}.vm") if h]
                )
                await self._boot(vm, kernel, image.agent, progress, timings, undo)
            except BaseException as exc:
                log.warning("create of %s failed (%s); rolling back", vm.name, exc)
                vm.state = VMState.ERROR
                raise
            else:
                undo.pop_all()
            finally:
                if vm.state is VMState.ERROR:
                    self.repo.delete(vm.id)
        vm.timings = {k: round(v, 3) for k, v in timings.items()}
        vm.timings["total"] = round(time.monotonic() - t0, 3)
        self.repo.save(vm)
        log.info("vm %s ready in %.2fs: %s", vm.name, vm.timings["total"], vm.timings)
        return vm

    async def _boot(
        self,
        vm: VMRecord,
        kernel: BootKernel,
        expect_agent: bool,
        progress: Progress,
        timings: dict[str, float],
        undo: AsyncExitStack,
    ) -> None:
        """Attach runtime resources, start the engine, wait for SSH (and the guest agent
        when the image has one). Pushes undo steps."""
        boot = BootContributions()
        t = time.monotonic()
        progress("network", "")
        for cap in self.capabilities:
            undo.push_async_callback(cap.detach, vm)
            await cap.attach(vm, boot)
        timings["network"] = timings.get("network", 0.0) + time.monotonic() - t
        self.fault("network")

        t = time.monotonic()
        progress("boot", vm.engine)
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
            console_log=self.vm_dir(vm) / "console.log",
        )
        handle = await engine.start(cfg)
        undo.push_async_callback(engine.kill, handle)
        vm.handle = handle.to_dict()
        vm.state = VMState.RUNNING
        vm.started_at = time.time()
        self.repo.save(vm)
        timings["boot"] = time.monotonic() - t
        self.fault("boot")

        t = time.monotonic()
        progress("ssh", f"{vm.ip}:22")
        assert vm.ip is not None
        await wait_for_ssh(
            vm.ip,
            self.ssh_key,
            self.paths.known_hosts,
            [vm.name, f"{vm.name}.vm"],
            SSH_TIMEOUT,
            is_alive=lambda: engine.is_running(handle),
        )
        timings["ssh"] = time.monotonic() - t
        self.fault("ssh")
        if expect_agent:
            t = time.monotonic()
            progress("agent", "healthz")
            await wait_healthy(handle.extra.get("agent"), AGENT_TIMEOUT)
            timings["agent"] = time.monotonic() - t

    # -- start / stop / restart ----------------------------------------------------

    async def start(self, name: str, progress: Progress) -> VMRecord:
        vm = self.get(name)
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            if vm.running:
                return vm
            vm.require(VMState.STOPPED, VMState.ERROR, action="start", hint="wait for it to finish")
            image = await self.artifacts.ensure_image(vm.image, progress, refresh=False)
            kernel = await self.artifacts.ensure_kernel_for(image, vm.kernel or None, progress)
            timings: dict[str, float] = {}
            t0 = time.monotonic()
            async with AsyncExitStack() as undo:
                try:
                    await self._boot(vm, kernel, image.agent, progress, timings, undo)
                except BaseException as exc:
                    vm.state = VMState.STOPPED
                    vm.handle = None
                    vm.last_error = str(exc)
                    raise
                else:
                    undo.pop_all()
                finally:
                    self.repo.save(vm)
            vm.timings = {k: round(v, 3) for k, v in timings.items()}
            vm.timings["total"] = round(time.monotonic() - t0, 3)
            vm.last_error = None
            self.repo.save(vm)
            return vm

    async def stop(self, name: str, progress: Progress, *, force: bool = False) -> VMRecord:
        vm = self.get(name)
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            if not vm.running:
                return vm
            handle = vm.engine_handle
            if handle is not None:
                engine = self.engine_for(vm.engine)
                progress("shutdown", "kill" if force else "graceful")
                if force:
                    await engine.kill(handle)
                else:
                    await engine.stop(handle, self.config.stop_timeout)
            await self._release_runtime(vm)
            progress("stopped", vm.name)
            return vm

    async def _release_runtime(self, vm: VMRecord) -> None:
        for cap in reversed(self.capabilities):
            try:
                await cap.detach(vm)
            except Exception:
                log.exception("detach %s for %s failed", cap.name, vm.name)
        vm.state = VMState.STOPPED
        vm.handle = None
        self.repo.save(vm)

    async def restart(self, name: str, progress: Progress) -> VMRecord:
        await self.stop(name, progress)
        return await self.start(name, progress)

    def check_deletable(self, vm: VMRecord, force: bool) -> None:
        if not force:
            vm.require(
                *NOT_RUNNING,
                action="delete",
                hint=f"stop it first (`banger vm stop {vm.name}`) or pass --force",
            )

    async def delete(self, name: str, progress: Progress, *, force: bool = False) -> str:
        vm = self.get(name)
        self.check_deletable(vm, force)
        if vm.running:
            await self.stop(name, progress, force=True)
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            progress("delete", vm.name)
            hosts = [h for h in (vm.ip, vm.name, f"{vm.name}.vm") if h]
            for cap in reversed(self.capabilities):
                await cap.destroy(vm)
            forget_host(self.paths.known_hosts, hosts)
            self.repo.delete(vm.id)
        self._locks.pop(vm.id, None)
        return vm.name

    async def update(self, name: str, req: SetVM) -> VMRecord:
        vm = self.get(name)
        async with self.lock(vm.id):
            vm = self.get(vm.id)
            if req.vcpus is not None or req.memory is not None:
                vm.require(
                    *NOT_RUNNING,
                    action="changing vcpus or memory",
                    hint=f"`banger vm stop {vm.name}` first",
                )
            if req.vcpus is not None:
                if not 1 <= req.vcpus <= MAX_VCPUS:
                    raise InvalidInput(
                        f"--vcpus {req.vcpus} is out of range", hint=f"use 1 to {MAX_VCPUS}"
                    )
                vm.vcpus = req.vcpus
            if req.memory is not None:
                mib = parse_size(req.memory) // 1024**2
                if mib < 128:
                    raise InvalidInput(
                        f"--memory {req.memory} is too small", hint="use at least 128M"
                    )
                vm.memory_mib = mib
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
        """At daemon start: re-adopt running VMs, release what dead ones held, and
        remove VMs that were mid-create (the TAP pool adopts devices on first use)."""
        for vm in self.all():
            if vm.state is VMState.CREATING:
                log.warning("vm %s was mid-create when the daemon died; removing it", vm.name)
                handle = vm.engine_handle
                if handle is not None:
                    await self.engine_for(vm.engine).kill(handle)
                for cap in reversed(self.capabilities):
                    await _quietly(cap.detach(vm))
                    await _quietly(cap.destroy(vm))
                self.repo.delete(vm.id)
            elif vm.running:
                handle = vm.engine_handle
                engine = self.engine_for(vm.engine)
                if handle is not None and engine.is_running(handle):
                    log.info("re-adopted running vm %s (pid %s)", vm.name, handle.pid)
                else:
                    log.warning("vm %s died while the daemon was away; marking stopped", vm.name)
                    await self._release_runtime(vm)


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception:
        log.exception("cleanup step failed")
