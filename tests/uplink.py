"""The outside world for boot tests: an "uplink" namespace with its own DNS server
and HTTP server, joined to the banger namespace by a veth pair.

The banger namespace gets a default route through the uplink and, through
iproute2's /etc/netns/<ns>/ convention (`ip netns exec` bind-mounts those files
over /etc), its own resolv.conf and hosts: the daemon started there resolves names
the way a host configured like that would, with no code of its own knowing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from banger.system.run import die_with_parent
from tests import netns

HOST_ADDR, UPLINK_ADDR = "10.77.0.1", "10.77.0.2"
OUTSIDE_NAME = "outside.test"  # served by the uplink's DNS server
HOSTS_NAME = "hosts-only.test"  # only in the banger namespace's /etc/hosts
HOSTS_ADDR = "10.77.0.3"
PAGE = "hello from the outside world"

_DNS = textwrap.dedent(
    f"""
    from dnslib import RR, QTYPE, RCODE
    from dnslib.server import BaseResolver, DNSServer
    import time

    class Zone(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            name = str(request.q.qname).rstrip(".").lower()
            if name == "{OUTSIDE_NAME}":
                if request.q.qtype == QTYPE.A:
                    reply.add_answer(*RR.fromZone("{OUTSIDE_NAME}. 60 IN A {UPLINK_ADDR}"))
                elif request.q.qtype == QTYPE.TXT:
                    reply.add_answer(*RR.fromZone('{OUTSIDE_NAME}. 60 IN TXT "uplink"'))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            return reply

    server = DNSServer(Zone(), address="{UPLINK_ADDR}", port=53)
    server.start_thread()
    print("ready", flush=True)
    while True:
        time.sleep(3600)
    """
)


@dataclass
class Uplink:
    ns: str  # the uplink namespace
    banger_ns: str


@contextmanager
def uplink(banger_ns: str, tmp: Path) -> Iterator[Uplink]:
    etc = Path("/etc/netns") / banger_ns
    procs: list[subprocess.Popen[bytes]] = []
    with netns.namespace() as ns:
        try:
            netns.ip(
                banger_ns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", ns
            )
            netns.ip(banger_ns, "addr", "add", f"{HOST_ADDR}/24", "dev", "up0")
            netns.ip(banger_ns, "link", "set", "up0", "up")
            netns.ip(banger_ns, "route", "add", "default", "via", UPLINK_ADDR)
            netns.ip(ns, "addr", "add", f"{UPLINK_ADDR}/24", "dev", "eth0")
            netns.ip(ns, "link", "set", "eth0", "up")
            etc.mkdir(parents=True)
            (etc / "resolv.conf").write_text(f"nameserver {UPLINK_ADDR}\n")
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{HOSTS_ADDR} {HOSTS_NAME}\n")
            www = tmp / "www"
            www.mkdir()
            (www / "index.html").write_text(PAGE + "\n")
            run = ["ip", "netns", "exec", ns, sys.executable]
            # Both servers die with a killed test run (they would serve forever).
            dns = subprocess.Popen(
                [*run, "-c", _DNS], stdout=subprocess.PIPE, preexec_fn=die_with_parent()
            )
            procs.append(dns)
            assert dns.stdout is not None and dns.stdout.readline().strip() == b"ready"
            web = [*run, "-m", "http.server", "80", "--bind", UPLINK_ADDR, "-d", str(www)]
            procs.append(
                subprocess.Popen(web, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
            )
            deadline = time.monotonic() + 10
            while "LISTEN" not in netns.exec_in(ns, "ss", "-ltn", "sport = :80").out:
                assert time.monotonic() < deadline, "uplink HTTP server did not start"
                time.sleep(0.1)
            yield Uplink(ns, banger_ns)
        finally:
            for p in procs:
                p.kill()
                p.wait()
            shutil.rmtree(etc, ignore_errors=True)
