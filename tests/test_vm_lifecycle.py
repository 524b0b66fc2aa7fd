"""End to end through the CLI: real kernel, real image, real QEMU guest (TCG here),
real bridge/TAP inside a test-made network namespace, real OpenSSH.

One boot-heavy test walks the whole lifecycle a user cares about; the rollback test
injects a failure at each create stage and checks nothing is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.vmkit import NsBanger, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> None:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))


@pytest.fixture
def b(artifacts: None, tmp_path: Path) -> Iterator[NsBanger]:
    with private_home() as b:
        yield b


def leases(b: NsBanger) -> list[str]:
    db = sqlite3.connect(b.home / "state" / "banger.db")
    try:
        return [r[0] for r in db.execute("SELECT ip FROM leases")]
    finally:
        db.close()


def assert_nothing_left(b: NsBanger) -> None:
    assert b.qemu_pids() == []
    assert [t for t in b.taps() if not t.startswith("tap-pool-")] == []
    assert leases(b) == []
    vms_dir = b.home / "state" / "vms"
    assert not vms_dir.exists() or list(vms_dir.iterdir()) == []


def wait_ssh(b: NsBanger, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while b.run("vm", "ssh", name, "--", "true", check=False).returncode != 0:
        assert time.monotonic() < deadline, f"{name} never answered ssh"
        time.sleep(1)


def test_lifecycle_persists_disks_survives_daemon_kill_and_cleans_up(b: NsBanger) -> None:
    vm = b.json("vm", "create", "--name", "a", "--memory", "512M")
    assert vm["state"] == "running" and vm["ip"].startswith("172.30.0.")
    assert set(vm["timings"]) >= {"image", "disks", "network", "boot", "ssh", "agent", "total"}
    health = b.json("vm", "health", "a")
    assert health["healthy"] is True and health["info"]["hostname"] == "a"

    b.run("vm", "ssh", "a", "--", "echo hi > /root/f")
    assert b.run("vm", "ssh", "a", "--", "hostname").stdout.strip() == "a"
    # several words are an argv that reaches the guest exactly, through sshd and its shell
    args = ["a b", "", "it's", "$HOME;x", "*"]
    r = b.run("vm", "ssh", "a", "--", "printf", "[%s]\\n", *args)
    assert r.stdout == "".join(f"[{a}]\n" for a in args)
    assert_npm_tools_work(b, "a", vm["ip"])

    b.run("vm", "stop", "a")
    assert b.json("vm", "show", "a")["state"] == "stopped"
    assert b.qemu_pids() == []
    # The daemon dies mid-start: the CLI exits 3 and says what state the restarted
    # daemon reports for the VM.
    starting = b.popen("vm", "start", "a")
    deadline = time.monotonic() + 120
    while not b.qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    lost_pid = b.daemon_pid()
    assert lost_pid is not None and b.qemu_pids()
    os.kill(lost_pid, signal.SIGKILL)
    _, stderr = starting.communicate(timeout=120)
    assert starting.returncode == 3, stderr
    ended = re.search(r"the banger daemon stopped during vm\.start a; a is now (\w+)", stderr)
    assert ended and ended.group(1) in ("running", "stopped"), stderr
    if ended.group(1) == "stopped":  # a start cut short is rolled back: start it again
        assert "`banger vm start a` boots it" in stderr
        b.run("vm", "start", "a")
    assert "Traceback" not in stderr
    wait_ssh(b, "a")
    assert b.run("vm", "ssh", "a", "--", "cat /root/f").stdout.strip() == "hi"
    # Private by default: nothing banger wrote is readable by group or others.
    loose = b.in_ns("find", str(b.home / "state"), str(b.home / "config"), "-perm", "/077")
    assert loose.strip() == ""

    # The guest outlives the daemon; a new daemon re-adopts it.
    pid = b.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    listed = {v["name"]: v for v in b.json("vm", "list")}
    assert listed["a"]["state"] == "running"
    assert b.daemon_pid() != pid
    assert b.run("vm", "ssh", "a", "--", "cat /root/f").stdout.strip() == "hi"

    # Artifacts in use are not removed behind a VM's back.
    for kind, name in (("image", "debian-bookworm"), ("kernel", "debian-6.1")):
        kept = b.run(kind, "rm", name, check=False)
        assert kept.returncode != 0 and "used by" in kept.stderr and "--force" in kept.stderr

    refused = b.run("vm", "delete", "a", check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr
    known_hosts = b.home / "state" / "known_hosts"
    assert vm["ip"] in known_hosts.read_text()  # recorded on first contact
    b.run("vm", "delete", "--force", "a")
    assert b.json("vm", "list") == []
    assert_nothing_left(b)
    assert known_hosts.read_text() == ""  # a reused address must not trip a key warning


HTTP_STATUS = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status, end="")
except Exception as exc:
    print(exc, end="")
"""


def assert_npm_tools_work(b: NsBanger, name: str, ip: str) -> None:
    """mise and opencode are on root's PATH and opencode's server answers the host on
    port 4096, or, when the image was built without the npm registry, `image show`
    says why."""
    tools = b.json("image", "show", "debian-bookworm")["info"]["tools"]
    if not all(t["installed"] for t in tools.values()):
        assert all(t["installed"] or t["skipped"] for t in tools.values())
        shown = b.run("image", "show", "debian-bookworm").stdout
        assert "skipped:" in shown
        return
    versions = b.run("vm", "ssh", name, "--", "mise --version; opencode --version").stdout
    assert versions.split()[0] == tools["mise"]["version"]
    assert versions.splitlines()[-1].strip() == tools["opencode"]["version"]
    # The server starts after SSH and the agent, at low priority: give it time under TCG.
    deadline = time.monotonic() + 180
    while True:
        res = netns.exec_in(
            b.ns, sys.executable, "-c", HTTP_STATUS, f"http://{ip}:4096/", check=False
        )
        if res.out == "200":
            break
        assert time.monotonic() < deadline, f"opencode server on {ip}:4096 never answered"
        time.sleep(2)
    ports = b.json("vm", "ports", name)
    assert 4096 in {p["port"] for p in ports["ports"]}


@pytest.mark.parametrize("stage", ["disks", "network", "boot"])
def test_failed_create_rolls_back_everything(b: NsBanger, stage: str) -> None:
    b.run("daemon", "start")
    sock = b.home / "run" / "bangerd.sock"
    assert sock.exists()
    from banger.client import Client
    from banger.paths import Paths

    paths = Paths(b.home / "config", b.home / "state", b.home / "data", b.home / "run")
    with Client(paths) as c:
        c._request("POST", "/v1/debug/fail-at", params={"stage": stage})
    res = b.run("vm", "create", "--name", "doomed", check=False)
    assert res.returncode != 0
    assert f"injected failure at stage `{stage}`" in res.stderr
    if stage == "boot":  # the hint names the failed create's logs, which still exist
        kept = re.search(r"kept in (\S+)", res.stderr)
        assert kept, res.stderr
        logs_dir = Path(kept.group(1))
        assert logs_dir.parent == b.home / "state" / "logs" / "failed"
        assert (logs_dir / "qemu.log").is_file()
    assert b.json("vm", "list") == []
    time.sleep(0.5)  # the killed QEMU is reaped by init
    assert_nothing_left(b)
    assert json.loads(b.run("daemon", "status", "--json").stdout)["running"] is True
