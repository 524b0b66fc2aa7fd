"""The agent's frame protocol and its exec/file streams, without a VM: the real guest
program runs on the host against a socketpair, behind a transparent byte relay (what
QEMU's chardev or Firecracker's hybrid vsock is), driven by the real host client."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from banger.agent import guest
from banger.agent.client import AgentClient, AgentStream, AgentUnavailable, close_sessions
from banger.errors import BangerError
from tests.test_agent import Agent, Bridge


@pytest.fixture
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AgentClient]:
    agent = Agent(ignore_sigint=getattr(request, "param", False))
    sock = tmp_path / "agent.sock"
    try:
        async with Bridge(agent, sock):
            yield AgentClient({"transport": "virtio-serial", "path": str(sock)}, timeout=10)
            await close_sessions()
    finally:
        agent.close()


async def run(
    c: AgentClient, spec: dict[str, Any], stdin: bytes | None = None, slow: float = 0.0
) -> tuple[bytes, bytes, dict[str, Any], list[str]]:
    """Run a stream to its end: (stdout, stderr, exit info, order of chunk kinds)."""
    stream, _ = await c.open({**spec, "stdin": stdin is not None} if stdin else spec)
    if stdin is not None:

        async def feed() -> None:
            await stream.write(stdin)
            await stream.write(b"")

        feeding = asyncio.create_task(feed())
    out, err, order = bytearray(), bytearray(), []
    while True:
        ev = await asyncio.wait_for(stream.next_event(), 30)
        if ev.kind == "exit":
            if stdin is not None:
                await feeding
            return bytes(out), bytes(err), ev.info, order
        (out if ev.kind == "stdout" else err).extend(ev.data)
        order.append(ev.kind)
        if slow:
            await asyncio.sleep(slow)
        await stream.consumed(len(ev.data))


# -- frames ---------------------------------------------------------------------------


def test_frames_round_trip_and_reject_garbage() -> None:
    frame = guest.encode(guest.STDOUT, 7, b"hello")
    assert len(frame) == guest.HEADER.size + 5
    assert guest.decode_header(frame[: guest.HEADER.size]) == (guest.STDOUT, 7, 5)
    assert guest.parse_window(guest.window(123456)) == 123456
    for bad in (
        b"GET / HTTP/1.1\r\n"[:12],  # not the magic
        guest.HEADER.pack(guest.MAGIC, 99, 0, 1, 0),  # unknown type
        guest.HEADER.pack(guest.MAGIC, guest.STDIN, 0, 1, guest.MAX_FRAME + 1),  # too long
    ):
        with pytest.raises(guest.FrameError):
            guest.decode_header(bad)


def test_agent_skips_garbage_and_answers_hello_then_requests() -> None:
    a = Agent()
    try:
        a.send(b"\x00garbage bG\x00 and a half frame " + guest.encode(guest.STDIN, 3, b"x")[:7])
        a.send(guest.encode_json(guest.HELLO, 0, {"session": "s1"}))
        a.send(guest.encode_json(guest.REQUEST, 5, {"path": "/healthz"}))
        a.send(guest.encode_json(guest.REQUEST, 6, {"path": "/nope"}))
        frames = [_read_frame(a.host) for _ in range(3)]
        hello = frames[0]
        assert hello[0] == guest.HELLO and b'"session":"s1"' in hello[2]
        answers = {sid: payload for ftype, sid, payload in frames[1:] if ftype == guest.RESPONSE}
        assert b'"status":200' in answers[5] and b'"ok":true' in answers[5]
        assert b'"status":404' in answers[6]
    finally:
        a.close()


def _read_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    head = _exactly(sock, guest.HEADER.size)
    ftype, sid, length = guest.decode_header(head)
    return ftype, sid, _exactly(sock, length)


def _exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "agent closed the stream"
        buf += chunk
    return buf


# -- exec -----------------------------------------------------------------------------


async def test_identity_is_an_action_with_a_body(client: AgentClient) -> None:
    # Nothing here may reach a real change of this host: a body without the hostname
    # fails before the first step; the clock is only set when "time" is sent.
    with pytest.raises(BangerError, match=r"404: no such path /identity"):
        await client.get("/identity")  # not a read: never over plain GET either
    with pytest.raises(BangerError, match=r"400: bad /identity request: KeyError: 'hostname'"):
        await client.act("/identity", {"mac": "02:00:00:00:00:01"})
    with pytest.raises(BangerError, match=r"404: no such action /nope"):
        await client.act("/nope", {})
    assert (await client.healthz())["ok"] is True  # and the agent keeps answering
    assert guest.act("/identity", []) == (400, {"error": "/identity needs a JSON object body"})


async def test_exec_streams_output_apart_and_in_order(client: AgentClient) -> None:
    script = "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; exit 7"
    out, err, info, order = await run(client, {"kind": "exec", "argv": ["sh", "-c", script]})
    assert (out, err) == (b"out1\nout2\n", b"err1\n")
    assert order == ["stdout", "stderr", "stdout"]
    assert info["code"] == 7 and info["signal"] is None


async def test_exec_env_workdir_user_and_missing_command(
    client: AgentClient, tmp_path: Path
) -> None:
    spec = {
        "kind": "exec",
        "argv": ["sh", "-c", 'echo "$GREETING $(pwd) $(id -un)"'],
        "env": {"GREETING": "hi there"},
        "workdir": str(tmp_path),
    }
    out, _, info, _ = await run(client, spec)
    assert out.decode() == f"hi there {tmp_path} {os.popen('id -un').read().strip()}\n"
    if os.geteuid() == 0:
        out, _, info, _ = await run(
            client, {"kind": "exec", "argv": ["id", "-u"], "user": "nobody"}
        )
        assert out.strip() == b"65534" and info["code"] == 0
        # A uid with no account (as OCI images often give): that uid, group 0, home /.
        out, _, info, _ = await run(
            client,
            {"kind": "exec", "argv": ["sh", "-c", 'echo "$(id -u) $(id -g) $HOME $(pwd)"'],
             "user": "4242"},
        )  # fmt: skip
        assert out.decode() == "4242 0 / /\n" and info["code"] == 0
    _, _, info, _ = await run(client, {"kind": "exec", "argv": ["no-such-command-x"]})
    assert info["code"] == 127 and "no-such-command-x" in info["error"]
    _, _, info, _ = await run(
        client, {"kind": "exec", "argv": ["true"], "workdir": str(tmp_path / "gone")}
    )
    assert info["code"] != 0 and "gone" in info["error"]
    _, _, info, _ = await run(client, {"kind": "exec", "argv": ["true"], "user": "no-such-u"})
    assert info["code"] == 126 and "no-such-u" in info["error"]


async def test_exec_stdin_round_trips_a_large_input(client: AgentClient) -> None:
    data = os.urandom(3 << 20)  # three windows: flow control in both directions
    out, _, info, _ = await run(client, {"kind": "exec", "argv": ["cat"]}, stdin=data)
    assert out == data and info["code"] == 0


async def test_flow_control_holds_a_fast_producer_back(client: AgentClient) -> None:
    """A consumer that does not acknowledge stops the guest at one window; nothing is
    lost once it resumes."""
    stream, _ = await client.open(
        {"kind": "exec", "argv": ["head", "-c", str(8 << 20), "/dev/zero"]}
    )
    received = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            ev = await asyncio.wait_for(stream.next_event(), 0.2)
        except TimeoutError:
            continue
        received += len(ev.data)
    assert received == guest.WINDOW_INITIAL  # held at the window
    await stream.consumed(received)
    while (ev := await asyncio.wait_for(stream.next_event(), 30)).kind != "exit":
        received += len(ev.data)
        await stream.consumed(len(ev.data))
    assert received == 8 << 20 and ev.info["code"] == 0


async def test_sixteen_concurrent_execs_share_the_channel(client: AgentClient) -> None:
    async def one(n: int) -> tuple[bytes, int]:
        script = f"for i in $(seq 200); do echo {n}-$i; done; exit {n}"
        out, _, info, _ = await run(client, {"kind": "exec", "argv": ["sh", "-c", script]})
        return out, info["code"]

    results = await asyncio.gather(*(one(n) for n in range(16)))
    for n, (out, code) in enumerate(results):
        assert code == n
        assert out.decode().split() == [f"{n}-{i}" for i in range(1, 201)]


async def test_a_stream_opens_on_a_starved_guest_and_a_hung_agent_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting a command on a guest of a loaded host may take longer than a request
    may (the agent is stopped here for 3x the request bound): it still opens. An agent
    that never answers is reported once the stream bound is over."""
    from banger.agent import client as agent_client

    agent = Agent()
    sock = tmp_path / "agent.sock"
    loop = asyncio.get_running_loop()
    try:
        async with Bridge(agent, sock):
            c = AgentClient({"transport": "virtio-serial", "path": str(sock)}, timeout=0.5)
            assert (await c.healthz())["ok"] is True
            os.kill(agent.proc.pid, signal.SIGSTOP)
            loop.call_later(1.5, os.kill, agent.proc.pid, signal.SIGCONT)
            out, _, info, _ = await run(c, {"kind": "exec", "argv": ["echo", "late"]})
            assert (out, info["code"]) == (b"late\n", 0)

            monkeypatch.setattr(agent_client, "STREAM_TIMEOUT", 1.0)
            os.kill(agent.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(AgentUnavailable) as e:
                    await c.open({"kind": "exec", "argv": ["true"]})
                assert "did not start the exec stream within 1s" in e.value.message
            finally:
                os.kill(agent.proc.pid, signal.SIGCONT)
            await close_sessions()
    finally:
        agent.close()


def test_the_cli_waits_longer_for_a_stream_than_the_daemon_does() -> None:
    """So that a slow guest's error is the daemon's, naming the agent, not a time-out."""
    from banger import stream
    from banger.agent import client as agent_client

    assert stream.OPEN_TIMEOUT > agent_client.STREAM_TIMEOUT + stream.CONNECT_TIMEOUT


async def test_signal_and_close_kill_the_process_group(client: AgentClient, tmp_path: Path) -> None:
    stream, info = await client.open({"kind": "exec", "argv": ["sleep", "60"]})
    await stream.signal(signal.SIGTERM)
    ev = await asyncio.wait_for(stream.next_event(), 10)
    assert ev.kind == "exit" and ev.info == {"code": 128 + 15, "signal": 15}

    pidfile = tmp_path / "child.pid"
    stream, info = await client.open(
        {
            "kind": "exec",
            "argv": [
                "sh",
                "-c",
                f"sleep 60 & echo $! > {pidfile}.t; mv {pidfile}.t {pidfile}; wait",
            ],
        }
    )
    await _until(pidfile.exists)
    child = int(pidfile.read_text())
    await stream.close()  # what the daemon does when the CLI goes away
    await _until(lambda: not _alive(child))
    assert not _alive(info["pid"])


async def test_host_disconnect_kills_what_the_session_started(tmp_path: Path) -> None:
    agent = Agent()
    sock = tmp_path / "agent.sock"
    try:
        async with Bridge(agent, sock):
            c = AgentClient({"transport": "virtio-serial", "path": str(sock)}, timeout=10)
            _, info = await c.open({"kind": "exec", "argv": ["sleep", "60"]})
            agent.host.shutdown(socket.SHUT_RDWR)  # the host side of the channel is gone
            await _until(lambda: not _alive(info["pid"]))
            await close_sessions()
    finally:
        agent.close()


async def test_tty_has_a_terminal_size_and_resizes(client: AgentClient) -> None:
    script = "stty size; trap 'stty size; exit 3' WINCH; echo ready; while :; do sleep 0.05; done"
    stream, _ = await client.open(
        {"kind": "exec", "argv": ["bash", "-c", script], "tty": True, "rows": 24, "cols": 80}
    )
    seen = await _read_until(stream, b"ready")
    assert b"24 80" in seen
    await stream.resize(50, 132)
    seen = await _read_until(stream, b"50 132")
    ev = await _exit_of(stream)
    assert ev["code"] == 3


@pytest.mark.parametrize(
    "client", [False, True], indirect=True, ids=["agent", "agent-started-with-sigint-ignored"]
)
async def test_tty_ctrl_c_interrupts_the_foreground_process(client: AgentClient) -> None:
    stream, info = await client.open(
        {"kind": "exec", "argv": ["sleep", "60"], "tty": True, "stdin": True}
    )
    await _until(lambda: Path(f"/proc/{info['pid']}/comm").read_text() == "sleep\n")
    await stream.write(b"\x03")  # what a raw terminal sends for Ctrl-C
    info = await _exit_of(stream)
    assert info["code"] == 130 and info["signal"] == 2


async def _read_until(stream: AgentStream, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        ev = await asyncio.wait_for(stream.next_event(), 10)
        assert ev.kind != "exit", (seen, ev.info)
        seen += ev.data
        await stream.consumed(len(ev.data))
    return seen


async def _exit_of(stream: AgentStream) -> dict[str, Any]:
    while (ev := await asyncio.wait_for(stream.next_event(), 10)).kind != "exit":
        await stream.consumed(len(ev.data))
    return ev.info


async def _until(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


# -- files ----------------------------------------------------------------------------


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (root / "sub" / "run.sh").chmod(0o750)
    (root / "link").symlink_to("sub/run.sh")
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    os.utime(root / "a.txt", (1_600_000_000, 1_600_000_000))
    os.utime(root / "sub", (1_500_000_000, 1_500_000_000))


def _tar_of(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(str(path), arcname=path.name)
    return buf.getvalue()


async def test_tar_in_and_out_keep_modes_links_and_mtimes(
    client: AgentClient, tmp_path: Path
) -> None:
    src = tmp_path / "proj"
    _tree(src)
    dest = tmp_path / "copy"  # does not exist: the copy is created under this name
    _, _, info, _ = await run(client, {"kind": "tar-in", "path": str(dest)}, _tar_of(src))
    assert info["code"] == 0 and info["files"] == 4
    assert (dest / "a.txt").read_text() == "alpha\n"
    assert (dest / "sub" / "run.sh").stat().st_mode & 0o777 == 0o750
    assert os.readlink(dest / "link") == "sub/run.sh"
    assert (dest / "a.txt").stat().st_mtime == 1_600_000_000
    assert (dest / "sub").stat().st_mtime == 1_500_000_000
    assert (dest / "big.bin").read_bytes() == (src / "big.bin").read_bytes()

    # into an existing directory: lands inside it
    _, _, info, _ = await run(client, {"kind": "tar-in", "path": str(dest)}, _tar_of(src))
    assert (dest / "proj" / "a.txt").read_text() == "alpha\n"

    out, _, info, _ = await run(client, {"kind": "tar-out", "path": str(src)})
    assert info["code"] == 0
    back = tmp_path / "back"
    back.mkdir()
    stats = guest.extract_archive(io.BytesIO(out), str(back))
    assert stats["files"] == 4
    assert (back / "proj" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert os.readlink(back / "proj" / "link") == "sub/run.sh"

    _, _, info, _ = await run(client, {"kind": "tar-out", "path": str(tmp_path / "nope")})
    assert info["code"] == 1 and "nope" in info["error"]


def _evil(*members: tarfile.TarInfo, data: bytes = b"pwned") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            if m.isreg():
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
            else:
                tar.addfile(m)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    m.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return m


@pytest.mark.parametrize(
    "archive",
    [
        [_member("../escape.txt")],
        [_member("/tmp/abs-escape.txt")],
        [_member("d", tarfile.DIRTYPE), _member("d/../../escape.txt")],
        [_member("ln", tarfile.SYMTYPE, link=".."), _member("ln/escape.txt")],
        [_member("hard", tarfile.LNKTYPE, link="../escape.txt")],
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "through-symlink", "hardlink-out"],
)
async def test_tar_in_refuses_to_write_outside_the_target(
    client: AgentClient, tmp_path: Path, archive: list[tarfile.TarInfo]
) -> None:
    target = tmp_path / "inside" / "t"
    target.mkdir(parents=True)
    _, _, info, _ = await run(client, {"kind": "tar-in", "path": str(target)}, _evil(*archive))
    assert info["code"] == 1 and "refusing" in info["error"]
    assert not (tmp_path / "inside" / "escape.txt").exists()
    assert not Path("/tmp/abs-escape.txt").exists()


async def test_requests_and_streams_share_a_relay_with_hybrid_vsock(tmp_path: Path) -> None:
    """Firecracker's hybrid vsock: the same protocol after the CONNECT handshake."""
    agent = Agent()
    sock = tmp_path / "v.sock"
    try:
        async with Bridge(agent, sock, hybrid=True):
            c = AgentClient({"transport": "hybrid-vsock", "path": str(sock), "cid": 3})
            health, (out, _, info, _) = await asyncio.gather(
                c.healthz(), run(c, {"kind": "exec", "argv": ["echo", "over vsock"]})
            )
            assert health["ok"] is True and out == b"over vsock\n" and info["code"] == 0
            await close_sessions()
    finally:
        agent.close()


# -- through the daemon's stream route: the Python API and the CLI ------------------------


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Path]:
    """The daemon's agent routes on a real UNIX socket (BANGER_HOME layout), with VM
    "box" whose agent channel leads to the real guest program behind a relay.
    Yields the BANGER_HOME."""
    from tests.test_agent import _image, _vm, agent_app, serving

    home = Path(f"/tmp/bx-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    (home / "run").mkdir(parents=True)
    images = tmp_path / "images"
    _image(images, True)
    agent = Agent()
    chan = tmp_path / "agent.sock"
    vm = _vm({"transport": "virtio-serial", "path": str(chan)})

    def get(name: str) -> Any:
        if name != "box":
            from banger.errors import NotFound

            raise NotFound(f"no VM named {name!r}", hint="`banger vm list` shows the VMs")
        return vm

    try:
        sock = home / "run" / "bangerd.sock"
        async with Bridge(agent, chan), serving(agent_app(get, images), sock):
            yield home
            await close_sessions()
    finally:
        agent.close()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def _client(home: Path) -> Any:
    from banger.client import Client
    from banger.paths import Paths

    return Client(Paths(home / "config", home / "state", home / "data", home / "run"))


async def test_python_api_exec_and_files_through_the_daemon(served: Path, tmp_path: Path) -> None:
    c = _client(served)
    r = await asyncio.to_thread(c.exec, "box", "echo out; echo err >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr, r.ok) == (7, b"out\n", b"err\n", False), r.error
    r = await asyncio.to_thread(lambda: c.exec("box", ["tr", "a-z", "A-Z"], input="shout"))
    assert r.stdout == b"SHOUT" and r.ok
    blob = os.urandom(6 << 20)  # more than the windows: input and output both flow
    r = await asyncio.to_thread(lambda: c.exec("box", ["cat"], input=blob))
    assert r.stdout == blob and r.ok
    r = await asyncio.to_thread(lambda: c.exec("box", ["sleep", "30"], timeout=0.5))
    assert r.exit_code == 124 and r.timed_out
    with pytest.raises(Exception) as e:
        await asyncio.to_thread(lambda: c.exec("box", "exit 3", check=True))
    assert "exited 3" in str(e.value)
    with pytest.raises(Exception) as e:
        await asyncio.to_thread(c.exec, "ghost", "true")
    assert "no VM named 'ghost'" in str(e.value)

    target = tmp_path / "guest-side" / "notes.txt"  # parents are created
    await asyncio.to_thread(c.write_file, "box", str(target), "hello\n", 0o600)
    assert target.read_text() == "hello\n" and target.stat().st_mode & 0o777 == 0o600
    assert await asyncio.to_thread(c.read_file, "box", str(target)) == b"hello\n"
    with pytest.raises(Exception) as e:
        await asyncio.to_thread(c.read_file, "box", str(tmp_path / "missing"))
    assert "missing" in str(e.value)

    src = tmp_path / "proj"
    _tree(src)
    dest = tmp_path / "guest-side" / "proj-copy"
    stats = await asyncio.to_thread(c.copy_to, "box", src, str(dest))
    assert stats["files"] == 4 and (dest / "sub" / "run.sh").stat().st_mode & 0o777 == 0o750
    back = tmp_path / "host-side"
    back.mkdir()
    out = await asyncio.to_thread(c.copy_from, "box", str(dest), back)
    assert out["files"] == 4
    assert (back / "proj-copy" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert os.readlink(back / "proj-copy" / "link") == "sub/run.sh"


async def test_cli_exec_and_cp_through_the_daemon(served: Path, tmp_path: Path) -> None:
    import sys

    env = {**os.environ, "BANGER_HOME": str(served)}

    async def banger(*args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "banger.cli", *args, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(p.communicate(stdin), 60)
        assert p.returncode is not None
        return p.returncode, out, err

    rc, out, err = await banger(
        "vm", "exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 7"
    )
    assert (rc, out, err) == (7, b"out\n", b"err\n")
    rc, out, _ = await banger("vm", "exec", "-i", "box", "--", "wc", "-c", stdin=b"x" * 100000)
    assert rc == 0 and out.strip() == b"100000"
    rc, out, _ = await banger(
        "vm", "exec", "--env", "A=1", "-e", "B=two", "-w", "/tmp", "box", "--",
        "sh", "-c", 'echo "$A $B $(pwd)"',
    )  # fmt: skip
    assert (rc, out) == (0, b"1 two /tmp\n")
    rc, _, err = await banger("vm", "exec", "box", "--", "no-such-cmd-y")
    assert rc == 127 and b"no-such-cmd-y" in err
    rc, _, err = await banger("vm", "exec", "box", "--", "sh", "-c", "kill -TERM $$")
    assert rc == 128 + 15
    rc, _, err = await banger("vm", "exec", "--env", "NOEQUALS", "box", "--", "true")
    assert rc == 2 and b"K=V" in err

    src = tmp_path / "proj"
    _tree(src)
    guest_dir = tmp_path / "g"
    guest_dir.mkdir()
    rc, _, err = await banger("vm", "cp", str(src), f"box:{guest_dir}")
    assert rc == 0, err
    assert b"copied 4 files" in err
    assert (guest_dir / "proj" / "a.txt").read_text() == "alpha\n"
    rc, _, err = await banger("vm", "cp", f"box:{guest_dir}/proj/a.txt", str(tmp_path / "a-back"))
    assert rc == 0, err
    assert (tmp_path / "a-back").read_text() == "alpha\n"
    rc, _, err = await banger("vm", "cp", str(src), str(tmp_path / "x"))
    assert rc == 2 and b"exactly one side" in err
    rc, _, err = await banger("vm", "cp", f"box:{tmp_path}/nothing-here", str(tmp_path))
    assert rc == 1 and b"nothing-here" in err


async def test_a_client_that_resets_the_connection_kills_the_command(served: Path) -> None:
    """A client killed with the daemon's "opened" message still unread resets its
    socket (ECONNRESET on the daemon's read, not a clean end of stream): the command
    it started must die all the same."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    marker = f"sleep {50000 + os.getpid() % 10000}"
    ws = WSConnection(ConnectionType.CLIENT)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(served / "run" / "bangerd.sock"))
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(s, ws.send(Request(host="bangerd", target="/v1/vms/box/stream")))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        data = await asyncio.wait_for(loop.sock_recv(s, 4096), 30)
        assert data, "the daemon closed the connection instead of upgrading it"
        ws.receive_data(data)
    spec = {"kind": "exec", "argv": marker.split()}
    await loop.sock_sendall(s, ws.send(TextMessage(data=json.dumps(spec))))
    await _until(lambda: bool(_running(marker)), timeout=30)
    # Wait until the "opened" message is queued on our side, and close without reading it.
    await asyncio.wait_for(_readable(s), 30)
    s.close()
    await _until(lambda: not [p for p in _running(marker) if _alive(p)], timeout=60)


async def _readable(s: socket.socket) -> None:
    """Until data waits in `s` (left unread)."""
    while True:
        with contextlib.suppress(BlockingIOError):
            if s.recv(1, socket.MSG_PEEK):
                return
        await asyncio.sleep(0.05)


def _running(cmdline: str) -> list[int]:
    """PIDs whose command line is exactly `cmdline`."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if (p / "cmdline").read_bytes().replace(b"\0", b" ").strip() == cmdline.encode():
                    found.append(int(p.name))
    return found


async def test_mcp_server_over_stdio_bounds_output(served: Path, tmp_path: Path) -> None:
    """The real `banger mcp` process, driven by the MCP library's own client."""
    import sys

    from mcp.client import Client as McpClient
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "banger.cli", "mcp", "--max-output", "1000"],
        env={**os.environ, "BANGER_HOME": str(served)},
    )
    async with McpClient(params) as mcp:
        from banger import __version__

        info = mcp.server_info  # what clients show in their server list
        assert info is not None and (info.name, info.version) == ("banger", __version__)
        tools = {t.name for t in (await mcp.list_tools()).tools}
        assert {"vm_create", "vm_exec", "vm_read_file", "vm_write_file", "vm_list"} <= tools
        assert {"vm_ports", "vm_delete"} <= tools

        r = await mcp.call_tool("vm_exec", {"name": "box", "command": "echo hi; exit 4"})
        assert not r.is_error and r.structured_content is not None, r.content
        assert r.structured_content["exit_code"] == 4
        assert r.structured_content["stdout"] == "hi\n"

        r = await mcp.call_tool("vm_exec", {"name": "box", "command": "yes | head -c 100000"})
        out = r.structured_content["stdout"]  # type: ignore[index]
        assert out.startswith("y\ny\n") and "[truncated: 99000 more bytes not shown]" in out

        path = str(tmp_path / "mcp" / "hello.py")
        r = await mcp.call_tool(
            "vm_write_file", {"name": "box", "path": path, "content": "print('hi')\n"}
        )
        assert not r.is_error
        r = await mcp.call_tool("vm_read_file", {"name": "box", "path": path})
        assert r.content[0].text == "print('hi')\n"  # type: ignore[union-attr]
        big = tmp_path / "big.txt"
        big.write_text("z" * 5000)
        r = await mcp.call_tool("vm_read_file", {"name": "box", "path": str(big)})
        text = r.content[0].text  # type: ignore[union-attr]
        assert text.startswith("z" * 1000) and "[truncated: showing 1000 of 5000 bytes]" in text
        r = await mcp.call_tool("vm_read_file", {"name": "box", "path": "/nonexistent"})
        assert r.is_error and "nonexistent" in r.content[0].text  # type: ignore[union-attr]


async def test_mcp_reads_back_what_it_wrote_in_an_image_with_a_user(
    served: Path, tmp_path: Path
) -> None:
    """In an OCI image whose User is not root, commands run as that user (docker exec),
    but vm_read_file reads as vm_write_file writes, as root: a file written under a
    private directory reads back."""
    import sys

    from mcp.client import Client as McpClient
    from mcp.client.stdio import StdioServerParameters

    manifest = tmp_path / "images" / "img" / "image.json"
    data = json.loads(manifest.read_text())
    data["oci"] = {"reference": "r/app:1", "digest": "sha256:" + "0" * 64,
                   "platform": "linux/amd64", "user": "nobody"}  # fmt: skip
    manifest.write_text(json.dumps(data))
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "banger.cli", "mcp"],
        env={**os.environ, "BANGER_HOME": str(served)},
    )
    async with McpClient(params) as mcp:
        r = await mcp.call_tool("vm_exec", {"name": "box", "command": "id -un"})
        assert r.structured_content is not None and r.structured_content["stdout"] == "nobody\n"
        path = str(private / "notes.txt")
        r = await mcp.call_tool("vm_write_file", {"name": "box", "path": path, "content": "x\n"})
        assert not r.is_error, r.content
        r = await mcp.call_tool("vm_read_file", {"name": "box", "path": path})
        assert not r.is_error and r.content[0].text == "x\n", r.content  # type: ignore[union-attr]


async def test_killing_the_cli_kills_the_command(served: Path) -> None:
    import sys

    env = {**os.environ, "BANGER_HOME": str(served)}
    marker = f"sleep {40000 + os.getpid() % 10000}"
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "banger.cli", "vm", "exec", "box", "--", *marker.split(), env=env
    )

    def running() -> list[int]:
        return _running(marker)

    await _until(lambda: bool(running()), timeout=30)
    cli.kill()
    await cli.wait()
    # Generous for a loaded machine: the sleep would otherwise live for hours.
    await _until(lambda: not [p for p in running() if _alive(p)], timeout=60)


async def test_host_recovers_when_the_guest_falls_out_of_step(tmp_path: Path) -> None:
    """Garbage on the channel makes the agent drop the session; the host notices the
    silence, starts a new session, and carries on."""
    agent = Agent()
    sock = tmp_path / "agent.sock"
    try:
        async with Bridge(agent, sock):
            c = AgentClient({"transport": "virtio-serial", "path": str(sock)}, timeout=1)
            assert (await c.healthz())["ok"] is True
            await asyncio.get_running_loop().sock_sendall(agent.host, b"\xff" * 12)
            await asyncio.sleep(1.1)
            with pytest.raises(AgentUnavailable):
                await c.healthz()  # the old session is gone
            assert (await c.healthz())["ok"] is True  # a new one
            await close_sessions()
    finally:
        agent.close()


async def test_a_version_1_agent_still_answers_and_exec_says_why_not(tmp_path: Path) -> None:
    """VMs made from images built before the framed protocol run agent version 1
    (HTTP only): health, ports and info keep working, exec explains itself."""
    import subprocess
    import sys

    host, guest_end = socket.socketpair()
    v1 = Path(__file__).with_name("fixtures") / "banger_agent_v1.py"
    proc = subprocess.Popen(
        [sys.executable, "-I", str(v1), "--fd", str(guest_end.fileno())],
        pass_fds=[guest_end.fileno()],
    )
    guest_end.close()
    agent = Agent.__new__(Agent)
    agent.host, agent.proc, agent.rfile = host, proc, host.makefile("rb")
    sock = tmp_path / "agent.sock"
    try:
        async with Bridge(agent, sock):
            c = AgentClient({"transport": "virtio-serial", "path": str(sock)}, timeout=1)
            health = await c.healthz()
            assert health["ok"] is True and health["agent_version"] == "1"
            assert (await c.info())["agent_version"] == "1"  # no second HELLO wait
            with pytest.raises(AgentUnavailable) as e:
                await c.open({"kind": "exec", "argv": ["true"]})
            assert "too old" in e.value.message and "image pull" in e.value.hint
    finally:
        agent.close()
