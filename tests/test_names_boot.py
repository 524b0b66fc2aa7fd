"""Names everywhere, end to end: two real guests (one with NAT and a published port,
one without) in a namespace whose only way out is a test-made "uplink" namespace
with its own DNS and HTTP servers (tests/uplink.py).

The guests are shared by every test here (module scope): two boots in all.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests import netns
from tests.test_net_dns_upstream import ask_udp, fuzz
from tests.uplink import (
    HOST_ADDR,
    HOSTS_ADDR,
    HOSTS_NAME,
    OUTSIDE_NAME,
    PAGE,
    UPLINK_ADDR,
    Uplink,
    uplink,
)
from tests.vmkit import NsBanger, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]
GW = "172.30.0.1"


@dataclass
class World:
    b: NsBanger
    up: Uplink
    ips: dict[str, str]

    def sh(self, vm: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Generous: an ssh login can take a minute on a loaded 2-core TCG host.
        return self.b.run("vm", "ssh", vm, "--", script, check=check, timeout=180)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    with private_home() as b, uplink(b.ns, tmp_path_factory.mktemp("up")) as up:
        creates = [
            (
                "vm",
                "create",
                "--name",
                "a",
                "--nat",
                "--publish",
                "8080:80",
                "--memory",
                "512M",
            ),
            ("vm", "create", "--name", "b", "--memory", "512M"),
        ]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda args: b.run(*args, timeout=600), creates))
        ips = {n: b.json("vm", "show", n)["ip"] for n in ("a", "b")}
        yield World(b, up, ips)


def test_guests_resolve_each_other_by_name(world: World) -> None:
    resolv = world.sh("b", "cat /etc/resolv.conf").stdout
    assert f"nameserver {GW}" in resolv and "search vm" in resolv
    assert world.sh("b", "getent hosts a.vm").stdout.split()[0] == world.ips["a"]
    assert world.sh("b", "getent hosts a").stdout.split()[0] == world.ips["a"]  # search vm
    assert world.sh("b", "ping -c1 -W5 a", check=False).returncode == 0
    # Reverse names for the bridge subnet, and a clean NXDOMAIN for unknown VMs.
    assert "a.vm" in world.sh("b", f"getent hosts {world.ips['a']}").stdout
    assert world.sh("b", "getent hosts nope.vm", check=False).returncode == 2


def test_nat_guest_resolves_and_fetches_the_outside(world: World) -> None:
    got = world.sh("a", f"getent ahostsv4 {OUTSIDE_NAME}").stdout.split()
    assert got[0] == UPLINK_ADDR
    assert world.sh("a", f"curl -sS --max-time 10 http://{OUTSIDE_NAME}/").stdout.strip() == PAGE
    # The host's /etc/hosts applies too (the daemon resolves like the host does).
    assert world.sh("a", f"getent hosts {HOSTS_NAME}").stdout.split()[0] == HOSTS_ADDR
    assert world.sh("a", "getent hosts nothing.test", check=False).returncode == 2


def test_guest_without_nat_cannot_reach_the_outside(world: World) -> None:
    assert world.sh("b", f"getent hosts {OUTSIDE_NAME}", check=False).returncode == 2
    curl = world.sh("b", f"curl -sS --max-time 3 http://{UPLINK_ADDR}/", check=False)
    assert curl.returncode != 0
    # `vm set --nat` on the running VM opens both at once; `--no-nat` closes them.
    world.b.run("vm", "set", "b", "--nat")
    try:
        assert world.sh("b", f"getent hosts {OUTSIDE_NAME}").stdout.split()[0] == UPLINK_ADDR
    finally:
        world.b.run("vm", "set", "b", "--no-nat")
    time.sleep(0.1)
    assert world.sh("b", f"getent hosts {OUTSIDE_NAME}", check=False).returncode == 2


def _curl(world: World, ns: str, url: str) -> str | None:
    res = netns.exec_in(ns, "curl", "-sS", "--max-time", "5", url, check=False)
    return res.out if res.returncode == 0 else None


def test_published_port_answers_from_the_host_and_outside(world: World) -> None:
    world.sh(
        "a",
        "mkdir -p /srv/www && echo served-by-a > /srv/www/index.html && "
        "(setsid python3 -m http.server 80 -d /srv/www >/dev/null 2>&1 &) && "
        "for i in $(seq 50); do ss -ltn | grep -q ':80 ' && break; sleep 0.1; done",
    )
    ns, up = world.b.ns, world.up.ns
    assert (_curl(world, ns, "http://127.0.0.1:8080/") or "").strip() == "served-by-a"
    assert (_curl(world, up, f"http://{HOST_ADDR}:8080/") or "").strip() == "served-by-a"
    shown = world.b.json("vm", "show", "a")["ports"]
    assert [p["spec"] for p in shown] == ["8080:80"]
    listed = world.b.run("vm", "ports", "a").stdout
    assert "*:8080" in listed and "host :8080" in listed

    # Conflicts name the owner; live unpublish/publish take effect at once.
    clash = world.b.run("vm", "publish", "b", "8080:80", check=False)
    assert clash.returncode != 0 and "VM `a`" in clash.stderr
    world.b.run("vm", "unpublish", "a", "8080")
    assert _curl(world, ns, "http://127.0.0.1:8080/") is None
    world.b.run("vm", "publish", "a", "127.0.0.1:8081:80")
    assert (_curl(world, ns, "http://127.0.0.1:8081/") or "").strip() == "served-by-a"
    assert _curl(world, up, f"http://{HOST_ADDR}:8081/") is None  # localhost only


def test_dns_fuzz_leaves_the_daemon_answering(world: World) -> None:
    replies = fuzz(GW, 53, world.b.ns, count=10_000)
    assert replies > 0
    reply = ask_udp(GW, 53, world.b.ns, "a.vm")
    assert [str(r.rdata) for r in reply.rr] == [world.ips["a"]]
    assert world.sh("b", "getent hosts a.vm").stdout.split()[0] == world.ips["a"]


def test_delete_leaves_no_rules(world: World) -> None:
    world.b.run("vm", "delete", "--force", "a", "b", timeout=120)
    table = netns.exec_in(world.b.ns, "nft", "list", "table", "ip", "banger", check=False).out
    assert "banger:pub:" not in table and world.ips["a"] not in table
    assert _curl(world, world.b.ns, "http://127.0.0.1:8081/") is None
    reply = ask_udp(GW, 53, world.b.ns, "a.vm")
    assert reply.header.rcode == 3  # NXDOMAIN: the name went with the VM
