"""A stand-in `firecracker` for hosts without one: the real API, a QEMU guest.

Run as `firecracker --api-sock PATH [--id ID] [--config-file FILE] [--no-api]`;
`tests/standin/firecracker` is the executable to put first on PATH (or to name in
`firecracker_bin`). It serves HTTP on the API socket and validates every request
against the Firecracker API contract distilled from upstream (`fc_validator`):
unknown fields, wrong types, missing required fields and bad enums are answered
400 with Firecracker's `{"fault_message": ...}`. Beyond the schema it makes the
checks Firecracker makes (files exist, kernel configured before InstanceStart,
pre-boot resources refused after it).

On `InstanceStart` (or at once with `--config-file`) it boots the configured
machine with QEMU `microvm`, through banger's own QEMU argv builder
(`banger.engines.qemu.build_argv`): the same kernel, initrd and command line, the
drives in Firecracker's order (root device first = vda, then in PUT order), each
NIC on its TAP with its MAC, vcpus and memory. As with Firecracker, the guest's
serial console is this process's stdout, and the process exits when the guest
shuts down (QEMU runs with `-no-reboot`; it dies with this process).
`SendCtrlAltDel` asks the guest to shut down (ACPI power button: microvm has no
i8042 keyboard; a systemd guest powers off either way).

Firecracker's hybrid vsock is served on the `uds_path` of `PUT /vsock`: a client
sends `CONNECT <port>\\n`, gets `OK <host port>\\n`, and the stream is then relayed
byte for byte to the guest agent's virtio-serial port (this host has no
vhost-vsock). virtio-serial is one stream, so connections are relayed one at a
time; only the agent's port is connected, others are closed without a reply, as
Firecracker does when nothing listens.

`PATCH /vm` pauses and resumes the vCPUs (QMP `stop` / `cont`). Snapshots run over
QEMU migration: `PUT /snapshot/create` (paused VM, Full) migrates the guest into
`mem_file_path` and writes the machine configuration to `snapshot_path`;
`PUT /snapshot/load` (nothing but logger/metrics configured before it) reads both,
applies `network_overrides` and `vsock_override`, and launches QEMU with
`-incoming` at once with `resume_vm`, else at the first `PATCH /vm Resumed`, so a
`PATCH /drives/{id}` in between (new `path_on_host`) takes effect, as on
Firecracker. Later features add a route: `ROUTES[(method, template)] = handler`.
A valid request with no handler is answered 400 "not implemented by the stand-in".

Environment: FAKE_FC_RECORD (JSON-lines file receiving every request and its
status), FAKE_FC_GUEST=none (boot nothing: print a line on the console instead;
for API contract tests with dummy files), FAKE_FC_IGNORE_CTRL_ALT_DEL=1 (with no
guest: act like a guest that ignores it), FAKE_FC_CRASH=1 (exit at once with an
error, as Firecracker does without KVM), FAKE_FC_QEMU (the QEMU binary).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fc_validator import FirecrackerSpec, SpecViolation, validate_definition

SERIAL_BOOT_LINE = "fake-firecracker: guest serial console up"
SERIAL_CAD_LINE = "fake-firecracker: guest received ctrl-alt-del"
VERSION_LINE = "Firecracker v1.16.1 (banger test stand-in)"  # see engines.firecracker
AGENT_VSOCK_PORT = 1024  # banger.agent.VSOCK_PORT
# Firecracker's default when no boot_args are given.
DEFAULT_BOOT_ARGS = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux"
NOT_AFTER_START = "The requested operation is not supported after starting the microVM."
NOT_BEFORE_START = "The requested operation is not supported before starting the microVM."

Handler = Callable[["StandIn", dict[str, Any], dict[str, str]], Awaitable["Reply"]]
Reply = tuple[int, Any]  # (status, JSON body or None)


def log(msg: str) -> None:
    """Firecracker's own log: stderr (the engine sends it to firecracker.log)."""
    print(f"[stand-in] {msg}", file=sys.stderr, flush=True)


def _fault(msg: str) -> Reply:
    return 400, {"fault_message": msg}


class StandIn:
    def __init__(self, vm_id: str, run_dir: Path, record: Path | None, guest: bool) -> None:
        self.spec = FirecrackerSpec()
        self.vm_id = vm_id
        self.run_dir = run_dir
        self.record = record
        self.guest = guest
        self.state = "Not started"
        self.config: dict[str, Any] = {"drives": {}, "network-interfaces": {}}
        self.qemu: subprocess.Popen[bytes] | None = None
        self.pending_restore: Path | None = None  # memory to load at the first resume
        self.exit_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.vsock_server: asyncio.Server | None = None
        self._relay_lock = asyncio.Lock()
        self._host_ports = iter(range(1 << 30, 1 << 31))
        # KVM or TCG, decided while the API is being configured (a probe takes ~0.2 s).
        self._accel: asyncio.Future[str] | None = (
            asyncio.get_running_loop().run_in_executor(None, _accel) if guest else None
        )

    @property
    def started(self) -> bool:
        return self.state != "Not started"

    def finish(self, code: int) -> None:
        if not self.exit_code.done():
            self.exit_code.set_result(code)

    def _record(self, entry: dict[str, Any]) -> None:
        if self.record is not None:
            with self.record.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    # -- HTTP ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body: Any = None
        status: int
        reply: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            status, reply = _fault("invalid JSON body")
        else:
            status, reply = await self.dispatch(request.method, request.path, body)
        self._record({"method": request.method, "path": request.path, "body": body,
                      "status": status})  # fmt: skip
        if reply is None:
            return web.Response(status=status)
        return web.json_response(reply, status=status)

    async def dispatch(self, method: str, path: str, body: Any) -> Reply:
        try:
            op = self.spec.validate(method, path, body)
        except SpecViolation as exc:
            return _fault(str(exc))
        handler = ROUTES.get((op.method, op.template))
        if handler is None:
            return _fault(f"{op.method} {op.template} is not implemented by the banger stand-in")
        return await handler(self, body or {}, op.path_params)

    # -- boot ------------------------------------------------------------------------------

    def guest_config(self) -> Any:
        """The configured machine as banger's engine-neutral `GuestConfig`."""
        from banger.engines.base import Drive, GuestConfig, NetIface

        boot = self.config["boot-source"]
        mc = self.config.get("machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
        drives = list(self.config["drives"].values())
        # Firecracker attaches the root device first (vda), then the rest in PUT order.
        drives.sort(key=lambda d: not d.get("is_root_device", False))
        cmdline = boot.get("boot_args") or DEFAULT_BOOT_ARGS
        root = next((d for d in drives if d.get("is_root_device")), None)
        if root is not None and "root=" not in cmdline:
            cmdline += " root=/dev/vda " + ("ro" if root.get("is_read_only") else "rw")
        return GuestConfig(
            vm_id=self.vm_id,
            name=re.sub(r"[^A-Za-z0-9-]", "-", self.vm_id)[:63] or "guest",
            kernel=Path(boot["kernel_image_path"]),
            initrd=Path(boot["initrd_path"]) if boot.get("initrd_path") else None,
            cmdline=cmdline,
            vcpus=mc["vcpu_count"],
            memory_mib=mc["mem_size_mib"],
            drives=tuple(
                Drive(
                    d["drive_id"],
                    Path(d["path_on_host"]),
                    read_only=d.get("is_read_only", False),
                    is_root=d.get("is_root_device", False),
                )
                for d in drives
            ),
            nics=tuple(
                NetIface(n["iface_id"], n["host_dev_name"], n.get("guest_mac") or _mac(n))
                for n in self.config["network-interfaces"].values()
            ),
            run_dir=self.run_dir,
            # The serial console is our stdout (the engine points it at console.log).
            console_log=Path("/dev/stdout"),
            vsock_cid=None,  # no vhost-vsock here: the agent speaks virtio-serial
        )

    async def instance_start(self) -> str | None:
        if "boot-source" not in self.config:
            return "Cannot start microvm without kernel configuration."
        if not self.guest:
            print(SERIAL_BOOT_LINE, flush=True)
            self.state = "Running"
            await self._serve_vsock()  # relays to whatever serves agent.sock
            return None
        fault = await self._launch(None)
        if fault:
            return fault
        self.state = "Running"
        await self._serve_vsock()
        return None

    async def _launch(self, incoming: Path | None) -> str | None:
        """QEMU for the configured machine; with `incoming`, restored from that
        migration stream (paused until `cont`) instead of booted."""
        # The accelerator probe imports banger.engines in a thread: let it finish
        # before importing here (two threads importing one package can collide).
        assert self._accel is not None
        accel = await self._accel
        from banger.engines.qemu import (
            QMP_SOCKET,
            build_argv,
            host_tsc_khz,
            load_from_file,
            qmp_execute,
            qmp_session,
        )

        qemu_bin = _qemu_bin()
        if qemu_bin is None:
            return "Cannot start microvm: the stand-in needs qemu-system-x86_64"
        cfg = self.guest_config()
        for stale in (QMP_SOCKET, "agent.sock"):
            (self.run_dir / stale).unlink(missing_ok=True)
        tsc = host_tsc_khz() if accel == "tcg" else None
        argv = build_argv(cfg, qemu_bin=qemu_bin, accel=accel, vhost_vsock=False, tsc_khz=tsc)
        if incoming is not None:
            argv += ["-incoming", "defer"]
        log(f"{'restore' if incoming else 'InstanceStart'}: {' '.join(argv)}")
        from banger.system.run import die_with_parent

        self.qemu = subprocess.Popen(  # killed when the stand-in dies (even by SIGKILL)
            argv,
            stdin=subprocess.DEVNULL,
            cwd=self.run_dir,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        asyncio.get_running_loop().create_task(self._watch_qemu(self.qemu))
        qmp = self.run_dir / QMP_SOCKET
        want = "running" if incoming is None else "inmigrate"
        for _ in range(200):  # answer once QEMU runs (as Firecracker does)
            if self.qemu.poll() is not None:
                return f"Cannot start microvm: qemu exited with {self.qemu.returncode}"
            with contextlib.suppress(Exception):
                if (await qmp_execute(qmp, "query-status", timeout=1.0))["status"] == want:
                    break
            await asyncio.sleep(0.01)
        if incoming is None:
            return None
        try:
            async with qmp_session(qmp) as client:
                await load_from_file(client, incoming)
                while True:
                    info: Any = await client.execute("query-migrate")
                    if info.get("status") == "completed":
                        break
                    if info.get("status") == "failed" or self.qemu.poll() is not None:
                        return f"Load snapshot error: {info.get('error-desc', 'qemu failed')}"
                    await asyncio.sleep(0.01)
        except Exception as exc:
            return f"Load snapshot error: {exc}"
        return None

    async def _watch_qemu(self, proc: subprocess.Popen[bytes]) -> None:
        while proc.poll() is None:
            await asyncio.sleep(0.1)
        log(f"guest exited (qemu status {proc.returncode}); exiting like Firecracker")
        self.finish(0 if proc.returncode == 0 else 1)

    async def ctrl_alt_del(self) -> str | None:
        if not self.started:
            return NOT_BEFORE_START
        if not self.guest:
            print(SERIAL_CAD_LINE, flush=True)
            if os.environ.get("FAKE_FC_IGNORE_CTRL_ALT_DEL") != "1":
                asyncio.get_running_loop().call_later(0.1, self.finish, 0)
            return None
        from banger.engines.qemu import QMP_SOCKET, qmp_execute

        try:
            await qmp_execute(self.run_dir / QMP_SOCKET, "system_powerdown")
        except Exception as exc:
            return f"SendCtrlAltDel failed: {exc}"
        return None

    def shutdown(self) -> None:
        """SIGTERM/SIGINT or exit: the guest goes with us, as Firecracker's does."""
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.terminate()
            try:
                self.qemu.wait(5)
            except subprocess.TimeoutExpired:
                self.qemu.kill()

    # -- hybrid vsock --------------------------------------------------------------------

    async def _serve_vsock(self) -> None:
        if "vsock" not in self.config:
            return
        uds = Path(self.config["vsock"]["uds_path"])
        uds.unlink(missing_ok=True)
        self.vsock_server = await asyncio.start_unix_server(self._vsock_client, str(uds))

    async def _vsock_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
            except (TimeoutError, OSError, ValueError):
                return
            m = re.fullmatch(rb"CONNECT (\d+)\n", line)
            if m is None or int(m[1]) != AGENT_VSOCK_PORT:
                log(f"vsock: refusing {line!r} (nothing listens there)")
                return
            async with self._relay_lock:  # virtio-serial: one stream, one client at a time
                try:
                    g_reader, g_writer = await asyncio.open_unix_connection(
                        str(self.run_dir / "agent.sock")
                    )
                except OSError as exc:
                    log(f"vsock: guest agent port not reachable: {exc}")
                    return
                writer.write(f"OK {next(self._host_ports)}\n".encode())
                try:
                    await _relay(reader, writer, g_reader, g_writer)
                finally:
                    g_writer.close()
        finally:
            writer.close()


async def _relay(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until either side closes."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

    tasks = [asyncio.create_task(pump(a_reader, b_writer)),
             asyncio.create_task(pump(b_reader, a_writer))]  # fmt: skip
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _qemu_bin() -> str | None:
    from banger.system import find_tool

    return os.environ.get("FAKE_FC_QEMU") or find_tool("qemu-system-x86_64")


def _accel() -> str:
    from banger.engines.kvm import probe_kvm

    qemu = _qemu_bin()
    return "kvm" if qemu and probe_kvm(None, qemu_bin=qemu).usable else "tcg"


def _mac(nic: dict[str, Any]) -> str:
    import hashlib

    d = hashlib.sha256(nic["iface_id"].encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x06, *d[:5]))


# -- routes: (method, path template) -> handler ------------------------------------------


def _preboot(key: str, *, item: str | None = None, files: tuple[str, ...] = ()) -> Handler:
    """A pre-boot configuration resource: stored, refused after InstanceStart."""

    async def handler(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
        if fc.started:
            return _fault(NOT_AFTER_START)
        for f in files:
            if f in body and not Path(body[f]).exists():
                return _fault(f"Cannot open {f} {body[f]}: No such file or directory (os error 2)")
        if item is not None:
            fc.config[key][params[item]] = body
        else:
            fc.config[key] = body
        if key == "logger":
            with open(body["log_path"], "a") as f:  # Firecracker needs it to exist: no O_CREAT
                f.write(f"fake-firecracker {fc.vm_id}: logger configured\n")
        return 204, None

    return handler


async def _actions(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    action = body["action_type"]
    if action == "InstanceStart":
        if fc.started:
            return _fault(NOT_AFTER_START)
        fault = await fc.instance_start()
    elif action == "SendCtrlAltDel":
        fault = await fc.ctrl_alt_del()
    else:  # FlushMetrics
        fault = None if "metrics" in fc.config else "No metrics destination configured."
    return _fault(fault) if fault else (204, None)


async def _info(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    return 200, {"app_name": "Firecracker", "id": fc.vm_id, "state": fc.state,
                 "vmm_version": fc.spec.version}  # fmt: skip


async def _version(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    return 200, {"firecracker_version": fc.spec.version}


async def _machine_config(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    return 200, fc.config.get("machine-config", {"vcpu_count": 1, "mem_size_mib": 128})


async def _vm_config(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    out = {k: v for k, v in fc.config.items() if k not in ("drives", "network-interfaces")}
    out["drives"] = list(fc.config["drives"].values())
    out["network-interfaces"] = list(fc.config["network-interfaces"].values())
    return 200, out


async def _patch_vm(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    """Pause or resume the vCPUs (QMP `stop` / `cont`), as Firecracker's PATCH /vm.
    The first resume after a snapshot load launches QEMU from the saved memory."""
    if not fc.started:
        return _fault(NOT_BEFORE_START)
    want = "Paused" if body["state"] == "Paused" else "Running"
    if want == "Running" and fc.pending_restore is not None:
        mem, fc.pending_restore = fc.pending_restore, None
        if fc.guest:
            fault = await fc._launch(mem)
            if fault:
                fc.finish(1)
                return _fault(fault)
        await fc._serve_vsock()
    if fc.guest:
        from banger.engines.qemu import QMP_SOCKET, qmp_execute

        try:
            await qmp_execute(fc.run_dir / QMP_SOCKET, "stop" if want == "Paused" else "cont")
        except Exception as exc:
            return _fault(f"Failed to {body['state'].lower()} the microVM: {exc}")
    fc.state = want
    return 204, None


# The snapshot file the stand-in writes: the machine's configuration as JSON
# (Firecracker's is its device state); the memory file is QEMU's migration stream.
SNAPSHOT_MAGIC = "banger-standin-snapshot"


async def _snapshot_create(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    if not fc.started:
        return _fault(NOT_BEFORE_START)
    if fc.state != "Paused":
        return _fault("Create snapshot error: the microVM must be paused first (PATCH /vm).")
    if body.get("snapshot_type", "Full") != "Full":
        return _fault("Diff snapshots are not implemented by the banger stand-in")
    mem = Path(body["mem_file_path"])
    if fc.guest:
        from banger.engines.qemu import QMP_SOCKET, save_to_file

        try:
            await save_to_file(fc.run_dir / QMP_SOCKET, mem, 300, "snapshot")
        except Exception as exc:
            return _fault(f"Create snapshot error: {exc}")
    else:
        mem.write_bytes(b"stand-in memory\n")
    doc = {"magic": SNAPSHOT_MAGIC, "version": fc.spec.version, "config": fc.config}
    Path(body["snapshot_path"]).write_text(json.dumps(doc))
    return 204, None


async def _snapshot_load(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    configured = set(fc.config) - {"logger", "metrics", "drives", "network-interfaces"}
    if fc.started or configured or fc.config["drives"] or fc.config["network-interfaces"]:
        return _fault(
            "Loading a microVM snapshot not allowed after configuring boot-specific resources."
        )
    backend: dict[str, str] = body.get("mem_backend") or {}
    if ("mem_file_path" in body) == bool(backend):
        return _fault("Exactly one of mem_file_path or mem_backend must be given.")
    if backend and backend["backend_type"] != "File":
        return _fault("Uffd memory backends are not implemented by the banger stand-in")
    mem = Path(body.get("mem_file_path") or backend["backend_path"])
    try:
        doc = json.loads(Path(body["snapshot_path"]).read_text())
        if doc.get("magic") != SNAPSHOT_MAGIC:
            raise ValueError("not a snapshot")
        mem.stat()
    except (OSError, ValueError) as exc:
        return _fault(f"Load snapshot error: cannot read the snapshot: {exc}")
    config = doc["config"]
    for override in body.get("network_overrides", []):
        nic = config["network-interfaces"].get(override["iface_id"])
        if nic is None:
            return _fault(f"Load snapshot error: no network interface {override['iface_id']}")
        nic["host_dev_name"] = override["host_dev_name"]
    if "vsock_override" in body:
        if "vsock" not in config:
            return _fault("Load snapshot error: the snapshot has no vsock device")
        config["vsock"]["uds_path"] = body["vsock_override"]["uds_path"]
    logger, metrics = fc.config.get("logger"), fc.config.get("metrics")
    fc.config = config
    for key, value in (("logger", logger), ("metrics", metrics)):
        if value is not None:
            fc.config[key] = value
    fc.state = "Paused"
    fc.pending_restore = mem
    if body.get("resume_vm"):
        return await _patch_vm(fc, {"state": "Resumed"}, {})
    return 204, None


async def _patch_drive(fc: StandIn, body: dict[str, Any], params: dict[str, str]) -> Reply:
    """Update a drive's backing file. Between a snapshot load and the resume, any
    path (QEMU is launched on resume, with it). On a running guest, the same path
    again: Firecracker reopens the file and tells the guest its new size, which is
    QMP `block_resize` to the file's size here."""
    if not fc.started:
        return _fault(NOT_BEFORE_START)
    drive = fc.config["drives"].get(params["drive_id"])
    if drive is None:
        return _fault(f"Invalid block device ID: {params['drive_id']}")
    if set(body) - {"drive_id", "path_on_host"}:
        return _fault("rate limiter updates are not implemented by the banger stand-in")
    if "path_on_host" in body:
        path = Path(body["path_on_host"])
        if not path.exists():
            return _fault(f"Cannot open path_on_host {path}: No such file")
        if fc.pending_restore is None:
            if str(path) != drive["path_on_host"]:
                return _fault("the banger stand-in moves a drive only before a restore resumes")
            if not fc.guest:
                return 204, None
            from banger.engines.qemu import QMP_SOCKET, qmp_execute

            args = {"device": params["drive_id"], "size": path.stat().st_size}
            try:
                await qmp_execute(fc.run_dir / QMP_SOCKET, "block_resize", args)
            except Exception as exc:
                return _fault(f"Unable to patch the block device: {exc}")
            return 204, None
        drive["path_on_host"] = str(path)
    return 204, None


ROUTES: dict[tuple[str, str], Handler] = {
    ("PUT", "/snapshot/create"): _snapshot_create,
    ("PUT", "/snapshot/load"): _snapshot_load,
    ("PATCH", "/drives/{drive_id}"): _patch_drive,
    ("PATCH", "/vm"): _patch_vm,
    ("GET", "/"): _info,
    ("GET", "/version"): _version,
    ("GET", "/machine-config"): _machine_config,
    ("GET", "/vm/config"): _vm_config,
    ("PUT", "/actions"): _actions,
    ("PUT", "/logger"): _preboot("logger", files=("log_path",)),
    ("PUT", "/metrics"): _preboot("metrics", files=("metrics_path",)),
    ("PUT", "/machine-config"): _preboot("machine-config"),
    ("PUT", "/boot-source"): _preboot("boot-source", files=("kernel_image_path", "initrd_path")),
    ("PUT", "/drives/{drive_id}"): _preboot("drives", item="drive_id", files=("path_on_host",)),
    ("PUT", "/network-interfaces/{iface_id}"): _preboot("network-interfaces", item="iface_id"),
    ("PUT", "/vsock"): _preboot("vsock"),
}

# --config-file sections, in the order Firecracker applies them, as API requests.
_CONFIG_SECTIONS = ["logger", "metrics", "machine-config", "boot-source", "drives",
                    "network-interfaces", "vsock"]  # fmt: skip


async def apply_config_file(fc: StandIn, path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"cannot read the configuration file {path}: {exc}"
    problems = validate_definition(fc.spec, "FullVmConfiguration", doc)
    if problems:
        return "invalid configuration file: " + "; ".join(problems)
    for section in _CONFIG_SECTIONS:
        if section not in doc:
            continue
        if section == "drives":
            reqs = [(f"/drives/{d['drive_id']}", d) for d in doc[section]]
        elif section == "network-interfaces":
            reqs = [(f"/network-interfaces/{n['iface_id']}", n) for n in doc[section]]
        else:
            reqs = [(f"/{section}", doc[section])]
        for req_path, body in reqs:
            status, reply = await fc.dispatch("PUT", req_path, body)
            if status >= 300:
                return f"{req_path}: {reply['fault_message']}"
    unsupported = sorted(set(doc) - set(_CONFIG_SECTIONS))
    if unsupported:
        return f"the banger stand-in does not implement {', '.join(unsupported)}"
    return await fc.instance_start()


async def serve(args: argparse.Namespace) -> int:
    record = os.environ.get("FAKE_FC_RECORD")
    api_sock = Path(args.api_sock) if args.api_sock else None
    run_dir = api_sock.parent if api_sock else Path.cwd()
    fc = StandIn(args.id, run_dir, Path(record) if record else None,
                 guest=os.environ.get("FAKE_FC_GUEST") != "none")  # fmt: skip
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fc.finish, 128 + sig)
    runner: web.AppRunner | None = None
    try:
        if api_sock is not None and not args.no_api:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", fc.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.UnixSite(runner, str(api_sock)).start()
        if args.config_file:
            fault = await apply_config_file(fc, Path(args.config_file))
            if fault:
                log(f"Error: {fault}")
                return 1
        return await fc.exit_code
    finally:
        fc.shutdown()
        if fc.vsock_server is not None:
            fc.vsock_server.close()
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="firecracker")
    parser.add_argument("--api-sock")
    parser.add_argument("--id", default="anonymous-instance")
    parser.add_argument("--config-file")
    parser.add_argument("--no-api", action="store_true")
    parser.add_argument("--version", action="store_true")
    args = parser.parse_args()
    if args.version:
        print(VERSION_LINE)
        return
    if os.environ.get("FAKE_FC_CRASH") == "1":
        sys.exit("Error: KVM not accessible: Permission denied (os error 13)")
    if args.no_api and not args.config_file:
        sys.exit("Error: --no-api requires --config-file")
    if not args.api_sock and not args.no_api:
        args.api_sock = "/run/firecracker.socket"  # Firecracker's default
    # Show up as `firecracker` (comm), as the real process does, e.g. to leak checks.
    ctypes.CDLL(None).prctl(15, b"firecracker", 0, 0, 0)  # PR_SET_NAME
    print(f"Running {VERSION_LINE} id={args.id}", file=sys.stderr, flush=True)
    sys.exit(asyncio.run(serve(args)))


if __name__ == "__main__":
    main()
