"""banger-init (banger/agent/init.py) on the host: its ip= network setup runs for real
in a network namespace this test makes (a veth standing in for the guest's eth0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from banger.agent import GUEST_INIT
from tests import netns

pytestmark = netns.skip_unless_netns()


def _net_only(ns: str, cmdline: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "env", f"BANGER_INIT_CMDLINE={cmdline}",
         sys.executable, "-I", "-S", str(GUEST_INIT), "--net-only"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_net_only_applies_a_static_ip_parameter(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    with netns.namespace() as ns:
        netns.ip(ns, "link", "set", "lo", "down")
        netns.ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        netns.ip(ns, "link", "set", "peer0", "up")
        cmdline.write_text("console=ttyS0 ip=10.9.0.5::10.9.0.1:255.255.255.0:t:eth0:off rw\n")
        r = _net_only(ns, cmdline)
        assert r.returncode == 0, r.stderr
        assert "eth0: 10.9.0.5/255.255.255.0 via 10.9.0.1" in r.stderr
        addr = netns.ip(ns, "-4", "-o", "addr", "show", "dev", "eth0").out
        assert "inet 10.9.0.5/24" in addr
        assert "default via 10.9.0.1 dev eth0" in netns.ip(ns, "route").out
        assert "UP" in netns.ip(ns, "-o", "link", "show", "lo").out
        # a prefix length works as the netmask field too, and a second run changes nothing
        netns.ip(ns, "addr", "flush", "dev", "eth0")
        cmdline.write_text("ip=10.9.1.7::10.9.1.1:16::eth0:off\n")
        assert _net_only(ns, cmdline).returncode == 0
        assert "inet 10.9.1.7/16" in netns.ip(ns, "-4", "-o", "addr", "show", "dev", "eth0").out


def test_net_only_leaves_dhcp_and_a_missing_ip_alone(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    with netns.namespace() as ns:
        for line, said in (("ip=dhcp", "not a static configuration"), ("rw quiet", "no ip=")):
            cmdline.write_text(line + "\n")
            r = _net_only(ns, cmdline)
            assert r.returncode == 1 and said in r.stderr


def test_it_refuses_to_run_as_anything_but_pid_1() -> None:
    r = subprocess.run(
        [sys.executable, "-I", "-S", str(GUEST_INIT)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 2 and "must run as PID 1" in r.stderr
