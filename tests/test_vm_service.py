"""The VM service in-process: what each engine is asked to boot, undo order, states,
`set` rules, vsock CIDs and re-adoption after a daemon restart. No root, no guest:
the harness (`tests/fakes.py`) records what a real daemon would have done."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.agent.client import AgentClient, AgentUnavailable
from banger.api.models import CreateVM, SetVM
from banger.engines.firecracker import VSOCK_SOCKET, ApiRequest, build_requests
from banger.engines.qemu import AGENT_SOCKET, build_argv
from banger.errors import BangerError, Conflict, InvalidInput
from banger.services.launch import ColdBoot, Identity, Restore
from banger.store import Store
from banger.store.migrations import MIGRATIONS
from banger.vm import VMRecord
from tests.fakes import FakeEngine, Harness, Injected, progress_log

CAPS = ["disks", "vsock", "network", "nat", "dns"]


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = Harness(monkeypatch)
    try:
        yield harness
    finally:
        harness.close()


# -- the guest config each engine receives ------------------------------------------------


async def test_firecracker_gets_the_whole_guest_and_a_hybrid_vsock_agent(h: Harness) -> None:
    vm = await h.create("devbox", vcpus=3, memory="512M")
    cfg = h.engine("firecracker").last
    run_dir = h.paths.vm_dir(vm.id) / "run"
    assert (cfg.name, cfg.vcpus, cfg.memory_mib) == ("devbox", 3, 512)
    assert cfg.kernel == h.artifacts.root / "vmlinux"
    assert cfg.initrd == h.artifacts.root / "initrd.img"
    assert [(d.drive_id, d.path.name, d.is_root) for d in cfg.drives] == [
        ("rootfs", "rootfs.ext4", True),
        ("work", "work.ext4", False),
    ]
    assert [(n.iface_id, n.tap, n.mac) for n in cfg.nics] == [("eth0", "tap-fake-0", vm.mac)]
    assert "ip=172.30.0.2::172.30.0.1:255.255.255.0:devbox:eth0:off:172.30.0.1" in cfg.cmdline
    assert "systemd.hostname=devbox" in cfg.cmdline
    assert (cfg.run_dir, cfg.console_log) == (run_dir, h.paths.vm_dir(vm.id) / "console.log")

    # The agent channel: a CID from the store, configured on Firecracker as /vsock,
    # and create waited for /healthz over exactly that channel.
    assert vm.vsock_cid is not None and vm.vsock_cid >= 3
    assert cfg.vsock_cid == vm.vsock_cid == h.row(vm.id)["vsock_cid"]  # type: ignore[index]
    uds = str(run_dir / VSOCK_SOCKET)
    assert ApiRequest("PUT", "/vsock", {"guest_cid": vm.vsock_cid, "uds_path": uds}) in (
        build_requests(cfg)
    )
    channel = {"transport": "hybrid-vsock", "path": uds, "cid": vm.vsock_cid}
    assert h.guest.agents == [channel]
    shown = vm.to_api(str(h.paths.vm_dir(vm.id)))
    assert (shown.state, shown.agent, shown.vsock_cid) == ("running", "hybrid-vsock", vm.vsock_cid)


async def test_qemu_with_vhost_vsock_gets_a_vsock_device_for_the_vms_cid(h: Harness) -> None:
    h.engines["qemu"] = FakeEngine.qemu(h.events, vhost_vsock=True)
    vm = await h.create("q1", engine="qemu")
    cfg = h.engine("qemu").last
    assert cfg.vsock_cid == vm.vsock_cid is not None
    argv = build_argv(cfg, qemu_bin="qemu", accel="tcg", vhost_vsock=True)
    assert f"vhost-vsock-device,guest-cid={vm.vsock_cid}" in argv
    assert h.guest.agents == [{"transport": "vsock", "cid": vm.vsock_cid}]
    assert vm.to_api("").agent == "vsock"


async def test_qemu_without_vhost_vsock_falls_back_to_virtio_serial(h: Harness) -> None:
    vm = await h.create("q2", engine="qemu")
    cfg = h.engine("qemu").last
    argv = build_argv(cfg, qemu_bin="qemu", accel="tcg", vhost_vsock=False)
    assert not any("vhost-vsock" in a for a in argv)
    assert "virtserialport,chardev=agent,name=banger.agent" in argv
    path = str(h.paths.vm_dir(vm.id) / "run" / AGENT_SOCKET)
    assert h.guest.agents == [{"transport": "virtio-serial", "path": path}]
    assert vm.to_api("").agent == "virtio-serial"


async def test_image_without_agent_does_not_wait_for_one(h: Harness) -> None:
    h.artifacts.agent = False
    await h.create("plain")
    assert h.guest.agents == []
    assert h.events[-1] == "ssh:plain"


# -- vsock CIDs --------------------------------------------------------------------------------


async def test_cids_are_unique_stable_across_stop_start_and_released_on_delete(
    h: Harness,
) -> None:
    a = await h.create("a")
    b = await h.create("b")
    assert len({a.vsock_cid, b.vsock_cid}) == 2
    await h.stop("a")
    assert h.cids()["a"] == a.vsock_cid  # a stopped VM keeps its CID
    await h.create("c")
    assert h.cids()["c"] not in (a.vsock_cid, b.vsock_cid)
    again = await h.start("a")
    assert again.vsock_cid == a.vsock_cid == h.engine().last.vsock_cid
    await h.delete("b", force=True)
    d = await h.create("d")
    assert d.vsock_cid == b.vsock_cid  # the deleted VM's CID is free again
    assert sorted(c for c in h.cids().values() if c is not None) == sorted(
        {a.vsock_cid, d.vsock_cid, h.cids()["c"]}  # type: ignore[arg-type]
    )


async def test_concurrent_creates_never_share_a_cid(h: Harness) -> None:
    vms = await asyncio.gather(*(h.create(f"p{i}") for i in range(6)))
    cids = [vm.vsock_cid for vm in vms]
    assert len(set(cids)) == 6 and None not in cids
    assert sorted(c.vsock_cid for c in h.engine().configs) == sorted(cids)  # type: ignore[type-var]


async def test_vm_from_before_cids_gets_one_on_its_next_start(h: Harness) -> None:
    vm = await h.create("old")
    await h.stop("old")
    h.store.update("vms", "id", vm.id, {"vsock_cid": None})  # as migration 2 leaves it
    started = await h.start("old")
    assert started.vsock_cid is not None
    assert h.cids()["old"] == started.vsock_cid == h.engine().last.vsock_cid
    assert h.guest.agents[-1]["cid"] == started.vsock_cid  # type: ignore[index]


def test_migration_adds_a_unique_cid_column_to_existing_vms(tmp_path: Path) -> None:
    db = tmp_path / "banger.db"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL);"
        + MIGRATIONS[0]
        + "INSERT INTO schema_version VALUES (1, 0);"
    )
    con.executemany(
        "INSERT INTO vms (id, name, state, image, kernel, engine, vcpus, memory_mib, "
        "disk_bytes, work_bytes, mac, created_at, updated_at) "
        "VALUES (?, ?, 'stopped', 'i', 'k', 'qemu', 1, 256, 1, 1, 'm', 0, 0)",
        [("id1", "one"), ("id2", "two")],
    )
    con.commit()
    con.close()
    store = Store(db)
    try:
        assert store.schema_version == len(MIGRATIONS)
        assert [VMRecord.from_row(r).vsock_cid for r in store.all("vms")] == [None, None]
        store.update("vms", "id", "id1", {"vsock_cid": 3})
        with pytest.raises(sqlite3.IntegrityError):
            store.update("vms", "id", "id2", {"vsock_cid": 3})
    finally:
        store.close()


# -- a failure at any stage undoes exactly what ran, in reverse ----------------------------


def _expected(failed_at: str) -> list[str]:
    """The event log of a create of `devbox` that fails at `failed_at`."""
    ran: list[str] = []
    undo: list[str] = []
    for cap in CAPS:
        undo.append(f"{cap}.destroy:devbox")
        ran.append(f"{cap}.prepare:devbox")
        if failed_at == f"{cap}.prepare":
            return ran + undo[::-1]
    for cap in CAPS:
        undo.append(f"{cap}.detach:devbox")
        ran.append(f"{cap}.attach:devbox")
        if failed_at == f"{cap}.attach":
            return ran + undo[::-1]
    ran.append("engine.start:devbox")
    if failed_at == "engine":
        return ran + undo[::-1]
    undo.append("engine.kill:devbox")
    ran.append("ssh:devbox")
    if failed_at == "ssh":
        return ran + undo[::-1]
    ran.append("agent:hybrid-vsock")
    return ran + undo[::-1]


STAGES = [f"{c}.{hook}" for hook in ("prepare", "attach") for c in CAPS] + [
    "engine",
    "ssh",
    "agent",
]


@pytest.mark.parametrize("stage", STAGES)
async def test_failed_create_undoes_everything_in_reverse(h: Harness, stage: str) -> None:
    keep = await h.create("keeper")  # another VM's resources must survive the rollback
    h.events.clear()
    if stage == "engine":
        h.engine().fail_start = Injected("engine would not start")
    elif stage == "ssh":
        h.guest.ssh_error = Injected("sshd never answered")
    elif stage == "agent":
        h.guest.agent_error = Injected("agent never answered")
    else:
        cap, hook = stage.split(".")
        h.fail(cap, hook)
    with pytest.raises(Injected):
        await h.create("devbox")
    assert h.events == _expected(stage)
    assert [r["name"] for r in h.store.all("vms")] == ["keeper"]
    assert [p.name for p in h.paths.vms_dir.iterdir()] == [keep.id]
    assert list(h.engine().alive.values()) == [h.engine().configs[0]]
    assert list(h.network.leases) == [keep.id] and list(h.network.taps) == [keep.id]
    assert h.cids() == {"keeper": keep.vsock_cid}


@pytest.mark.parametrize("stage", ["disks", "vsock", "network", "nat", "dns", "boot", "ssh"])
async def test_daemon_fault_point_after_each_stage_rolls_back(h: Harness, stage: str) -> None:
    """The stages the daemon's fail-at hook names: a failure right after each leaves
    no record, no process, no lease, no TAP and no CID."""
    h.fail_after = stage
    with pytest.raises(Injected, match=f"stage `{stage}`"):
        await h.create("devbox")
    assert h.stages[-1] == stage
    assert h.store.all("vms") == [] and h.cids() == {}
    assert h.engine().alive == {} and h.network.leases == {} and h.network.taps == {}
    assert not h.paths.vms_dir.exists() or list(h.paths.vms_dir.iterdir()) == []


async def test_create_with_no_agent_channel_rolls_back(h: Harness) -> None:
    """The bug this service once had: an agent image on an engine given no CID."""

    async def no_cid(vm: VMRecord, boot: object) -> None:
        return None

    h.caps["vsock"].inner.attach = no_cid
    with pytest.raises(AgentUnavailable, match="no guest agent channel"):
        await h.create("devbox")
    assert h.store.all("vms") == [] and h.engine().alive == {}


async def test_process_dying_during_boot_rolls_back(h: Harness) -> None:
    h.guest.on_ssh = h.engine().die
    with pytest.raises(BangerError, match="exited while waiting for SSH"):
        await h.create("devbox")
    assert h.store.all("vms") == []
    assert h.events[-len(CAPS) * 2 - 1 :][0] == "engine.kill:devbox"


async def test_cancelled_create_rolls_back(h: Harness) -> None:
    h.guest.ssh_error = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError):
        await h.create("devbox")
    assert h.events == _expected("ssh")
    assert h.store.all("vms") == [] and h.cids() == {}


# -- states -------------------------------------------------------------------------------------


async def test_state_is_creating_until_the_guest_answers_then_running(h: Harness) -> None:
    """A VM is `creating` until it is ready: a daemon killed before that removes it."""
    seen: list[tuple[str, str]] = []

    def spy(hook: str, vm: VMRecord) -> None:
        row = h.row(vm.id)
        seen.append((hook, row["state"] if row else "absent"))

    h.caps["dns"].spy = spy
    h.guest.on_ssh = lambda: seen.append(("ssh", h.row(vm_id())["state"]))  # type: ignore[index]

    def vm_id() -> str:
        return str(h.store.all("vms")[0]["id"])

    vm = await h.create("devbox")
    assert seen == [("prepare", "creating"), ("attach", "creating"), ("ssh", "creating")]
    row = h.row(vm.id)
    assert row is not None and row["state"] == "running" and row["handle"]["pid"] > 0
    assert set(vm.timings) >= {"image", "disks", "vsock", "network", "boot", "ssh", "total"}


async def test_stop_detaches_in_reverse_and_keeps_what_prepare_made(h: Harness) -> None:
    vm = await h.create("devbox")
    h.events.clear()
    stopped = await h.stop("devbox")
    assert h.events == ["engine.stop:devbox"] + [f"{c}.detach:devbox" for c in reversed(CAPS)]
    assert (stopped.state, stopped.handle, stopped.tap) == ("stopped", None, None)
    assert stopped.ip == vm.ip and stopped.vsock_cid == vm.vsock_cid
    assert stopped.to_api("").agent is None and stopped.to_api("").pid is None
    assert h.engine().alive == {}
    h.events.clear()
    assert (await h.stop("devbox")).state == "stopped"  # stopping a stopped VM: no-op
    assert h.events == []


async def test_forced_stop_kills(h: Harness) -> None:
    await h.create("devbox")
    h.events.clear()
    await h.stop("devbox", force=True)
    assert h.events[0] == "engine.kill:devbox"


async def test_failed_start_leaves_it_stopped_with_the_error_then_starts(h: Harness) -> None:
    await h.create("devbox")
    await h.stop("devbox")
    h.events.clear()
    h.guest.ssh_error = Injected("sshd never answered")
    with pytest.raises(Injected):
        await h.start("devbox")
    attaches = [f"{c}.attach:devbox" for c in CAPS]
    detaches = [f"{c}.detach:devbox" for c in reversed(CAPS)]
    boot = ["engine.start:devbox", "ssh:devbox", "engine.kill:devbox"]
    assert h.events == [*attaches, *boot, *detaches]
    vm = h.vms.get("devbox")
    assert (vm.state, vm.handle, vm.last_error) == ("stopped", None, "sshd never answered")
    h.guest.ssh_error = None
    vm = await h.start("devbox")
    assert (vm.state, vm.last_error) == ("running", None)
    n = len(h.engine().configs)
    assert (await h.start("devbox")).state == "running"  # already running: no second boot
    assert len(h.engine().configs) == n


async def test_delete_refuses_a_running_vm_unless_forced(h: Harness) -> None:
    vm = await h.create("devbox")
    with pytest.raises(Conflict, match="is running"):
        await h.delete("devbox")
    h.events.clear()
    assert await h.delete("devbox", force=True) == "devbox"
    detaches = [f"{c}.detach:devbox" for c in reversed(CAPS)]
    destroys = [f"{c}.destroy:devbox" for c in reversed(CAPS)]
    assert h.events == ["engine.kill:devbox", *detaches, *destroys]
    assert h.store.all("vms") == [] and not h.paths.vm_dir(vm.id).exists()
    assert h.network.leases == {} and h.cids() == {}


# -- set ------------------------------------------------------------------------------------------


async def test_set_sizes_only_while_stopped_and_next_boot_uses_them(h: Harness) -> None:
    await h.create("devbox", vcpus=1, memory="256M")
    for req in (SetVM(vcpus=2), SetVM(memory="1G")):
        with pytest.raises(Conflict, match="is running; changing vcpus or memory"):
            await h.vms.update("devbox", req)
    assert (h.vms.get("devbox").vcpus, h.vms.get("devbox").memory_mib) == (1, 256)
    await h.stop("devbox")
    await h.vms.update("devbox", SetVM(vcpus=4, memory="1G"))
    await h.start("devbox")
    assert (h.engine().last.vcpus, h.engine().last.memory_mib) == (4, 1024)


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (SetVM(vcpus=0), "out of range"),
        (SetVM(vcpus=33), "out of range"),
        (SetVM(memory="64M"), "too small"),
    ],
)
async def test_set_rejects_bad_sizes(h: Harness, req: SetVM, message: str) -> None:
    await h.create("devbox")
    await h.stop("devbox")
    with pytest.raises(InvalidInput, match=message):
        await h.vms.update("devbox", req)


async def test_set_nat_applies_live_and_is_saved_only_if_applied(h: Harness) -> None:
    await h.create("devbox")
    await h.vms.update("devbox", SetVM(nat=True))
    assert h.nat.applied == [("devbox", True)] and h.vms.get("devbox").nat is True
    h.nat.fail_apply = True
    with pytest.raises(Injected):
        await h.vms.update("devbox", SetVM(nat=False))
    assert h.vms.get("devbox").nat is True
    await h.stop("devbox")
    await h.vms.update("devbox", SetVM(nat=False))  # stopped: recorded, applied at next boot
    assert h.vms.get("devbox").nat is False and h.nat.applied == [("devbox", True)]


# -- a new daemon reconciles what the old one left -------------------------------------------


async def test_restart_readopts_running_releases_dead_and_removes_mid_create(
    h: Harness,
) -> None:
    alive = await h.create("alive")
    dead = await h.create("dead")
    mid = await h.create("mid")
    h.store.update("vms", "id", mid.id, {"state": "creating"})  # the daemon died mid-create
    h.engine().die(dead.engine_handle.pid)  # type: ignore[union-attr]

    await h.restart()

    by_name = {r["name"]: VMRecord.from_row(r) for r in h.store.all("vms")}
    assert set(by_name) == {"alive", "dead"}
    assert by_name["alive"].state == "running" and by_name["alive"].handle == alive.handle
    assert by_name["dead"].state == "stopped" and by_name["dead"].handle is None
    assert by_name["dead"].vsock_cid == dead.vsock_cid  # stopped, not deleted
    assert h.cids() == {"alive": alive.vsock_cid, "dead": dead.vsock_cid}
    assert not any(e.endswith(":alive") for e in h.events)  # the live VM is left alone
    assert [e for e in h.events if e.endswith(":dead")] == [
        f"{c}.detach:dead" for c in reversed(CAPS)
    ]
    assert h.events.index("engine.kill:mid") < h.events.index("dns.detach:mid")
    assert {e for e in h.events if e.endswith(":mid")} == {
        "engine.kill:mid",
        *(f"{c}.{hook}:mid" for c in CAPS for hook in ("detach", "destroy")),
    }
    assert not h.paths.vm_dir(mid.id).exists() and mid.id not in h.network.leases

    # The re-adopted VM is still controlled by the new daemon.
    await h.stop("alive")
    assert h.engine().alive == {}
    assert ("stop", alive.engine_handle.pid) in h.engine().stops  # type: ignore[union-attr]
    # And the dead one starts again with its CID.
    assert (await h.start("dead")).vsock_cid == dead.vsock_cid


# -- launch strategies: a create that restores instead of booting -----------------------------


class FakeGolden:
    """Offers one saved machine to every create (as `GoldenSnapshots.choose` would)."""

    def __init__(self, root: Path, known_hosts: Path) -> None:
        self.rootfs = root / "golden-rootfs.ext4"
        self.rootfs.write_bytes(b"golden")
        self.state = object()
        self.identity = Identity(known_hosts, "ssh-ed25519 AAAAuser", mount_work=True)
        self.built: list[str] = []

    def choose(self, vm: VMRecord, image: Any, kernel: Any, *, cold: bool) -> Any:
        if cold:
            return ColdBoot(image.rootfs), "shape"
        return Restore(self.state, self.rootfs, self.identity, "golden"), "shape"  # type: ignore[arg-type]

    def build_later(self, shape: Any, ready: Any) -> None:
        self.built.append(shape)
        ready(self.rootfs)  # as if built at once: the capabilities get ready for it

    async def reclaim(self) -> None:
        return None


@pytest.fixture
def warm(h: Harness, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []

    async def call(self: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/start-held":  # after SSH answered: what the golden boot held back
            assert bodies and bodies[-1]["hold"] is True
            h.events.append("agent.start-held")
            return {"ok": True}
        assert path == "/identity"
        bodies.append(body)
        h.events.append("agent.identity")
        return {"ok": True, "applied": ["hostname"], "held": body.get("hold", False)}

    monkeypatch.setattr(AgentClient, "act", call)
    h.vms.golden = FakeGolden(h.root, h.paths.known_hosts)  # type: ignore[assignment]
    return bodies


async def test_warm_create_restores_then_applies_its_own_identity(
    h: Harness, warm: list[dict[str, Any]]
) -> None:
    h.default_engine = "qemu"
    golden = h.vms.golden
    assert isinstance(golden, FakeGolden)
    a = await h.create("a", engine="qemu")
    b = await h.create("b", engine="qemu")
    eng = h.engine("qemu")
    assert eng.restored == [golden.state, golden.state]
    assert [e for e in h.events if e.startswith(("engine.", "agent."))] == [
        "engine.restore:a", "agent.identity", "agent.start-held",
        "engine.restore:b", "agent.identity", "agent.start-held",
    ]  # fmt: skip
    # The disks capability cloned the snapshot's rootfs, not the image's.
    assert [s for s, _ in h.progress if s in ("boot", "restore", "identity")] == [
        "restore", "identity", "restore", "identity"
    ]  # fmt: skip
    for vm in (a, b):
        assert {"restore", "identity", "ssh"} <= set(vm.timings) and "boot" not in vm.timings
    # Never shared: each restore got its own name, address, MAC, machine-id, host key.
    for key in ("hostname", "ip", "mac", "machine_id", "host_key", "host_key_pub"):
        assert warm[0][key] != warm[1][key], key
    assert (warm[0]["hostname"], warm[0]["ip"], warm[0]["mac"]) == ("a", a.ip, a.mac)
    assert warm[0]["gateway"] == "172.30.0.1" and warm[0]["dns"] == ["172.30.0.1"]
    assert warm[0]["work_device"] == "/dev/vdb" and warm[0]["work_bytes"] == a.work_bytes
    assert abs(warm[0]["time"] - time.time()) < 60
    # banger's known_hosts trusts exactly the key it handed each guest.
    known = h.paths.known_hosts.read_text().splitlines()
    assert f"{a.ip},a,a.vm {warm[0]['host_key_pub']}" in known
    assert f"{b.ip},b,b.vm {warm[1]['host_key_pub']}" in known
    assert golden.built == []  # restored creates build nothing


async def test_cold_flag_boots_and_a_cold_create_builds_the_golden_snapshot(
    h: Harness, warm: list[dict[str, Any]]
) -> None:
    vm = await h.create("c", engine="qemu", cold=True)
    assert h.engine("qemu").restored == [None] and "boot" in vm.timings
    assert warm == []
    golden = h.vms.golden
    assert isinstance(golden, FakeGolden) and golden.built == ["shape"]


async def test_a_failed_identity_rolls_the_restore_back(
    h: Harness, warm: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(self: Any, path: str, body: dict[str, Any]) -> None:
        raise BangerError("guest agent answered /identity with 500: boom")

    monkeypatch.setattr(AgentClient, "act", refuse)
    with pytest.raises(BangerError, match="boom"):
        await h.create("d", engine="qemu")
    assert h.vms.all() == [] and h.engine("qemu").alive == {}
    assert not list(h.paths.vms_dir.iterdir())
    assert "d.vm" not in (h.paths.known_hosts.read_text() if h.paths.known_hosts.exists() else "")


async def test_a_build_vm_is_marked_and_removed_by_the_next_daemon_in_any_state(
    h: Harness,
) -> None:
    """An image build's VM (its `purpose` set) cannot outlive the build: a daemon that
    died mid-build leaves it running or stopped, and the next one removes it whole."""
    mine = await h.create("mine")
    running = await h.vms.create(
        CreateVM(name="imgbuild-a"), progress_log(h.progress), purpose="image-build:dev"
    )
    stopped = await h.vms.create(
        CreateVM(name="imgbuild-b"), progress_log(h.progress), purpose="image-build:dev2"
    )
    await h.stop("imgbuild-b")
    assert VMRecord.from_row(h.row(running.id) or {}).purpose == "image-build:dev"

    await h.restart()

    assert [r["name"] for r in h.store.all("vms")] == ["mine"]
    assert h.row(mine.id) is not None and h.row(mine.id)["state"] == "running"  # type: ignore[index]
    for vm in (running, stopped):
        assert {f"{c}.destroy:{vm.name}" for c in CAPS} <= set(h.events)
        assert not h.paths.vm_dir(vm.id).exists() and vm.id not in h.network.leases
    assert h.engine().alive.keys() == {mine.engine_handle.pid}  # type: ignore[union-attr]
