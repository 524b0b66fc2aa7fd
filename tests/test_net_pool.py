"""The warm TAP pool against real devices, inside a throwaway namespace."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from banger.errors import InvalidInput, NotFound
from banger.net.bridge import ensure_bridge
from banger.net.pool import TapPool
from banger.net.tap import create_tap, list_taps, tap_exists
from banger.system.run import die_with_parent
from tests import netns

pytestmark = [pytest.mark.netns, netns.skip_unless_netns()]


@pytest.fixture
def ns() -> Iterator[str]:
    with netns.namespace() as name:
        ensure_bridge("banger0", netns=name)
        yield name


def _devices(ns: str) -> list[str]:
    return [t.name for t in list_taps("tap-pool-", netns=ns)]


def test_refill_keeps_n_warm_and_acquire_takes_a_ready_tap(ns: str) -> None:
    pool = TapPool("banger0", size=3, netns=ns)
    assert pool.refill() == 3
    assert pool.refill() == 0
    assert pool.idle == ["tap-pool-0", "tap-pool-1", "tap-pool-2"]
    assert all(t.master == "banger0" and t.up for t in list_taps("tap-pool-", netns=ns))

    # A warm lease hands out a TAP that already exists (no device is made on the
    # create path); its speed is measured by bench-create, not asserted here.
    lease = pool.lease()
    assert not lease.cold
    assert lease.name == "tap-pool-0" and len(_devices(ns)) == 3
    assert pool.busy == {lease.name}
    assert pool.refill() == 1  # back to three idle
    assert len(pool.idle) == 3 and len(_devices(ns)) == 4


def test_close_deletes_the_idle_taps_and_leaves_a_vms(ns: str) -> None:
    pool = TapPool("banger0", size=2, netns=ns)
    pool.refill()
    vm_tap = pool.acquire()
    pool.refill()
    assert sorted(pool.close()) == ["tap-pool-1", "tap-pool-2"]
    assert _devices(ns) == [vm_tap]  # a running VM keeps its TAP
    assert pool.refill() == 0  # closed: nothing is pooled any more
    pool.release(vm_tap)
    assert _devices(ns) == []


def test_cold_fallback_when_empty(ns: str) -> None:
    pool = TapPool("banger0", size=1, netns=ns)
    lease = pool.lease()
    assert lease.cold and lease.name == "tap-pool-0"
    assert tap_exists(lease.name, netns=ns)
    assert pool.acquire() == "tap-pool-1"
    assert (pool.stats.cold, pool.stats.warm, pool.stats.created) == (2, 0, 2)


def test_release_recycles_or_deletes_when_full(ns: str) -> None:
    pool = TapPool("banger0", size=1, netns=ns)
    a, b = pool.acquire(), pool.acquire()
    netns.ip(ns, "link", "set", a, "nomaster")  # a hypervisor or user fiddled with it
    pool.release(a)
    assert pool.idle == [a]
    assert [t.master for t in list_taps(a, netns=ns)] == ["banger0"]
    pool.release(b)  # the pool is full: b goes away
    assert not tap_exists(b, netns=ns)
    pool.release(a)  # a repeated release changes nothing
    assert pool.idle == [a] and pool.busy == set()
    with pytest.raises(InvalidInput):
        pool.release("eth0")
    assert pool.acquire() == a  # warm again


def test_a_held_tap_is_down_until_put_back_or_released(ns: str) -> None:
    # Down, its bridge port forwards nothing either way (a fork not yet itself).
    pool = TapPool("banger0", size=1, netns=ns)
    a = pool.acquire()
    pool.set_up(a, False)
    assert [(t.up, t.master) for t in list_taps(a, netns=ns)] == [(False, "banger0")]
    pool.set_up(a, True)
    assert [(t.up, t.master) for t in list_taps(a, netns=ns)] == [(True, "banger0")]
    pool.set_up(a, False)
    pool.release(a)  # a create that failed while holding it: back in the pool, up
    assert pool.idle == [a] and [t.up for t in list_taps(a, netns=ns)] == [True]
    with pytest.raises(InvalidInput):
        pool.set_up("eth0", False)
    with pytest.raises(NotFound):
        pool.set_up("tap-pool-99", False)


def test_release_of_a_vanished_device_drops_it(ns: str) -> None:
    pool = TapPool("banger0", size=2, netns=ns)
    name = pool.acquire()
    netns.ip(ns, "link", "del", name)
    pool.release(name)
    assert pool.idle == [] and pool.busy == set()


def test_reclaim_adopts_leftovers_and_removes_extras(ns: str) -> None:
    for i in range(5):
        create_tap(f"tap-pool-{i}", "banger0", netns=ns)
    create_tap("tap-pool-7", "banger0", owner_uid=4242, netns=ns)  # not our owner
    create_tap("tap-other", "banger0", netns=ns)  # not the pool's naming: untouched
    netns.ip(ns, "link", "set", "tap-pool-1", "nomaster", "down")

    pool = TapPool("banger0", size=2, netns=ns)
    report = pool.reclaim(in_use={"tap-pool-3"})
    assert report.in_use == ["tap-pool-3"]
    assert report.adopted == ["tap-pool-0", "tap-pool-1"]
    assert sorted(report.deleted) == ["tap-pool-2", "tap-pool-4", "tap-pool-7"]
    assert _devices(ns) == ["tap-pool-0", "tap-pool-1", "tap-pool-3"]
    assert tap_exists("tap-other", netns=ns)
    assert all(t.master == "banger0" and t.up for t in list_taps("tap-pool-", netns=ns))
    assert pool.idle == ["tap-pool-0", "tap-pool-1"] and pool.busy == {"tap-pool-3"}
    # New names fill the gaps without colliding with the busy device.
    pool.acquire(), pool.acquire()
    assert pool.acquire() == "tap-pool-2"
    pool.release("tap-pool-3")  # the VM stopped after the restart
    assert pool.idle == ["tap-pool-3"]


def test_foreign_device_with_a_pool_name_is_skipped(ns: str) -> None:
    netns.ip(ns, "link", "add", "tap-pool-0", "type", "veth", "peer", "name", "peer0")
    pool = TapPool("banger0", size=1, netns=ns)
    assert pool.acquire() == "tap-pool-1"
    assert "tap-pool-0" not in _devices(ns)  # the veth is not a TAP and was not touched


def test_concurrent_acquires_get_distinct_devices(ns: str) -> None:
    pool = TapPool("banger0", size=3, netns=ns)
    pool.refill()
    got: list[str] = []
    lock = threading.Lock()

    def grab() -> None:
        name = pool.acquire()
        with lock:
            got.append(name)

    threads = [threading.Thread(target=grab) for _ in range(6)]
    refiller = threading.Thread(target=pool.refill)
    for t in [*threads, refiller]:
        t.start()
    for t in [*threads, refiller]:
        t.join()
    assert len(set(got)) == 6
    assert set(_devices(ns)) == set(got) | set(pool.idle)
    assert pool.stats.warm + pool.stats.cold == 6


async def test_arefill_and_drain(ns: str) -> None:
    pool = TapPool("banger0", size=2, netns=ns)
    assert await pool.arefill() == 2
    assert sorted(pool.drain()) == ["tap-pool-0", "tap-pool-1"]
    assert _devices(ns) == []


_HOLD_TAP = """
import fcntl, os, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000))
print("held", flush=True)
time.sleep(60)
"""


def test_reclaim_never_adopts_a_tap_a_process_holds(ns: str) -> None:
    """A hypervisor whose record was lost still holds its TAP: a new daemon's pool must
    neither hand that TAP to another VM (EBUSY) nor delete it from under the process."""
    import subprocess
    import sys

    from banger.net.tap import held_taps

    old = TapPool("banger0", size=2, netns=ns)
    assert old.refill() == 2
    holder = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _HOLD_TAP, "tap-pool-0"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert "tap-pool-0" in held_taps(ns)
        assert "tap-pool-0" not in held_taps(None)  # another namespace's device

        fresh = TapPool("banger0", size=2, netns=ns)  # the next daemon, knowing no VM
        report = fresh.reclaim(set())
        assert report.adopted == ["tap-pool-1"]
        assert "tap-pool-0" in report.in_use and "tap-pool-0" not in report.deleted
        assert tap_exists("tap-pool-0", netns=ns)
        assert fresh.acquire() == "tap-pool-1"
        assert fresh.acquire() not in ("tap-pool-0", "tap-pool-1")  # cold, a new name
    finally:
        holder.kill()
        holder.wait()
