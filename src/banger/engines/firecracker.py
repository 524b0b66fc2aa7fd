"""The Firecracker engine: configured over its API socket, then InstanceStart.

The configuration is built as data first (`build_requests`: a list of method,
path, body) and sent second, so the exact requests are unit-testable and can be
validated against the published API spec without a Firecracker binary. The guest
serial console is Firecracker's stdout, so stdout goes to the console log; its own
log goes to a file in the run dir once `PUT /logger` has been accepted (the few
lines it prints before that land in the console log).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11

from banger.engines import process
from banger.engines.base import Availability, EngineHandle, GuestConfig, OnSpawn
from banger.engines.kvm import probe_kvm
from banger.engines.state import SavedState, machine_fit, write_state
from banger.errors import BangerError, CommandFailed, ToolMissing
from banger.system import find_tool, run

log = logging.getLogger(__name__)

API_SOCKET = "firecracker.sock"
VSOCK_SOCKET = "vsock.sock"
FC_LOG = "firecracker.log"
SNAPSHOT_FILE = "vmstate"  # Firecracker's snapshot_path: device and vCPU state
MEMORY_FILE = "memory"  # mem_file_path: guest memory
# What the test stand-in's `--version` line carries (see FirecrackerEngine.is_standin).
STANDIN_MARK = "banger test stand-in"


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    body: dict[str, Any]


def instance_id(vm_id: str) -> str:
    """Firecracker's `--id` accepts 1-64 of [A-Za-z0-9-]."""
    return re.sub(r"[^A-Za-z0-9-]", "-", vm_id)[:64] or "banger"


def build_requests(config: GuestConfig, *, log_path: Path | None = None) -> list[ApiRequest]:
    """Every API call that configures and boots `config`, in order."""
    reqs: list[ApiRequest] = []
    if log_path is not None:
        reqs.append(ApiRequest("PUT", "/logger", {"log_path": str(log_path), "level": "Info"}))
    reqs.append(
        ApiRequest(
            "PUT",
            "/machine-config",
            {"vcpu_count": config.vcpus, "mem_size_mib": config.memory_mib, "smt": False},
        )
    )
    boot: dict[str, Any] = {"kernel_image_path": str(config.kernel), "boot_args": config.cmdline}
    if config.initrd is not None:
        boot["initrd_path"] = str(config.initrd)
    reqs.append(ApiRequest("PUT", "/boot-source", boot))
    # Drives attach in request order: the first becomes vda.
    for d in config.drives:
        body = {
            "drive_id": d.drive_id,
            "path_on_host": str(d.path),
            "is_root_device": d.is_root,
            "is_read_only": d.read_only,
        }
        reqs.append(ApiRequest("PUT", f"/drives/{d.drive_id}", body))
    for n in config.nics:
        body = {"iface_id": n.iface_id, "host_dev_name": n.tap, "guest_mac": n.mac}
        reqs.append(ApiRequest("PUT", f"/network-interfaces/{n.iface_id}", body))
    if config.vsock_cid is not None:
        uds = str(config.run_dir / VSOCK_SOCKET)
        reqs.append(ApiRequest("PUT", "/vsock", {"guest_cid": config.vsock_cid, "uds_path": uds}))
    reqs.append(ApiRequest("PUT", "/actions", {"action_type": "InstanceStart"}))
    return reqs


def build_save_requests(dest: Path) -> list[ApiRequest]:
    """Pause, then a full snapshot into `dest` (the guest stays paused)."""
    return [
        ApiRequest("PATCH", "/vm", {"state": "Paused"}),
        ApiRequest(
            "PUT",
            "/snapshot/create",
            {
                "snapshot_type": "Full",
                "snapshot_path": str(dest / SNAPSHOT_FILE),
                "mem_file_path": str(dest / MEMORY_FILE),
            },
        ),
    ]


def build_restore_requests(
    config: GuestConfig, saved: SavedState, *, log_path: Path | None = None
) -> list[ApiRequest]:
    """Load `saved` into a fresh Firecracker with `config`'s host side: its TAPs
    (`network_overrides`), its vsock socket (`vsock_override`) and, for drives whose
    host path differs from the saved one, `PATCH /drives` before the guest resumes."""
    reqs: list[ApiRequest] = []
    if log_path is not None:
        reqs.append(ApiRequest("PUT", "/logger", {"log_path": str(log_path), "level": "Info"}))
    moved = [d for d in config.drives if saved.drives.get(d.drive_id) != str(d.path)]
    load: dict[str, Any] = {
        "snapshot_path": str(saved.path(SNAPSHOT_FILE)),
        "mem_backend": {"backend_type": "File", "backend_path": str(saved.path(MEMORY_FILE))},
        "resume_vm": not moved,
    }
    if config.nics:
        load["network_overrides"] = [
            {"iface_id": n.iface_id, "host_dev_name": n.tap} for n in config.nics
        ]
    if config.vsock_cid is not None:
        load["vsock_override"] = {"uds_path": str(config.run_dir / VSOCK_SOCKET)}
    reqs.append(ApiRequest("PUT", "/snapshot/load", load))
    for d in moved:
        body = {"drive_id": d.drive_id, "path_on_host": str(d.path)}
        reqs.append(ApiRequest("PATCH", f"/drives/{d.drive_id}", body))
    if moved:
        reqs.append(ApiRequest("PATCH", "/vm", {"state": "Resumed"}))
    return reqs


class ApiClient:
    """Firecracker's HTTP/1.1 API over its UNIX socket, on one kept-alive connection.

    h11 (sans-IO, as the daemon's own server) speaks the protocol over an asyncio
    UNIX stream: the requests are small JSON bodies and an answer is a status, maybe
    with a fault message. (httpx, used here before, cost the first restore ~0.4 s to
    import and every client ~60 ms for the TLS context it builds, all on the way to a
    running guest.) `timeout` bounds each whole request."""

    def __init__(self, socket: Path, timeout: float = 5.0) -> None:
        self._socket = socket
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._conn = h11.Connection(h11.CLIENT)

    async def send(self, req: ApiRequest) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                status, body = await self._exchange(req)
        except (OSError, EOFError, TimeoutError, h11.ProtocolError) as exc:
            self.close()
            what = str(exc) or type(exc).__name__
            raise CommandFailed(f"firecracker API {req.method} {req.path} failed: {what}") from exc
        if status >= 300:
            try:
                answer = json.loads(body)
                fault = str(answer.get("fault_message", body.decode(errors="replace")))
            except (ValueError, AttributeError):
                fault = body.decode(errors="replace")
            raise CommandFailed(f"firecracker rejected {req.method} {req.path} ({status}): {fault}")

    async def connects(self) -> bool:
        """Whether the API socket accepts a connection (it exists a moment before
        Firecracker listens); the connection is kept for the requests."""
        if self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(str(self._socket))
            except OSError:
                return False
        return True

    async def _exchange(self, req: ApiRequest) -> tuple[int, bytes]:
        if self._writer is None or self._conn.our_state is not h11.IDLE:
            self.close()  # a fresh connection (or one the last answer closed)
            self._reader, self._writer = await asyncio.open_unix_connection(str(self._socket))
        reader, writer, conn = self._reader, self._writer, self._conn
        assert reader is not None
        payload = json.dumps(req.body).encode()
        headers = [
            ("Host", "localhost"),
            ("Accept", "application/json"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
        ]
        for out in (
            h11.Request(method=req.method, target=req.path, headers=headers),
            h11.Data(data=payload),
            h11.EndOfMessage(),
        ):
            writer.write(conn.send(out) or b"")
        await writer.drain()
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(1 << 16)
                if not data and status == 0:
                    raise EOFError("the API socket closed without an answer")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # kept alive for the next request
        else:
            self.close()
        return status, bytes(body)


class FirecrackerEngine(process.DetachedEngine):
    name = "firecracker"

    def __init__(
        self,
        firecracker_bin: str | None = None,
        *,
        kvm_cache: Path | None = None,
        start_timeout: float = process.START_TIMEOUT,
        save_timeout: float = 300.0,
    ) -> None:
        self._save_timeout = save_timeout
        self._bin = firecracker_bin
        self._kvm_cache = kvm_cache
        self._start_timeout = start_timeout

    @functools.cached_property
    def firecracker_bin(self) -> str | None:
        return self._bin or find_tool("firecracker")

    def _require_bin(self) -> str:
        path = self.firecracker_bin
        if path is None or not os.access(path, os.X_OK):
            raise ToolMissing(
                f"Firecracker (`{self._bin or 'firecracker'}`) is not installed",
                hint="put the `firecracker` release binary on PATH or set firecracker_bin "
                "in config.toml",
            )
        return path

    @functools.cached_property
    def _version_line(self) -> str:
        res = run([self._require_bin(), "--version"], check=False, timeout=10)
        return res.out.strip().splitlines()[0] if res.out.strip() else ""

    @functools.cached_property
    def version(self) -> str:
        words = self._version_line.split()
        return words[1] if len(words) > 1 else "unknown"

    @property
    def is_standin(self) -> bool:
        """The binary is the test stand-in (tests/standin/firecracker): it speaks the
        Firecracker API but boots the guest with QEMU, so it needs no KVM."""
        return STANDIN_MARK in self._version_line

    def availability(self) -> Availability:
        try:
            self._require_bin()
            version = self.version
        except BangerError as exc:
            return Availability(False, exc.message)
        if self.is_standin:
            return Availability(True, f"firecracker {version} ({STANDIN_MARK}: boots with QEMU)")
        # Same probe (and cache entry) as the QEMU engine: when QEMU is installed its
        # `-accel kvm` check is the stronger evidence that KVM runs a real guest.
        kvm = probe_kvm(self._kvm_cache, qemu_bin=find_tool("qemu-system-x86_64"))
        if not kvm.usable:
            return Availability(False, f"firecracker {version} needs KVM: {kvm.reason}")
        return Availability(True, f"firecracker {version}, accel=kvm")

    def agent_channel(self, config: GuestConfig) -> dict[str, Any] | None:
        """How the host will reach the guest agent of `config` (hybrid vsock), or
        None when the config has no vsock CID."""
        if config.vsock_cid is None:
            return None
        path = str(config.run_dir / VSOCK_SOCKET)
        return {"transport": "hybrid-vsock", "path": path, "cid": config.vsock_cid}

    def restores_copies(self) -> bool:
        """Restored copies keep the saved guest's vsock CID (`PUT /snapshot/load`
        cannot change it), but with hybrid vsock a CID names nothing on the host:
        each VM's vsock is a device of its own behind its own socket
        (`vsock_override`), so copies share nothing there."""
        return True

    async def resize_drive(self, handle: EngineHandle, drive_id: str, size: int) -> None:
        """Tell the running guest a drive's new size: `PATCH /drives/{id}` with its
        (already grown) file makes Firecracker reopen it and notify the guest."""
        path = handle.extra.get("drives", {}).get(drive_id)
        if path is None:
            raise CommandFailed(f"no drive {drive_id!r} recorded for pid {handle.pid}")
        async with ApiClient(Path(handle.control_socket)) as api:
            body = {"drive_id": drive_id, "path_on_host": path}
            await api.send(ApiRequest("PATCH", f"/drives/{drive_id}", body))

    async def set_links(self, handle: EngineHandle, nics: list[str], up: bool) -> None:
        """Nothing: Firecracker's API cannot cut a NIC, so a restored fork is on its
        TAP from the load on (with its source's MAC until `/identity`)."""

    async def guest_ran(self, handle: EngineHandle) -> bool | None:
        return None  # the API does not say whether a loaded snapshot was resumed

    def state_fit(self, config: GuestConfig) -> dict[str, Any]:
        agent = self.agent_channel(config)
        return machine_fit(
            config,
            engine=self.name,
            version=self.version,
            accel="stand-in" if self.is_standin else "kvm",
            agent=agent["transport"] if agent else None,
        )

    async def save_state(self, handle: EngineHandle, config: GuestConfig, dest: Path) -> SavedState:
        fit = self.state_fit(config)
        dest.mkdir(parents=True, exist_ok=True)
        async with ApiClient(Path(handle.control_socket), timeout=self._save_timeout) as api:
            for req in build_save_requests(dest):
                await api.send(req)
        drives = {d.drive_id: str(d.path) for d in config.drives}
        return write_state(dest, fit, [SNAPSHOT_FILE, MEMORY_FILE], drives)

    async def _set_state(self, handle: EngineHandle, state: str) -> None:
        async with ApiClient(Path(handle.control_socket)) as api:
            await api.send(ApiRequest("PATCH", "/vm", {"state": state}))

    async def pause(self, handle: EngineHandle) -> None:
        await self._set_state(handle, "Paused")

    async def resume(self, handle: EngineHandle) -> None:
        await self._set_state(handle, "Resumed")

    async def start(
        self,
        config: GuestConfig,
        on_spawn: OnSpawn | None = None,
        *,
        restore: SavedState | None = None,
    ) -> EngineHandle:
        fc_bin = self._require_bin()
        if restore is not None:
            restore.check(self.state_fit(config))
        run_dir = config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        api_sock = run_dir / API_SOCKET
        for stale in (api_sock, run_dir / VSOCK_SOCKET):
            stale.unlink(missing_ok=True)
        fc_log = run_dir / FC_LOG
        # Firecracker opens the logger path without O_CREAT.
        fc_log.touch(mode=0o600, exist_ok=True)
        argv = [fc_bin, "--api-sock", str(api_sock), "--id", instance_id(config.vm_id)]
        log.info("starting %s: %s", config.name, " ".join(argv))
        spawned = process.spawn(argv, log=fc_log, stdout=config.console_log, cwd=run_dir)
        extra: dict[str, Any] = {
            "log": str(fc_log),
            "drives": {d.drive_id: str(d.path) for d in config.drives},
        }
        agent = self.agent_channel(config)
        if agent is not None:
            extra["agent"] = agent
        handle = EngineHandle(self.name, spawned.pid, spawned.start_time, str(api_sock), extra)
        try:
            if on_spawn is not None:
                on_spawn(handle)
            if restore is None:
                reqs = build_requests(config, log_path=fc_log)
            else:
                reqs = build_restore_requests(config, restore, log_path=fc_log)
            async with ApiClient(api_sock, timeout=self._save_timeout) as api:
                await self._wait_ready(handle, api.connects, fc_log, 0.005)
                for req in reqs:
                    await api.send(req)
        except BaseException:
            await process.terminate(handle.pid, handle.start_time, grace=0.0)
            raise
        return handle

    async def _request_shutdown(self, handle: EngineHandle) -> bool:
        try:
            async with ApiClient(Path(handle.control_socket)) as api:
                await api.send(ApiRequest("PUT", "/actions", {"action_type": "SendCtrlAltDel"}))
        except (OSError, CommandFailed) as exc:
            log.warning("SendCtrlAltDel failed for pid %d: %s", handle.pid, exc)
            return False
        return True
