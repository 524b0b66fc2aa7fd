"""banger-agent: the real guest program run on the host over a stand-in serial stream,
the host client over each transport shape, and the daemon routes and CLI on top."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from banger.agent import GUEST_PROGRAM, guest
from banger.agent.client import AgentClient, AgentUnavailable
from banger.artifacts.images.info import ImageManifest, read_info, write_manifest
from banger.daemon import web
from banger.daemon.routes import agent as agent_routes
from banger.daemon.routes.common import DAEMON_KEY
from banger.daemon.server import bind_socket, serve
from banger.daemon.server import errors as errors_middleware
from banger.errors import BangerError
from banger.vm import VMRecord


class Agent:
    """The guest agent in a subprocess, serving one end of a socketpair (the "port")."""

    def __init__(self, ignore_sigint: bool = False) -> None:
        self.host, guest = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(GUEST_PROGRAM), "--fd", str(guest.fileno())],
            pass_fds=[guest.fileno()],
            # what a background job or nohup hands its children
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if ignore_sigint
            else None,
        )
        guest.close()
        self.host.settimeout(10)
        self.rfile = self.host.makefile("rb")

    def send(self, data: bytes) -> None:
        self.host.sendall(data)

    def response(self) -> tuple[int, dict[str, str], Any]:
        status_line = self.rfile.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers = {}
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = self.rfile.read(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, json.loads(body)

    def get(self, path: str, rid: str = "") -> Any:
        extra = f"X-Request-Id: {rid}\r\n" if rid else ""
        self.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        status, _, body = self.response()
        assert status == 200, body
        return body

    def close(self) -> None:
        self.rfile.close()
        self.host.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent() -> Iterator[Agent]:
    a = Agent()
    yield a
    a.close()
    assert a.proc.returncode == 0  # end of stream ends --fd mode cleanly


# -- the guest program ------------------------------------------------------------------


def test_guest_program_is_stdlib_only() -> None:
    import ast

    tree = ast.parse(GUEST_PROGRAM.read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
    assert mods <= set(sys.stdlib_module_names) | {"__future__"}, mods
    assert GUEST_PROGRAM.read_text().startswith("#!/usr/bin/python3\n")


def test_healthz_and_info(agent: Agent) -> None:
    h = agent.get("/healthz")
    assert h["ok"] is True and h["agent_version"] == guest.AGENT_VERSION
    assert h["hostname"] == socket.gethostname()
    info = agent.get("/info")
    assert info["hostname"] == socket.gethostname()
    assert info["kernel"] == os.uname().release
    assert info["uptime_s"] > 0
    assert len(info["load"]) == 3
    assert 0 < info["memory"]["available_bytes"] <= info["memory"]["total_bytes"]
    root = info["disk"]["/"]
    assert root["total_bytes"] > 0 and root["used_bytes"] + root["free_bytes"] > 0
    assert set(info["disk"]) == {"/", "/root"}
    assert info["agent_version"] == guest.AGENT_VERSION


def test_ports_sees_a_listening_socket(agent: Agent) -> None:
    with socket.socket() as s4, socket.socket(socket.AF_INET6) as s6:
        s4.bind(("127.0.0.1", 0))
        s4.listen()
        s6.bind(("::1", 0))
        s6.listen()
        p4, p6 = s4.getsockname()[1], s6.getsockname()[1]
        found = agent.get("/ports")["ports"]
    mine = {(p["port"], p["address"], p["family"]): p for p in found}
    assert (p4, "127.0.0.1", "tcp") in mine
    assert (p6, "::1", "tcp6") in mine
    assert mine[(p4, "127.0.0.1", "tcp")]["pid"] == os.getpid()
    assert mine[(p4, "127.0.0.1", "tcp")]["process"]
    assert [p["port"] for p in found] == sorted(p["port"] for p in found)


def test_sequential_requests_on_one_stream(agent: Agent) -> None:
    agent.send(
        b"GET /healthz HTTP/1.1\r\nX-Request-Id: a\r\n\r\n"
        b"GET /info HTTP/1.1\r\nX-Request-Id: b\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nX-Request-Id: c\r\n\r\n"
        b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\nX-Request-Id: d\r\n\r\nhello"
        b"GET /healthz?x=1 HTTP/1.0\r\nX-Request-Id: e\r\n\r\n"
    )
    got = [agent.response() for _ in range(5)]
    assert [(s, h["x-request-id"]) for s, h, _ in got] == [
        (200, "a"),
        (200, "b"),
        (404, "c"),
        (405, "d"),
        (200, "e"),
    ]
    assert "kernel" in got[1][2]


def test_resyncs_after_garbage(agent: Agent) -> None:
    agent.send(b"\x00\xff\xfe garbage\r\nnot http at all\n" + b"x" * 20000 + b"\n")
    # a request cut off by the next one is dropped; the next one is answered
    agent.send(b"GET /info HTTP/1.1\r\nX-Request-Id: cut\r\nGET /healthz HTTP/1.1\r\n")
    agent.send(b"X-Request-Id: whole\r\n\r\n")
    status, headers, body = agent.response()
    assert (status, headers["x-request-id"], body["ok"]) == (200, "whole", True)
    assert agent.get("/healthz", rid="after")["ok"] is True


# -- the host client --------------------------------------------------------------------


class Bridge:
    """What QEMU (or Firecracker) does on the host: a UNIX socket whose clients, one
    at a time, are relayed to the agent's single persistent stream."""

    def __init__(self, agent: Agent, path: Path, *, hybrid: bool = False, stale: bytes = b""):
        self.agent, self.path, self.hybrid, self.stale = agent, path, hybrid, stale
        self.connections = 0
        self.one_at_a_time = asyncio.Lock()

    async def __aenter__(self) -> Bridge:
        self.agent.host.setblocking(False)
        self.server = await asyncio.start_unix_server(self._client, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self.one_at_a_time:
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        loop = asyncio.get_running_loop()
        if self.hybrid:
            line = await reader.readline()
            assert line == b"CONNECT 1024\n", line
            writer.write(b"OK 1073741824\n")
        writer.write(self.stale)  # an answer an earlier client never read

        async def to_guest() -> None:
            while data := await reader.read(4096):
                await loop.sock_sendall(self.agent.host, data)

        async def to_host() -> None:
            while data := await loop.sock_recv(self.agent.host, 4096):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(to_guest()), asyncio.create_task(to_host())]
        await tasks[0]
        await asyncio.sleep(0.05)
        tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await tasks[1]
        writer.close()


STALE = (
    b'HTTP/1.1 200 OK\r\nX-Request-Id: old\r\nContent-Length: 14\r\n\r\n{"ok": "old"}\n'
    + guest.encode_json(guest.HELLO, 0, {"session": "someone-else"})
    + guest.encode(guest.STDOUT, 1, b"output for a client that left")
)


async def test_client_over_virtio_serial(agent: Agent, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    async with Bridge(agent, sock, stale=b"junk\r\n" + STALE) as bridge:
        c = AgentClient({"transport": "virtio-serial", "path": str(sock)})
        assert (await c.healthz())["ok"] is True  # the stale bytes were skipped
        assert (await c.info())["agent_version"] == guest.AGENT_VERSION
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            assert port in [p["port"] for p in await c.ports()]
        # concurrent callers share one session on the one stream
        results = await asyncio.gather(*(c.healthz() for _ in range(5)))
        assert all(r["ok"] is True for r in results)
        assert bridge.connections == 1


async def test_actions_carry_a_body_and_report_bad_ones(agent: Agent, tmp_path: Path) -> None:
    """Over the wire: an action is found by path and its body checked (the clock is
    not set here: this runs on the host, as root); the setting is tested in-process
    and, for real, in a resumed guest (test_snapshots.py)."""
    sock = tmp_path / "agent.sock"
    async with Bridge(agent, sock):
        c = AgentClient({"transport": "virtio-serial", "path": str(sock)})
        with pytest.raises(BangerError, match=r"answered /clock with 400: bad /clock request"):
            await c.act("/clock", {"unix_ns": "soon"})
        with pytest.raises(BangerError, match=r"answered /nope with 404: no such action"):
            await c.act("/nope", {})
        assert (await c.healthz())["ok"] is True  # still answering


def test_set_clock_sets_the_realtime_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(guest.time, "clock_settime_ns", lambda clk, ns: calls.append((clk, ns)))
    status, body = guest.act("/clock", {"unix_ns": 1_700_000_000_000_000_000})
    assert status == 200 and calls == [(guest.time.CLOCK_REALTIME, 1_700_000_000_000_000_000)]
    assert body["unix_ns"] == 1_700_000_000_000_000_000 and body["was_off_s"] > 0
    assert guest.act("/clock", [1])[0] == 400


async def test_client_over_hybrid_vsock(agent: Agent, tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    async with Bridge(agent, sock, hybrid=True):
        c = AgentClient({"transport": "hybrid-vsock", "path": str(sock), "cid": 3})
        assert (await c.healthz())["ok"] is True


async def test_client_errors_name_the_channel(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailable) as e:
        AgentClient(None)
    assert "no guest agent channel" in e.value.message
    missing = AgentClient({"transport": "virtio-serial", "path": str(tmp_path / "gone.sock")})
    with pytest.raises(AgentUnavailable) as e:
        await missing.healthz()
    assert "gone.sock" in e.value.message and "systemctl status banger-agent" in e.value.hint

    # QEMU accepts while no agent reads the port: the client times out, clearly.
    silent = await asyncio.start_unix_server(lambda r, w: None, str(tmp_path / "silent.sock"))
    async with silent:
        c = AgentClient(
            {"transport": "virtio-serial", "path": str(tmp_path / "silent.sock")}, timeout=0.3
        )
        with pytest.raises(AgentUnavailable) as e:
            await c.healthz()
        assert "did not answer within 0.3s" in e.value.message and "silent.sock" in e.value.message

    with pytest.raises(AgentUnavailable):
        AgentClient({"transport": "carrier-pigeon"})


# -- daemon routes and CLI ---------------------------------------------------------------


def _vm(agent_channel: dict[str, Any] | None, state: str = "running") -> VMRecord:
    handle = {
        "engine": "qemu",
        "pid": 1,
        "start_time": 1,
        "control_socket": "/nonexistent",
        "extra": {"agent": agent_channel} if agent_channel else {},
    }
    return VMRecord(
        id="id1",
        name="box",
        state=state,
        image="img",
        kernel="k",
        engine="qemu",
        vcpus=1,
        memory_mib=256,
        disk_bytes=1,
        work_bytes=1,
        mac="02:00:00:00:00:01",
        ip="172.16.0.2",
        handle=handle if state == "running" else None,
    )


def _image(images_dir: Path, agent: bool | None) -> None:
    d = images_dir / "img"
    d.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {}
    if agent is not None:
        fields["agent"] = agent
    manifest = ImageManifest(
        name="img", files={}, created="2026-01-01T00:00:00Z", banger_version="0", source="x"
    ).model_copy(update=fields)
    write_manifest(d, manifest)
    if agent is None:  # an image.json written before the field existed
        data = json.loads((d / "image.json").read_text())
        del data["agent"]
        (d / "image.json").write_text(json.dumps(data))


@contextlib.asynccontextmanager
async def serving(app: web.Application, path: Path) -> AsyncIterator[Path]:
    """`app` served by the daemon's HTTP server on a UNIX socket at `path`."""
    server = await serve(app, bind_socket(path))
    try:
        yield path
    finally:
        await server.cleanup()
        path.unlink(missing_ok=True)


def agent_app(get: Any, images_dir: Path) -> web.Application:
    """The daemon's agent routes (and its error middleware) over a stand-in daemon
    whose `vms.get` is `get`."""
    d = SimpleNamespace(vms=SimpleNamespace(get=get), paths=SimpleNamespace(images_dir=images_dir))
    app = web.Application(middlewares=[errors_middleware])
    app[DAEMON_KEY] = d  # type: ignore[assignment]
    agent_routes.setup(app)
    return app


@contextlib.asynccontextmanager
async def api(vm: VMRecord, images_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    sock = images_dir.parent / "api.sock"
    async with serving(agent_app(lambda name: vm, images_dir), sock):
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://bangerd") as client:
            yield client


def test_old_image_json_means_no_agent(tmp_path: Path) -> None:
    _image(tmp_path, None)
    info = read_info(tmp_path / "img")
    assert info is not None and info.agent is False


async def test_routes(agent: Agent, tmp_path: Path) -> None:
    images = tmp_path / "images"
    sock = tmp_path / "agent.sock"
    channel = {"transport": "virtio-serial", "path": str(sock)}

    _image(images, None)  # the cached test image: built before the agent
    async with api(_vm(channel), images) as http:
        h = (await http.get("/v1/vms/box/health")).json()
        assert (h["healthy"], h["agent"]) == (False, "absent")
        assert h["detail"] == "not in this image (it was built before banger-agent existed)"
        r = await http.get("/v1/vms/box/ports")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "agent_unavailable"
        # exec and cp say so too, before any WebSocket upgrade
        r = await http.get("/v1/vms/box/stream")
        assert r.status_code == 503
        err = r.json()["error"]
        assert "has no guest agent" in err["message"] and "image pull" in err["hint"]

    _image(images, True)
    async with api(_vm(channel, state="stopped"), images) as http:
        h = (await http.get("/v1/vms/box/health")).json()
        assert (h["healthy"], h["agent"]) == (False, "stopped")
        assert (await http.get("/v1/vms/box/ports")).status_code == 409
        r = await http.get("/v1/vms/box/stream")
        err = r.json()["error"]
        assert r.status_code == 409 and "banger vm start box" in err["hint"]
        # the state guard's wording: the current state and the one needed
        assert err["message"] == "VM `box` is stopped; its guest agent needs it running"

    async with api(_vm(channel), images) as http:
        h = (await http.get("/v1/vms/box/health")).json()
        assert (h["healthy"], h["agent"]) == (False, "unreachable")
        assert "agent.sock" in h["detail"] and h["hint"]

        async with Bridge(agent, sock):
            h = (await http.get("/v1/vms/box/health")).json()
            assert (h["healthy"], h["agent"]) == (True, "ok")
            assert h["healthz"]["ok"] is True and h["info"]["kernel"] == os.uname().release
            p = (await http.get("/v1/vms/box/ports")).json()
            assert p["name"] == "box" and isinstance(p["ports"], list)


def test_cli_renders_health_and_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    from banger.cli import agent_cmds
    from banger.cli.main import cli

    health = {
        "name": "box",
        "healthy": True,
        "agent": "ok",
        "transport": "virtio-serial /x/agent.sock",
        "latency_ms": 3.2,
        "healthz": {"ok": True},
        "info": {
            "hostname": "box",
            "kernel": "6.1.0",
            "uptime_s": 75,
            "load": [0.1, 0.2, 0.3],
            "memory": {"total_bytes": 512 << 20, "available_bytes": 400 << 20},
            "disk": {"/": {"total_bytes": 4 << 30, "used_bytes": 1 << 30, "free_bytes": 3 << 30}},
            "agent_version": "1",
        },
    }
    ports = {
        "name": "box",
        "ip": "172.16.0.2",
        "ports": [
            {"port": 22, "address": "0.0.0.0", "family": "tcp", "pid": 200, "process": "sshd"},
            {"port": 22, "address": "::", "family": "tcp6", "pid": 200, "process": "sshd"},
            {"port": 5432, "address": "127.0.0.1", "family": "tcp", "pid": None, "process": None},
        ],
    }
    from banger.api.models import VM

    box = VM.model_validate(
        {
            **dict.fromkeys(("id", "name", "image", "kernel", "engine", "mac"), "box"),
            **dict(state="running", vcpus=1, memory_mib=256, disk_bytes=1, work_bytes=1),
            **dict(nat=False, ip="172.16.0.2", tap=None, created_at=0.0),
            "ports": [
                {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 2222, "guest_port": 22}
                | {"spec": "2222:22"}
            ],
        }
    )
    fake = SimpleNamespace(
        vm_health=lambda name: health, vm_ports=lambda name: ports, vm=lambda name: box
    )
    monkeypatch.setattr(agent_cmds, "client", lambda: fake)
    runner = CliRunner()

    r = runner.invoke(cli, ["vm", "health", "box"])
    assert r.exit_code == 0, r.output
    assert "agent ok" in r.output and "6.1.0" in r.output and "1m15s" in r.output

    r = runner.invoke(cli, ["vm", "ports", "box"])
    assert r.exit_code == 0, r.output
    assert "http://box.vm:22" in r.output and "sshd (200)" in r.output
    assert "http://box.vm:5432" not in r.output  # loopback only: no link
    assert "*:2222" in r.output and "host :2222" in r.output  # published, and to what
    r = runner.invoke(cli, ["vm", "ports", "box", "--json"])
    assert json.loads(r.output) == {**ports, "published": [box.ports[0].model_dump()]}

    health.update(healthy=False, agent="absent", detail=agent_routes.NO_AGENT, info=None)
    r = runner.invoke(cli, ["vm", "health", "box"])
    assert r.exit_code == 1
    assert "agent: not in this image (it was built before banger-agent existed)" in r.output
    r = runner.invoke(cli, ["vm", "health", "box", "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["agent"] == "absent"


# -- a real guest -------------------------------------------------------------------------


@pytest.mark.boot
async def test_real_guest_answers_over_virtio_serial(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Boot the built image under the real QEMU engine (TCG, no NIC, virtio-serial
    agent channel) and ask the agent. The agent is injected into a clone of the image
    rootfs and enabled with `systemd.wants=`, so a cached image built before the
    agent existed still serves."""
    import time

    from banger.artifacts import ext4
    from banger.artifacts.images import pull_image
    from banger.artifacts.images.recipe import RECIPES_DIR
    from banger.artifacts.kernels import pull_kernel
    from banger.engines.guest_config import build_guest_config
    from banger.engines.qemu import QemuEngine
    from banger.system import find_tool, is_root
    from tests.test_image_build import cache_dir
    from tests.test_kernel_pull import apt_knows_the_kernel

    tools = ("qemu-system-x86_64", "mmdebstrap", "mkfs.ext4", "debugfs")
    if not is_root() or any(find_tool(t) is None for t in tools):
        pytest.skip("needs root, qemu-system-x86, mmdebstrap and e2fsprogs")
    if reason := apt_knows_the_kernel():
        pytest.skip(reason)
    base = cache_dir(tmp_path_factory, "image-build")
    image = pull_image("debian-bookworm", base / "images", base / "tmp")
    kbase = cache_dir(tmp_path_factory, "kernel")
    kernel = pull_kernel("debian-6.1", kbase / "kernels", kbase / "tmp")

    rootfs = tmp_path / "rootfs.ext4"
    ext4.clone_file(image.rootfs, rootfs)
    unit = RECIPES_DIR / "debian-bookworm/files/banger-agent.service"
    ext4.write_file_into(rootfs, "/usr/local/bin/banger-agent", GUEST_PROGRAM.read_bytes(), 0o755)
    ext4.write_file_into(
        rootfs, "/etc/systemd/system/banger-agent.service", unit.read_bytes(), 0o644
    )
    cfg = build_guest_config(
        vm_id="agentboot",
        name="agentboot",
        kernel=kernel.vmlinux,
        initrd=kernel.initrd,
        rootfs=rootfs,
        work_disk=None,
        vcpus=2,
        memory_mib=1024,
        run_dir=tmp_path / "run",
        extra_cmdline=["systemd.wants=banger-agent.service"],
    )
    engine = QemuEngine(accel="tcg", vhost_vsock=False)
    handle = await engine.start(cfg)
    try:
        channel = handle.extra["agent"]
        assert channel["transport"] == "virtio-serial"
        client = AgentClient(channel, timeout=5)
        deadline = time.monotonic() + 300
        while True:
            try:
                health = await client.healthz()
                break
            except AgentUnavailable:
                if not engine.is_running(handle) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(2)
        assert health["ok"] is True and health["hostname"] == "agentboot"
        info = await client.info()
        assert info["kernel"].startswith("6.1") and info["disk"]["/"]["total_bytes"] > 0
        # The agent starts right after basic.target, before sshd: wait for it to listen.
        deadline = time.monotonic() + 120
        while not (sshd := [p for p in await client.ports() if p["port"] == 22]):
            assert time.monotonic() < deadline, "sshd never showed up in /ports"
            await asyncio.sleep(1)
        assert sshd[0]["process"] == "sshd" and sshd[0]["pid"] > 1, sshd
    finally:
        await engine.kill(handle)
