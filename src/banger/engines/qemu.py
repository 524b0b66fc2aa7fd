"""The QEMU `microvm` engine: direct kernel boot, virtio-mmio, QMP control.

The process is spawned detached through `engines.process` (not `-daemonize`: that
needs `-display none` instead of a console and throws away QEMU's late stderr) and
controlled over a QMP socket with the `qemu.qmp` library. QMP takes one client at
a time, so every exchange connects, talks and disconnects.

With KVM the guest gets `-cpu host` and no PIT/PIC (kvmclock calibrates the TSC).
Under TCG the guest must calibrate its TSC against the emulated PIT, which fails
whenever the host is busy (measured: 4 of 6 boots hung at "tsc: Unable to
calibrate against PIT" on a loaded 2-core host). TCG's guest TSC *is* the host TSC,
so we hand the guest the host's TSC frequency (`tsc_early_khz=`) and keep the PIT,
and tell it the TSC is reliable (`tsc=reliable`), so its clock stays the TSC and not
jiffies that lose time whenever the host is busy.

Saved states are QEMU migration streams written through a passed fd (`vmstate`).
A machine booted with `GuestConfig.memory_file` keeps its RAM in that file, mapped
shared; its save skips the RAM (`x-ignore-shared`) and moves the file beside the
stream (`ram`). Restoring such a state maps `ram` privately (copy-on-write, like
Firecracker's File memory backend) instead of loading it: pages are read when the
guest touches them, and untouched ones stay shared in the host's page cache. The
RAM block keeps QEMU's default name, so a state saved from a restored machine
(with its RAM in the stream) restores into ordinary memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from qemu.qmp import EventListener, QMPClient, QMPError

from banger.engines import process
from banger.engines.base import Availability, EngineHandle, GuestConfig, OnSpawn
from banger.engines.kvm import probe_kvm
from banger.engines.state import SavedState, machine_fit, write_state
from banger.errors import BangerError, CommandFailed, ToolMissing
from banger.system import find_tool, run

log = logging.getLogger(__name__)

Accel = Literal["kvm", "tcg"]
QMP_SOCKET = "qmp.sock"
AGENT_SOCKET = "agent.sock"
AGENT_PORT_NAME = "banger.agent"  # virtio-serial port name the guest agent opens
QEMU_LOG = "qemu.log"
VHOST_VSOCK = "/dev/vhost-vsock"
STATE_FILE = "vmstate"  # the migration stream of a saved machine
RAM_FILE = "ram"  # guest RAM of a machine booted with memory_file
RAM_ID = "microvm.ram"  # QEMU's own name for microvm's RAM block: states stay compatible
_STATE_FD = "banger-state"
# Migration bandwidth cap (bytes/s): QEMU's default throttles a local file to
# 128 MiB/s; a paused guest has nothing to race against.
_MIGRATE_BANDWIDTH = 64 << 30


def _esc(value: object) -> str:
    """QEMU option values escape a literal comma by doubling it."""
    return str(value).replace(",", ",,")


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host TSC frequency when the kernel knows it (constant, known-frequency TSC)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
    if not flags or not mhz or "constant_tsc" not in flags.group(1).split():
        return None
    return round(float(mhz.group(1)) * 1000) or None


def build_argv(
    config: GuestConfig,
    *,
    qemu_bin: str,
    accel: Accel,
    vhost_vsock: bool,
    tsc_khz: int | None = None,
    ram_file: Path | None = None,
    ram_shared: bool = False,
) -> list[str]:
    """The full QEMU command line for `config` (pure; unit-tested). With `ram_file`
    guest RAM is that file, mapped shared (`ram_shared`) or copy-on-write."""
    machine = "microvm,acpi=on,isa-serial=on,rtc=on"
    if ram_file is not None:
        machine += f",memory-backend={RAM_ID}"
    cmdline = config.cmdline
    if accel == "kvm":
        machine += ",pit=off,pic=off"
    elif tsc_khz:
        # tsc=reliable: under TCG the guest's TSC follows the host's clock, but the
        # kernel finds the vCPUs' TSCs "unsynchronized" and falls back to jiffies,
        # which lose every tick a starved vCPU thread misses (seen: 2 s behind per
        # 5 s on a loaded host). The TSC keeps the guest's clock with the host's.
        cmdline += f" tsc_early_khz={tsc_khz} tsc=reliable"
    run_dir = config.run_dir
    argv = [
        qemu_bin,
        *("-name", f"guest={_esc(config.name)}"),
        *("-M", machine),
        *("-accel", accel),
        *("-cpu", "host" if accel == "kvm" else "max"),
        *("-smp", str(config.vcpus)),
        *("-m", f"{config.memory_mib}M"),
    ]
    if ram_file is not None:
        share = "on" if ram_shared else "off"
        argv += [
            "-object",
            f"memory-backend-file,id={RAM_ID},size={config.memory_mib}M,"
            f"mem-path={_esc(ram_file)},share={share}",
        ]
    argv += [
        *("-nodefaults", "-no-user-config", "-nographic"),
        # A guest reboot ends the process, as with Firecracker: the VM is "stopped".
        "-no-reboot",
        *("-kernel", str(config.kernel)),
    ]
    if config.initrd is not None:
        argv += ["-initrd", str(config.initrd)]
    argv += ["-append", cmdline]
    # Drive order is device order: the first virtio-blk-device becomes vda.
    for d in config.drives:
        opts = f"id={_esc(d.drive_id)},file={_esc(d.path)},format=raw,if=none"
        opts += ",cache=writeback,discard=unmap" + (",readonly=on" if d.read_only else "")
        argv += ["-drive", opts]
        argv += ["-device", f"virtio-blk-device,drive={_esc(d.drive_id)},serial={d.drive_id}"]
    for n in config.nics:
        argv += ["-netdev", f"tap,id={n.iface_id},ifname={n.tap},script=no,downscript=no"]
        argv += ["-device", f"virtio-net-device,netdev={n.iface_id},mac={n.mac}"]
    argv += ["-chardev", f"file,id=console,path={_esc(config.console_log)},append=on"]
    argv += ["-serial", "chardev:console"]
    argv += ["-chardev", f"socket,id=qmp,path={_esc(run_dir / QMP_SOCKET)},server=on,wait=off"]
    argv += ["-mon", "chardev=qmp,mode=control"]
    if vhost_vsock and config.vsock_cid is not None:
        argv += ["-device", f"vhost-vsock-device,guest-cid={config.vsock_cid}"]
    else:
        # No vsock on this host: the agent speaks over a virtio-serial port instead.
        agent = _esc(run_dir / AGENT_SOCKET)
        argv += ["-device", "virtio-serial-device"]
        argv += ["-chardev", f"socket,id=agent,path={agent},server=on,wait=off"]
        argv += ["-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}"]
    return argv


@contextlib.asynccontextmanager
async def qmp_session(socket: Path, timeout: float = 5.0) -> AsyncIterator[QMPClient]:
    """One QMP connection for several commands (QEMU serves one client at a time)."""
    client = QMPClient()
    await asyncio.wait_for(client.connect(str(socket)), timeout)
    try:
        yield client
    finally:
        await client.disconnect()


async def _send_fd(client: QMPClient, path: Path, flags: int, timeout: float) -> None:
    """Hand QEMU an open file as fd `_STATE_FD` (SCM_RIGHTS + `getfd`)."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        client.send_fd_scm(fd)
        await asyncio.wait_for(client.execute("getfd", {"fdname": _STATE_FD}), timeout)
    finally:
        os.close(fd)


async def wait_migration(
    client: QMPClient, timeout: float, what: str, events: EventListener | None = None
) -> None:
    """Wait until the migration completed; raise if it failed. `query-migrate` says;
    with `events` (a `MIGRATION` listener, capability "events" on) each status change
    wakes the wait at once, else it polls (backing off to 50 ms)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        info: Any = await asyncio.wait_for(client.execute("query-migrate"), 5.0)
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise CommandFailed(f"{what} failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise CommandFailed(f"{what} did not finish within {timeout:.0f}s (status {status})")
        if events is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(events.get(), delay)
        delay = min(delay * 2, 0.05)


async def _migration_events(client: QMPClient) -> None:
    """Have QEMU send a `MIGRATION` event at each status change (capability "events",
    which the stream does not carry)."""
    caps = [{"capability": "events", "state": True}]
    await asyncio.wait_for(client.execute("migrate-set-capabilities", {"capabilities": caps}), 5.0)


async def _ignore_shared(client: QMPClient, on: bool = True) -> None:
    """Leave RAM mapped from a shared file out of the stream (it is in the file), or
    not. The capability is written into the stream and must match on load; it also
    outlives the migration that set it: a machine restored from a state with a mapped
    `ram` still has it on, so every save sets it explicitly."""
    caps = [{"capability": "x-ignore-shared", "state": on}]
    await asyncio.wait_for(client.execute("migrate-set-capabilities", {"capabilities": caps}), 5.0)


async def save_to_file(
    sock: Path, path: Path, timeout: float, what: str, *, ram_in_file: bool = False
) -> None:
    """Pause the guest and migrate its state into `path` through a passed fd (QEMU
    7.2 has no `file:` URI nor mapped-ram). QEMU stays paused (`postmigrate`);
    `cont` resumes it and takes the disks back. `ram_in_file`: the guest's RAM is a
    shared file mapping and stays out of the stream."""
    async with qmp_session(sock) as qmp:
        await asyncio.wait_for(qmp.execute("stop"), 5.0)
        params = {"max-bandwidth": _MIGRATE_BANDWIDTH}
        await asyncio.wait_for(qmp.execute("migrate-set-parameters", params), 5.0)
        await _ignore_shared(qmp, ram_in_file)
        await _migration_events(qmp)
        await _send_fd(qmp, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 5.0)
        with qmp.listener("MIGRATION") as events:
            await asyncio.wait_for(qmp.execute("migrate", {"uri": f"fd:{_STATE_FD}"}), 5.0)
            await wait_migration(qmp, timeout, what, events)


async def load_from_file(qmp: QMPClient, path: Path, *, ram_mapped: bool = False) -> None:
    """Start loading `path` into a QEMU launched with `-incoming defer`; the load
    completes in the background (`query-migrate`), leaving the guest paused.
    `ram_mapped`: the stream has no RAM (it is mapped from the state's `ram`)."""
    if ram_mapped:
        await _ignore_shared(qmp)
    await _migration_events(qmp)
    await _send_fd(qmp, path, os.O_RDONLY, 5.0)
    await asyncio.wait_for(qmp.execute("migrate-incoming", {"uri": f"fd:{_STATE_FD}"}), 5.0)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def qmp_execute(
    socket: Path, command: str, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """One QMP command on a fresh connection (QEMU serves one QMP client at a time)."""
    client = QMPClient()
    await asyncio.wait_for(client.connect(str(socket)), timeout)
    try:
        return await asyncio.wait_for(client.execute(command, args), timeout)
    finally:
        await client.disconnect()


class QemuEngine(process.DetachedEngine):
    name = "qemu"

    def __init__(
        self,
        qemu_bin: str | None = None,
        *,
        accel: Literal["auto", "kvm", "tcg"] = "auto",
        kvm_cache: Path | None = None,
        vhost_vsock: bool | None = None,
        start_timeout: float = process.START_TIMEOUT,
        save_timeout: float = 300.0,
    ) -> None:
        self._save_timeout = save_timeout
        self._qemu_bin = qemu_bin
        self._accel = accel
        self._kvm_cache = kvm_cache
        self._vhost_vsock = vhost_vsock
        self._start_timeout = start_timeout

    @functools.cached_property
    def qemu_bin(self) -> str | None:
        return self._qemu_bin or find_tool("qemu-system-x86_64")

    def _require_bin(self) -> str:
        if self.qemu_bin is None or not os.access(self.qemu_bin, os.X_OK):
            raise ToolMissing(
                "QEMU (`qemu-system-x86_64`) is not installed",
                hint="sudo apt-get install qemu-system-x86",
            )
        return self.qemu_bin

    @functools.cached_property
    def _kvm(self) -> tuple[bool, str]:
        status = probe_kvm(self._kvm_cache, qemu_bin=self.qemu_bin)
        return status.usable, status.reason

    def accel(self) -> Accel:
        """The accelerator guests will get: KVM when it can run a guest, else TCG."""
        if self._accel != "auto":
            return self._accel
        return "kvm" if self._kvm[0] else "tcg"

    def restores_copies(self) -> bool:
        # With vhost-vsock the guest keeps the saved machine's CID, a host-global name.
        return not self.uses_vhost_vsock()

    def uses_vhost_vsock(self) -> bool:
        if self._vhost_vsock is not None:
            return self._vhost_vsock
        return os.access(VHOST_VSOCK, os.R_OK | os.W_OK)

    @functools.cached_property
    def version(self) -> str:
        res = run([self._require_bin(), "--version"], check=False, timeout=10)
        first = res.out.splitlines()[0] if res.out else ""
        return first.split("version", 1)[-1].split()[0] if "version" in first else "unknown"

    def availability(self) -> Availability:
        try:
            self._require_bin()
            version = self.version
        except BangerError as exc:
            return Availability(False, exc.message)
        accel = self.accel()
        kvm_ok, reason = self._kvm
        if accel == "kvm" and not kvm_ok:
            return Availability(False, f"qemu {version}: accel=kvm requested but {reason}")
        detail = f"qemu {version}, accel={accel}"
        if not kvm_ok:
            detail += f" (kvm: {reason})"
        agent = "vhost-vsock" if self.uses_vhost_vsock() else "virtio-serial"
        return Availability(True, f"{detail}, agent channel={agent}")

    def agent_channel(self, config: GuestConfig) -> dict[str, Any]:
        """How the host will reach the guest agent of `config`: vhost-vsock when the
        host has it and the config has a CID, a virtio-serial port otherwise."""
        if self.uses_vhost_vsock() and config.vsock_cid is not None:
            return {"transport": "vsock", "cid": config.vsock_cid}
        return {"transport": "virtio-serial", "path": str(config.run_dir / AGENT_SOCKET)}

    def state_fit(self, config: GuestConfig) -> dict[str, Any]:
        return machine_fit(
            config,
            engine=self.name,
            version=self.version,
            accel=self.accel(),
            agent=self.agent_channel(config)["transport"],
        )

    async def save_state(self, handle: EngineHandle, config: GuestConfig, dest: Path) -> SavedState:
        """`stop`, then migrate to a file through a passed fd (QEMU 7.2 has no `file:`
        URI nor mapped-ram); the guest stays paused (`postmigrate`). A machine with
        `memory_file` leaves its RAM there; the file moves into `dest` (`ram`), on
        disk before `state.json` says the state is complete. (A machine restored
        from such a state maps it copy-on-write: its own save streams its RAM.)"""
        fit = self.state_fit(config)
        fit["accel"] = handle.extra.get("accel", fit["accel"])
        dest.mkdir(parents=True, exist_ok=True)
        ram = Path(handle.extra["ram_file"]) if handle.extra.get("ram_file") else None
        await save_to_file(
            Path(handle.control_socket),
            dest / STATE_FILE,
            self._save_timeout,
            f"saving {config.name}'s state",
            ram_in_file=ram is not None,
        )
        files = [STATE_FILE]
        if ram is not None:
            os.replace(ram, dest / RAM_FILE)  # the paused process keeps its mapping
            files.append(RAM_FILE)
        for name in files:
            await asyncio.to_thread(_fsync, dest / name)
        drives = {d.drive_id: str(d.path) for d in config.drives}
        return write_state(dest, fit, files, drives)

    async def pause(self, handle: EngineHandle) -> None:
        await qmp_execute(Path(handle.control_socket), "stop")

    async def resume(self, handle: EngineHandle) -> None:
        # After a completed migration `cont` also takes the disks back; a save cut
        # short is cancelled first (a no-op when none runs).
        async with qmp_session(Path(handle.control_socket)) as qmp:
            await asyncio.wait_for(qmp.execute("migrate_cancel"), 5.0)
            await asyncio.wait_for(qmp.execute("cont"), 5.0)

    async def _incoming(
        self, handle: EngineHandle, qmp: QMPClient, restore: SavedState, nics: list[str]
    ) -> None:
        """Restore into a QEMU started with `-incoming defer`, on the QMP session that
        found it up (`qmp`, closed here): start the incoming migration, wait for it
        (woken by its `MIGRATION` event) and `cont` (the state was saved paused, and
        QEMU restores the run state it was saved in)."""
        what = f"restoring {restore.dir}"
        try:
            with qmp.listener("MIGRATION") as events:
                await load_from_file(
                    qmp, restore.path(STATE_FILE), ram_mapped=RAM_FILE in restore.files
                )
                log.debug("%s: incoming migration started", what)
                await wait_migration(qmp, self._save_timeout, what, events)
                log.debug("%s: incoming migration completed", what)
            if restore.hold_nics:  # after the load: it restores the links' state
                for nic in nics:
                    await asyncio.wait_for(qmp.execute("set_link", {"name": nic, "up": False}), 5.0)
            await asyncio.wait_for(qmp.execute("cont"), 5.0)
        except (QMPError, OSError, TimeoutError) as exc:
            qemu_log = Path(handle.extra["log"])
            if not self.is_running(handle):
                tail = process.log_tail(qemu_log) or "no output"
                raise CommandFailed(
                    f"qemu exited while {what}: {tail}", hint=f"see {qemu_log}"
                ) from None
            raise CommandFailed(f"{what} failed: {exc!r}", hint=f"see {qemu_log}") from exc
        finally:
            await qmp.disconnect()

    async def _qmp_when_up(self, handle: EngineHandle, sock: Path, qemu_log: Path) -> QMPClient:
        """A QMP session with a just-spawned QEMU, as soon as it answers: the socket
        is checked every 5 ms until it exists, then connected to (QEMU listens from
        the moment it makes it, and greets once its main loop runs). The wait ends
        when the process exits; the session is the caller's to close."""
        holder: list[QMPClient] = []

        async def up() -> bool:
            if not sock.exists():
                return False
            client = QMPClient()
            try:
                await asyncio.wait_for(client.connect(str(sock)), self._start_timeout)
            except (QMPError, OSError, TimeoutError):
                return False
            holder.append(client)
            return True

        await self._wait_ready(handle, up, qemu_log, 0.005)
        return holder[0]

    def argv(self, config: GuestConfig, restore: SavedState | None = None) -> list[str]:
        """The QEMU command line `start` runs for `config` (also the raw baseline of
        `make bench-create`, so both boot the same device set)."""
        qemu_bin = self._require_bin()
        accel = self.accel()
        vsock = self.agent_channel(config)["transport"] == "vsock"
        tsc = host_tsc_khz() if accel == "tcg" else None
        ram, shared = config.memory_file, True
        if restore is not None:
            ram = restore.path(RAM_FILE) if RAM_FILE in restore.files else None
            shared = False  # never write into a saved state's memory
        return build_argv(
            config, qemu_bin=qemu_bin, accel=accel, vhost_vsock=vsock, tsc_khz=tsc,
            ram_file=ram, ram_shared=shared,
        )  # fmt: skip

    async def start(
        self,
        config: GuestConfig,
        on_spawn: OnSpawn | None = None,
        *,
        restore: SavedState | None = None,
    ) -> EngineHandle:
        if restore is not None:
            self._require_bin()
            restore.check(self.state_fit(config))
        argv = self.argv(config, restore)
        if restore is not None:
            argv += ["-incoming", "defer"]
        accel = self.accel()
        agent = self.agent_channel(config)
        run_dir = config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        qmp_sock = run_dir / QMP_SOCKET
        for stale in (qmp_sock, run_dir / AGENT_SOCKET):
            stale.unlink(missing_ok=True)
        qemu_log = run_dir / QEMU_LOG
        log.info("starting %s: %s", config.name, " ".join(argv))
        spawned = process.spawn(argv, log=qemu_log, cwd=run_dir)
        log.debug("%s: spawned pid %d", config.name, spawned.pid)
        handle = EngineHandle(
            engine=self.name,
            pid=spawned.pid,
            start_time=spawned.start_time,
            control_socket=str(qmp_sock),
            extra={"accel": accel, "log": str(qemu_log), "agent": agent},
        )
        if restore is None and config.memory_file is not None:
            handle.extra["ram_file"] = str(config.memory_file)  # RAM mapped shared
        try:
            if on_spawn is not None:
                on_spawn(handle)
            t0 = time.monotonic()
            qmp = await self._qmp_when_up(handle, qmp_sock, qemu_log)
            if restore is None:
                try:
                    status = await asyncio.wait_for(qmp.execute("query-status"), 5.0)
                finally:
                    await qmp.disconnect()
                if not isinstance(status, dict) or status.get("status") != "running":
                    got = status.get("status") if isinstance(status, dict) else status
                    raise CommandFailed(f"qemu is {got!r}, not running", hint=f"see {qemu_log}")
            else:
                t1 = time.monotonic()
                await self._incoming(handle, qmp, restore, [n.iface_id for n in config.nics])
                log.info(
                    "%s: QMP answered %.3fs after the spawn; state loaded and running "
                    "%.3fs later", config.name, t1 - t0, time.monotonic() - t1,
                )  # fmt: skip
        except BaseException:
            await process.terminate(handle.pid, handle.start_time, grace=0.5)
            raise
        return handle

    async def set_links(self, handle: EngineHandle, nics: list[str], up: bool) -> None:
        """Connect (or cut) NICs of a running machine, by id (QMP `set_link`)."""
        async with qmp_session(Path(handle.control_socket)) as qmp:
            for nic in nics:
                await asyncio.wait_for(qmp.execute("set_link", {"name": nic, "up": up}), 5.0)

    async def guest_ran(self, handle: EngineHandle) -> bool | None:
        """Whether a restoring QEMU has let its guest run (the daemon's `cont` after
        the load): not while it loads or waits paused; None when QMP does not say."""
        status = await _status(Path(handle.control_socket))
        if status is None:
            return None
        return status not in ("inmigrate", "prelaunch", "restore-vm", "paused", "postmigrate")

    async def resize_drive(self, handle: EngineHandle, drive_id: str, size: int) -> None:
        """Tell the running guest a drive's size (`block_resize`, which also notifies
        the guest when the file already has it: a restored machine still believes
        the size of the disk it was saved with)."""
        await qmp_execute(
            Path(handle.control_socket), "block_resize", {"device": drive_id, "size": size}
        )

    async def _request_shutdown(self, handle: EngineHandle) -> bool:
        try:
            # ACPI power button: a systemd guest shuts down cleanly and QEMU exits.
            await qmp_execute(Path(handle.control_socket), "system_powerdown")
        except (QMPError, OSError, TimeoutError) as exc:
            log.warning("qmp system_powerdown failed for pid %d: %s", handle.pid, exc)
            return False
        return True


async def _status(sock: Path) -> str | None:
    """QEMU's run state, or None while QMP does not answer."""
    if not sock.exists():
        return None
    try:
        status = await qmp_execute(sock, "query-status")
    except (QMPError, OSError, TimeoutError):
        return None
    return str(status.get("status")) if isinstance(status, dict) else None
