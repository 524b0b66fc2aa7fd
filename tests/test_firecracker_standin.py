"""The stand-in `firecracker` (tests/standin) behaves like Firecracker where banger can
see it, without booting: its machine maps onto the QEMU guest the way Firecracker
boots it, its hybrid vsock speaks Firecracker's handshake and relays the guest
agent's bytes unchanged, and `--config-file` is validated like the API.

The guest it boots with QEMU is exercised end to end in test_firecracker_e2e.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.agent import guest
from banger.agent.client import AgentClient, close_sessions
from banger.engines import process
from banger.engines.firecracker import FirecrackerEngine
from banger.engines.firecracker_vsock import open_hybrid_vsock
from banger.engines.guest_config import build_guest_config
from banger.engines.qemu import build_argv
from banger.errors import CommandFailed
from tests.fake_firecracker import SERIAL_BOOT_LINE, StandIn
from tests.test_agent import Agent, Bridge

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "standin" / "firecracker"


@pytest.fixture
def standin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{STANDIN.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_FC_GUEST", "none")


@pytest.fixture
def agent() -> Iterator[Agent]:
    a = Agent()
    yield a
    a.close()


def _files(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("vmlinux", "initrd.img", "rootfs.ext4", "work.ext4"):
        (d / name).write_bytes(b"\0" * 512)
        out[name] = d / name
    return out


def test_found_on_path_and_needs_no_kvm(standin_on_path: None) -> None:
    avail = FirecrackerEngine().availability()
    assert avail.ok, avail.detail
    assert avail.detail == "firecracker v1.16.1 (banger test stand-in: boots with QEMU)"


async def test_machine_maps_onto_qemu_like_firecracker_boots_it(tmp_path: Path) -> None:
    f = _files(tmp_path)
    fc = StandIn("vm-1", tmp_path / "run", None, guest=False)
    puts: list[tuple[str, dict[str, Any]]] = [
        ("/machine-config", {"vcpu_count": 3, "mem_size_mib": 384}),
        ("/boot-source", {"kernel_image_path": str(f["vmlinux"]),
                          "initrd_path": str(f["initrd.img"]), "boot_args": "console=ttyS0"}),
        # The work drive is PUT first; Firecracker still makes the root device vda.
        ("/drives/work", {"drive_id": "work", "path_on_host": str(f["work.ext4"]),
                          "is_root_device": False, "is_read_only": True}),
        ("/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(f["rootfs.ext4"]),
                            "is_root_device": True}),
        ("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap-pool-3",
                                      "guest_mac": "02:aa:bb:cc:dd:ee"}),
    ]  # fmt: skip
    for path, body in puts:
        assert await fc.dispatch("PUT", path, body) == (204, None)
    cfg = fc.guest_config()
    assert [(d.drive_id, d.read_only) for d in cfg.drives] == [("rootfs", False), ("work", True)]
    assert cfg.cmdline == "console=ttyS0 root=/dev/vda rw"  # as Firecracker appends it
    argv = build_argv(cfg, qemu_bin="qemu", accel="tcg", vhost_vsock=False)
    assert argv[argv.index("-kernel") + 1] == str(f["vmlinux"])
    assert argv[argv.index("-initrd") + 1] == str(f["initrd.img"])
    assert argv[argv.index("-append") + 1] == cfg.cmdline
    assert (argv[argv.index("-smp") + 1], argv[argv.index("-m") + 1]) == ("3", "384M")
    blk = [a for a in argv if a.startswith("virtio-blk-device")]
    assert blk == ["virtio-blk-device,drive=rootfs,serial=rootfs",
                   "virtio-blk-device,drive=work,serial=work"]  # fmt: skip
    assert "tap,id=eth0,ifname=tap-pool-3,script=no,downscript=no" in argv
    assert "virtio-net-device,netdev=eth0,mac=02:aa:bb:cc:dd:ee" in argv
    assert "virtserialport,chardev=agent,name=banger.agent" in argv
    assert "file,id=console,path=/dev/stdout,append=on" in argv  # serial console = stdout


async def test_api_rejects_what_firecracker_rejects(tmp_path: Path) -> None:
    f = _files(tmp_path)
    fc = StandIn("vm-1", tmp_path / "run", None, guest=False)
    status, body = await fc.dispatch("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/v",
                                                       "vsock_id": "v", "cid": 3})  # fmt: skip
    assert status == 400 and "'cid' was unexpected" in body["fault_message"]
    status, body = await fc.dispatch("PUT", "/actions", {"action_type": "InstanceStart"})
    assert (status, body) == (400, {"fault_message": "Cannot start microvm without kernel "
                                                     "configuration."})  # fmt: skip
    status, body = await fc.dispatch("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert status == 400 and "before starting" in body["fault_message"]
    status, body = await fc.dispatch("PATCH", "/vm", {"state": "Paused"})
    assert status == 400 and "before starting" in body["fault_message"]
    await fc.dispatch("PUT", "/boot-source", {"kernel_image_path": str(f["vmlinux"])})
    assert await fc.dispatch("PUT", "/actions", {"action_type": "InstanceStart"}) == (204, None)
    status, body = await fc.dispatch("PUT", "/machine-config",
                                     {"vcpu_count": 1, "mem_size_mib": 256})  # fmt: skip
    assert status == 400 and "after starting" in body["fault_message"]
    assert (await fc.dispatch("GET", "/", None))[1]["state"] == "Running"
    assert await fc.dispatch("PATCH", "/vm", {"state": "Paused"}) == (204, None)
    assert (await fc.dispatch("GET", "/", None))[1]["state"] == "Paused"
    status, body = await fc.dispatch("PATCH", "/vm", {"state": "Frozen"})
    assert status == 400 and "is not one of ['Paused', 'Resumed']" in body["fault_message"]
    assert await fc.dispatch("PATCH", "/vm", {"state": "Resumed"}) == (204, None)
    assert (await fc.dispatch("GET", "/", None))[1]["state"] == "Running"
    status, body = await fc.dispatch("PUT", "/snapshot/create",
                                     {"snapshot_path": "/s", "mem_file_path": "/m"})  # fmt: skip
    assert status == 400 and "must be paused" in body["fault_message"]
    status, body = await fc.dispatch("PUT", "/snapshot/load", {"snapshot_path": "/s",
                                                               "mem_file_path": "/m"})  # fmt: skip
    assert status == 400 and "not allowed after configuring" in body["fault_message"]
    status, body = await fc.dispatch("PUT", "/balloon", {"amount_mib": 1,
                                                         "deflate_on_oom": False})  # fmt: skip
    assert status == 400 and "not implemented by the banger stand-in" in body["fault_message"]


async def test_hybrid_vsock_handshake_and_transparent_relay(
    standin_on_path: None, agent: Agent, tmp_path: Path
) -> None:
    """Through the stand-in, the real host client reaches the real guest agent: the
    stand-in answers `CONNECT 1024` with `OK <port>` and passes the bytes through."""
    f = _files(tmp_path)
    run_dir = Path(f"/tmp/fcsi-{os.getpid()}")  # short: UNIX socket paths
    cfg = build_guest_config(
        vm_id="0123abcd", name="devbox", kernel=f["vmlinux"], initrd=None,
        rootfs=f["rootfs.ext4"], work_disk=None, vcpus=1, memory_mib=128,
        run_dir=run_dir, vsock_cid=7,
    )  # fmt: skip
    run_dir.mkdir(exist_ok=True)
    engine = FirecrackerEngine()
    try:
        # What QEMU's virtio-serial chardev is for a booted guest.
        async with Bridge(agent, run_dir / "agent.sock") as serial:
            handle = await engine.start(cfg)
            try:
                channel = handle.extra["agent"]
                assert channel == {"transport": "hybrid-vsock", "cid": 7,
                                   "path": str(run_dir / "vsock.sock")}  # fmt: skip
                reader, writer = await open_hybrid_vsock(Path(channel["path"]), 1024)
                writer.write(b"GET /healthz HTTP/1.1\r\nX-Request-Id: raw1\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200") and b"X-Request-Id: raw1" in head
                writer.close()
                client = AgentClient(channel, timeout=10)
                results = await asyncio.gather(*(client.healthz() for _ in range(3)))
                assert all(r["ok"] is True for r in results)
                assert (await client.info())["agent_version"] == guest.AGENT_VERSION
                stream, _ = await client.open({"kind": "exec", "argv": ["echo", "relayed"]})
                ev = await asyncio.wait_for(stream.next_event(), 10)
                assert (ev.kind, ev.data) == ("stdout", b"relayed\n")
                # the raw request, then one multiplexed session for every later call
                assert serial.connections == 2
                await close_sessions()
                # Nothing listens on another port: closed without a reply.
                with pytest.raises(CommandFailed, match="refused"):
                    await open_hybrid_vsock(Path(channel["path"]), 52)
                assert SERIAL_BOOT_LINE in cfg.console_log.read_text()
            finally:
                await engine.stop(handle, timeout=5)
                assert not engine.is_running(handle)
                process.kill(handle.pid, handle.start_time)
    finally:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)


def _run_standin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STANDIN), *args],
        env={**os.environ, "FAKE_FC_GUEST": "none", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_file_is_validated_like_the_api(tmp_path: Path) -> None:
    f = _files(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"boot-source": {"kernel_image_path": str(f["vmlinux"]),
                                               "kernel_args": "x"}}))  # fmt: skip
    res = _run_standin("--no-api", "--config-file", str(bad))
    assert res.returncode == 1
    assert "invalid configuration file" in res.stderr and "'kernel_args' was unexpected" in (
        res.stderr
    )
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"boot-source": {"kernel_image_path": "/nope/vmlinux"}}))
    res = _run_standin("--no-api", "--config-file", str(missing))
    assert res.returncode == 1 and "kernel_image_path /nope/vmlinux" in res.stderr


def test_config_file_boots_at_once(tmp_path: Path) -> None:
    f = _files(tmp_path)
    good = tmp_path / "vm.json"
    good.write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(f["vmlinux"]), "boot_args": "console=ttyS0"},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(f["rootfs.ext4"]),
                    "is_root_device": True}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }))  # fmt: skip
    proc = subprocess.Popen(
        [str(STANDIN), "--no-api", "--config-file", str(good)],
        env={**os.environ, "FAKE_FC_GUEST": "none"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == SERIAL_BOOT_LINE  # started without the API
        proc.terminate()
        assert proc.wait(10) != 0
    finally:
        proc.kill()
        proc.wait()


def test_version_and_usage_match_firecracker() -> None:
    res = _run_standin("--version")
    assert res.returncode == 0 and res.stdout.startswith("Firecracker v1.16.1")
    res = _run_standin("--no-api")
    assert res.returncode != 0 and "--config-file" in res.stderr
