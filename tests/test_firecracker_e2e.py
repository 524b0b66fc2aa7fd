"""Firecracker end to end, with the stand-in `firecracker` first on PATH.

banger runs with `engine = "firecracker"`; its Firecracker engine configures the VM
over the API socket (every request validated against the upstream contract by the
stand-in, which records them), and the stand-in boots that machine with QEMU. One
boot sequence, inside a network namespace the test creates, walks what a user does:
create, ssh, health over hybrid vsock, ports, a warm create restoring the golden
snapshot the first create made (`PUT /snapshot/create` and `/snapshot/load`), a named
snapshot of the running VM and a fork of it (`/snapshot/load` with the fork's own TAP
and vsock socket), suspend and resume, stop, start, a daemon kill -9 with
re-adoption, delete, and checks that nothing is left.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.test_vm_lifecycle import assert_nothing_left
from tests.vmkit import NsBanger, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]

STANDIN_DIR = Path(__file__).resolve().parent / "standin"


def standin_pids(home: Path) -> list[int]:
    """Stand-in `firecracker` processes serving a socket under `home`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "tests.fake_firecracker" in cmd and str(home) in cmd:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def fb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsBanger]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    with private_home() as b:
        b.env["PATH"] = f"{STANDIN_DIR}{os.pathsep}{b.env['PATH']}"
        b.env["BANGER_ENGINE"] = "firecracker"
        b.env["BANGER_WARM_CREATE"] = "1"  # the first create makes a golden snapshot
        b.env["FAKE_FC_RECORD"] = str(b.home / "fc-requests.jsonl")
        try:
            yield b
        finally:
            for pid in standin_pids(b.home):
                os.kill(pid, signal.SIGKILL)


def _ssh(b: NsBanger, cmd: str, name: str = "f") -> str:
    return b.run("vm", "ssh", name, "--", cmd).stdout.strip()


GOLDEN_WAIT = 900.0  # the golden boot runs in the background, under TCG on a busy host


def warm_create(b: NsBanger, f: dict[str, Any]) -> None:
    """The first create built the shape's golden snapshot through `PUT
    /snapshot/create`; the next restores it (`PUT /snapshot/load` with this VM's TAP
    and vsock socket, its own disks by `PATCH /drives`) and gets its own identity."""
    golden = b.paths.state_dir / "golden"
    deadline = time.monotonic() + GOLDEN_WAIT
    while not any(golden.glob("*/golden.json")):
        assert time.monotonic() < deadline, f"no golden snapshot in {golden}"
        time.sleep(1)
    (state,) = golden.glob("*/state")
    assert sorted(p.name for p in state.iterdir()) == ["memory", "state.json", "vmstate"]
    record = b.home / "fc-requests.jsonl"
    record.unlink()

    g = b.json("vm", "create", "--name", "g", "--memory", "512M", "--work-size", "3G")
    assert g["engine"] == "firecracker" and {"restore", "identity"} <= set(g["timings"])
    assert "boot" not in g["timings"]
    reqs = [json.loads(line) for line in record.read_text().splitlines()]
    assert all(r["status"] < 300 for r in reqs), [r for r in reqs if r["status"] >= 300]
    load = next(r["body"] for r in reqs if r["path"] == "/snapshot/load")
    run_dir = Path(g["dir"]) / "run"
    assert load["network_overrides"] == [{"iface_id": "eth0", "host_dev_name": g["tap"]}]
    assert load["vsock_override"] == {"uds_path": str(run_dir / "vsock.sock")}
    assert load["mem_backend"]["backend_path"] == str(state / "memory")
    moved = {r["body"]["drive_id"]: r["body"]["path_on_host"] for r in reqs
             if r["method"] == "PATCH" and r["path"].startswith("/drives/")}  # fmt: skip
    assert moved["rootfs"].startswith(g["dir"]) and moved["work"].startswith(g["dir"])

    # Its own identity, and /root is its own work disk at its own size.
    assert _ssh(b, "hostname; cat /sys/class/net/eth0/address", "g").split() == ["g", g["mac"]]
    assert _ssh(b, "cat /etc/machine-id", "g") != _ssh(b, "cat /etc/machine-id")
    assert _ssh(b, "test -e /root/f && echo shared || echo own", "g") == "own"
    size = int(_ssh(b, "df -B1 --output=size /root | tail -1", "g"))
    assert 2.5 * 2**30 < size <= 3 * 2**30
    health = b.json("vm", "health", "g")
    assert health["healthy"] is True and health["info"]["hostname"] == "g"
    b.run("vm", "delete", "--force", "g")


def _requests(b: NsBanger) -> list[dict[str, Any]]:
    """The API requests recorded since the last `_requests` (all accepted)."""
    record = b.home / "fc-requests.jsonl"
    reqs = [json.loads(line) for line in record.read_text().splitlines()]
    record.unlink()
    assert all(r["status"] < 300 for r in reqs), [r for r in reqs if r["status"] >= 300]
    return reqs


FACTS = (
    "hostname; cat /sys/class/net/eth0/address; cat /etc/machine-id;"
    " cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub;"
    " ip -4 -o addr show dev eth0 | awk '{print $4}'"
)


def snapshot_and_fork(b: NsBanger, f: dict[str, Any]) -> None:
    """`vm snapshot f --as s1` pauses f (`PATCH /vm`), `PUT /snapshot/create`, copies
    both disks and lets f run on; `vm create --from s1` loads s1 into a new
    Firecracker with the fork's own TAP (`network_overrides`) and vsock socket
    (`vsock_override`), moves the drives to its own copies before the guest runs,
    and the agent's `/identity` makes it a VM of its own."""
    _ssh(b, "tmux new -d -s s 'sleep 1000'; echo as-of-s1 > /root/snap; sync")
    (b.home / "fc-requests.jsonl").unlink(missing_ok=True)
    assert "snapshot s1 of f" in b.run("vm", "snapshot", "f", "--as", "s1", timeout=600).stdout
    snap = b.json("snapshot", "show", "s1")
    state = Path(snap["dir"]) / "state"
    reqs = [(r["method"], r["path"], r["body"]) for r in _requests(b)]
    assert reqs == [
        ("PATCH", "/vm", {"state": "Paused"}),
        ("PUT", "/snapshot/create", {"snapshot_type": "Full",
                                     "snapshot_path": str(state / "vmstate"),
                                     "mem_file_path": str(state / "memory")}),
        ("PATCH", "/vm", {"state": "Resumed"}),
    ]  # fmt: skip
    assert b.json("vm", "show", "f")["state"] == "running"
    _ssh(b, "echo later > /root/snap; sync")

    c = b.json("vm", "create", "--from", "s1", "--name", "c")
    try:
        assert c["engine"] == "firecracker" and c["state"] == "running"
        assert {"restore", "identity"} <= set(c["timings"]) and "boot" not in c["timings"]
        reqs = _requests(b)
        load = next(r["body"] for r in reqs if r["path"] == "/snapshot/load")
        c_run = Path(c["dir"]) / "run"
        assert load["snapshot_path"] == str(state / "vmstate")
        assert load["network_overrides"] == [{"iface_id": "eth0", "host_dev_name": c["tap"]}]
        assert c["tap"] != b.json("vm", "show", "f")["tap"]
        # The guest keeps the CID saved in s1 (VsockOverride has only uds_path); the
        # record holds the one reserved for c's next cold boot, never f's.
        assert c["vsock_cid"] not in (None, f["vsock_cid"])
        assert load["vsock_override"] == {"uds_path": str(c_run / "vsock.sock")}
        assert load["resume_vm"] is False  # the drives move first
        moved = {r["body"]["drive_id"]: r["body"]["path_on_host"] for r in reqs
                 if r["method"] == "PATCH" and r["path"].startswith("/drives/")}  # fmt: skip
        assert set(moved) == {"rootfs", "work"}
        assert all(p.startswith(c["dir"] + "/") for p in moved.values()), moved

        # f's files and processes as of s1, not the later write.
        assert _ssh(b, "cat /root/snap", "c") == "as-of-s1"
        assert _ssh(b, "cat /root/snap") == "later"
        assert _ssh(b, "tmux has-session -t s && echo yes", "c") == "yes"
        # Its own identity; banger's known_hosts holds both keys (strict checking).
        ff, fc = _ssh(b, FACTS).split(), _ssh(b, FACTS, "c").split()
        assert fc[0] == "c" and fc[1] == c["mac"] and fc[4].split("/")[0] == c["ip"]
        assert ff[0] == "f" and ff[1] == f["mac"] and ff[4].split("/")[0] == f["ip"]
        for i, what in enumerate(("hostname", "MAC", "machine-id", "host key", "address")):
            assert ff[i] != fc[i], what
        known = (b.home / "state" / "known_hosts").read_text()
        assert ff[3] in known and fc[3] in known
        # Each agent behind its own socket answers as its own VM.
        hc, hf = b.json("vm", "health", "c"), b.json("vm", "health", "f")
        assert (hc["info"]["hostname"], hf["info"]["hostname"]) == ("c", "f")
        assert hc["transport"] == f"hybrid-vsock {c_run / 'vsock.sock'}"
        _ssh(b, f"ping -c 1 -W 5 {c['ip']}")
        _ssh(b, f"ping -c 1 -W 5 {f['ip']}", "c")
    finally:
        b.run("vm", "delete", "--force", "c")
    assert "s1 removed" in b.run("snapshot", "rm", "s1").stdout


def suspend_and_resume(b: NsBanger) -> None:
    """`vm suspend f` snapshots it into its own directory and ends Firecracker; `vm
    start f` loads it back (`resume_vm`: same drives): the tmux session started
    before (in `snapshot_and_fork`) is still there and uptime kept counting."""
    sleep_pid = _ssh(b, "pgrep -f 'sleep 1000'")
    up_before = float(_ssh(b, "cut -d' ' -f1 /proc/uptime"))
    (b.home / "fc-requests.jsonl").unlink(missing_ok=True)
    assert "f suspended" in b.run("vm", "suspend", "f", timeout=600).stdout
    vm = b.json("vm", "show", "f")
    state = Path(vm["dir"]) / "state"
    assert vm["state"] == "suspended" and standin_pids(b.home) == []
    assert sorted(p.name for p in state.iterdir()) == ["memory", "state.json", "vmstate"]
    assert [r["path"] for r in _requests(b)] == ["/vm", "/snapshot/create"]

    assert "f resumed" in b.run("vm", "start", "f", timeout=600).stdout
    load = next(r["body"] for r in _requests(b) if r["path"] == "/snapshot/load")
    assert load["resume_vm"] is True and load["snapshot_path"] == str(state / "vmstate")
    assert not state.exists()  # the guest ran on: the state is stale and gone
    assert _ssh(b, "tmux has-session -t s && echo yes") == "yes"
    assert _ssh(b, "pgrep -f 'sleep 1000'") == sleep_pid
    assert float(_ssh(b, "cut -d' ' -f1 /proc/uptime")) > up_before
    assert b.json("vm", "health", "f")["info"]["hostname"] == "f"


def _cid_moved(b: NsBanger, cid: int) -> bool:
    return f"vsock CID {cid} is in use on this host" in b.paths.daemon_log.read_text()


def test_firecracker_lifecycle_through_the_standin(fb: NsBanger) -> None:
    b = fb
    doctor = b.run("doctor", check=False).stdout
    assert "banger test stand-in" in doctor

    vm = b.json("vm", "create", "--name", "f", "--memory", "512M")
    assert (vm["state"], vm["engine"], vm["agent"]) == ("running", "firecracker", "hybrid-vsock")
    assert vm["vsock_cid"] >= 3 and "agent" in vm["timings"]
    run_dir = Path(vm["dir"]) / "run"

    # Configured through the API only, every request accepted by the contract.
    reqs = [json.loads(line) for line in (b.home / "fc-requests.jsonl").read_text().splitlines()]
    assert all(r["status"] < 300 for r in reqs), [r for r in reqs if r["status"] >= 300]
    assert [r["path"] for r in reqs][-3:] == ["/network-interfaces/eth0", "/vsock", "/actions"]
    vsock = next(r["body"] for r in reqs if r["path"] == "/vsock")
    assert vsock == {"guest_cid": vm["vsock_cid"], "uds_path": str(run_dir / "vsock.sock")}
    boot_args = next(r["body"]["boot_args"] for r in reqs if r["path"] == "/boot-source")

    # The guest is the machine Firecracker was given: command line, drives, NIC.
    assert _ssh(b, "cat /proc/cmdline").startswith(boot_args)
    assert _ssh(b, "findmnt -no SOURCE /; findmnt -no SOURCE /root").split() == [
        "/dev/vda",
        "/dev/vdb",
    ]
    assert _ssh(b, "cat /sys/class/net/eth0/address") == vm["mac"]
    kernel = _ssh(b, "uname -r")

    health = b.json("vm", "health", "f")
    assert health["healthy"] is True and health["info"]["hostname"] == "f"
    assert health["info"]["kernel"].startswith(kernel)
    assert health["transport"] == f"hybrid-vsock {run_dir / 'vsock.sock'}"
    ports = b.json("vm", "ports", "f")["ports"]
    assert 22 in [p["port"] for p in ports]

    _ssh(b, "echo kept > /root/f")
    # The serial console is Firecracker's stdout: the console log has the guest boot.
    assert "Linux version" in (Path(vm["dir"]) / "console.log").read_text(errors="replace")

    warm_create(b, vm)
    snapshot_and_fork(b, vm)
    suspend_and_resume(b)

    # f keeps its CID through suspend and resume, unless another daemon's VM on this
    # host took it meanwhile (CIDs are host-wide; other test runs may share the
    # machine), which the daemon logs.
    cid = b.json("vm", "show", "f")["vsock_cid"]
    assert cid == vm["vsock_cid"] or _cid_moved(b, vm["vsock_cid"])
    b.run("vm", "stop", "f")
    stopped = b.json("vm", "show", "f")
    assert (stopped["state"], stopped["agent"], stopped["vsock_cid"]) == ("stopped", None, cid)
    assert b.qemu_pids() == [] and standin_pids(b.home) == []
    assert "guest exited (qemu status 0)" in (run_dir / "firecracker.log").read_text()

    b.run("vm", "start", "f")
    started = b.json("vm", "show", "f")
    assert started["state"] == "running"
    assert started["vsock_cid"] == cid or _cid_moved(b, cid)  # as above
    assert _ssh(b, "cat /root/f") == "kept"

    # The VM outlives the daemon; a new daemon re-adopts it, hybrid vsock included.
    pid = b.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    listed = {v["name"]: v for v in b.json("vm", "list")}
    assert listed["f"]["state"] == "running" and b.daemon_pid() != pid
    assert b.json("vm", "health", "f")["healthy"] is True
    assert _ssh(b, "cat /root/f") == "kept"

    b.run("vm", "delete", "--force", "f")
    assert b.json("vm", "list") == []
    time.sleep(0.3)
    assert standin_pids(b.home) == []
    assert_nothing_left(b)
