"""The daemon through its real UNIX socket: permissions, peer check, lifecycle, operations."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest

from banger.client import Client
from banger.errors import DaemonUnavailable
from banger.paths import Paths
from tests.conftest import RunningDaemon, cli


def test_socket_is_private(daemon: RunningDaemon) -> None:
    st = daemon.paths.socket.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert stat.S_IMODE(daemon.paths.runtime_dir.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_peer_with_another_uid_is_rejected(daemon: RunningDaemon) -> None:
    # Loosen the mode so the kernel lets the other user connect; the peer check
    # must still refuse it.
    os.chmod(daemon.paths.socket, 0o666)
    os.chmod(daemon.paths.runtime_dir, 0o711)
    for d in daemon.paths.runtime_dir.parents:
        if str(d).startswith("/tmp/"):
            os.chmod(d, os.stat(d).st_mode | 0o011)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, make a request
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(daemon.paths.socket))
            s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            os.write(w, data)
        except Exception as exc:
            os.write(w, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        reply = f.read().decode()
    assert reply.startswith("HTTP/1.1 403")
    assert '"code": "privilege"' in reply or '"privilege"' in reply
    with Client(daemon.paths) as c:  # and the owner still gets in
        assert c.status().pid == daemon.proc.pid


def test_status_via_cli_and_second_daemon_refused(daemon: RunningDaemon) -> None:
    res = cli("daemon", "status", "--json")
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert st["running"] is True and st["pid"] == daemon.proc.pid
    assert st["dirs"]["state"] == str(daemon.paths.state_dir)
    second = cli("daemon", "start")
    assert "already running" in second.stdout
    dup = subprocess.run(
        [sys.executable, "-m", "banger.daemon", "--foreground"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert dup.returncode != 0
    assert "already running" in dup.stderr
    assert daemon.proc.poll() is None  # the first daemon is untouched


def test_any_command_autostarts_and_kill9_recovers(banger_home: Paths) -> None:
    res = cli("daemon", "status", "--json")
    assert res.returncode == 3 and json.loads(res.stdout)["running"] is False
    res = cli("kernel", "list", "--json")
    assert res.returncode == 0, res.stderr
    assert "started the banger daemon" in res.stderr
    pid = int(banger_home.pid_file.read_text())
    try:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert banger_home.socket.exists()  # stale socket left behind
        res = cli("kernel", "list", "--json")
        assert res.returncode == 0, res.stderr
        new_pid = json.loads(cli("daemon", "status", "--json").stdout)["pid"]
        assert new_pid != pid
    finally:
        cli("daemon", "stop")
    assert not banger_home.socket.exists()


def test_unreachable_daemon_error_is_actionable(banger_home: Paths) -> None:
    with pytest.raises(DaemonUnavailable) as exc:
        Client.connect(banger_home, autostart=False)
    assert "not running" in exc.value.message and "banger daemon start" in exc.value.hint


def test_bad_input_is_one_line_with_a_hint(banger_home: Paths) -> None:
    for args in (["frobnicate"], ["daemon", "status", "--nope"]):
        res = cli(*args)
        assert res.returncode == 2
        assert res.stderr.startswith("error:")
        assert "hint:" in res.stderr and "Traceback" not in res.stderr


def test_operation_progress_streams_through_the_socket(daemon: RunningDaemon) -> None:
    with Client(daemon.paths) as c:
        resp = c._request("POST", "/v1/debug/ticker", params={"ticks": 4, "interval": 0.05})
        op_id = resp["id"]
        events = []
        final = c.wait(c.operation(op_id), on_event=events.append)
        assert final.state == "succeeded" and final.result == {"ticks": 4}
        assert [e.detail for e in events] == ["1/4", "2/4", "3/4", "4/4"]
        assert events[-1].fraction == 1.0


def test_operation_cancel_through_the_socket(daemon: RunningDaemon) -> None:
    with Client(daemon.paths) as c:
        resp = c._request("POST", "/v1/debug/ticker", params={"ticks": 1000, "interval": 0.05})
        op_id = resp["id"]
        time.sleep(0.3)
        c.cancel(op_id)
        items = list(c.stream(op_id))
        final = items[-1]
        assert final.state == "cancelled"  # type: ignore[union-attr]
        assert len(items) < 100
        assert c.operation(op_id).state == "cancelled"


def test_unknown_endpoint_is_structured(daemon: RunningDaemon) -> None:
    t = httpx.HTTPTransport(uds=str(daemon.paths.socket))
    with httpx.Client(transport=t, base_url="http://d") as h:
        r = h.get("/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "no_such_endpoint"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the directory to another uid")
def test_runtime_dir_owned_by_someone_else_is_refused(banger_home: Paths) -> None:
    banger_home.runtime_dir.mkdir(parents=True)
    os.chown(banger_home.runtime_dir, 65534, 65534)
    res = cli("daemon", "start")
    assert res.returncode != 0
    assert "owned by uid 65534" in res.stderr and "hint:" in res.stderr
    assert not banger_home.socket.exists()
