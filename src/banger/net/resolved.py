"""The host side of `.vm`: systemd-resolved per-link DNS on the bridge.

`banger dns setup` gives the bridge link the daemon's DNS server and the routing-only
domain `~vm`, and takes it out of the default route for other names, so the host
sends `*.vm` (and nothing else) to the daemon:

    resolvectl dns banger0 172.30.0.1
    resolvectl domain banger0 ~vm
    resolvectl default-route banger0 false

These are runtime settings of the link, lost when the link goes away or resolved
restarts; the daemon re-applies them whenever it sets the bridge up. `revert`
removes them. All of it goes through `resolvectl` (resolved's D-Bus API) via the
system layer, with sudo when the daemon is not root.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from banger.errors import BangerError, CommandFailed, InvalidInput, NotFound
from banger.net._ns import check_ifname
from banger.system import find_tool, require_tool, run

_RUN_DIR = "/run/systemd/resolve"
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass
class LinkDns:
    servers: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)


def unavailable() -> str | None:
    """Why resolved cannot be configured here, or None when it can."""
    if find_tool("resolvectl") is None:
        return "systemd-resolved is not installed (no resolvectl)"
    if not os.path.isdir(_RUN_DIR):
        return "systemd-resolved is not running"
    return None


def _resolvectl(*args: str, check: bool = True) -> str:
    argv = [require_tool("resolvectl"), *args]
    res = run(argv, privileged=True, check=False, timeout=15)
    if check and res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip()
        if "not found" in err.lower() or "no such" in err.lower():
            raise NotFound(f"resolvectl {' '.join(args)}: {err}")
        raise CommandFailed(
            f"resolvectl {' '.join(args)} failed: {err or res.returncode}",
            hint="check that systemd-resolved runs: `resolvectl status`",
        )
    return res.out


def apply(bridge: str, server: str, domain: str = "vm") -> None:
    """Send `*.domain` from the host to `server`, through link `bridge`."""
    check_ifname(bridge, "bridge")
    ipaddress.IPv4Address(server)
    if not _DOMAIN.match(domain):
        raise InvalidInput(f"invalid DNS domain {domain!r}")
    why = unavailable()
    if why is not None:
        raise BangerError(f"cannot configure the host resolver: {why}", hint=fix_hint(server))
    _resolvectl("dns", bridge, server)
    _resolvectl("domain", bridge, f"~{domain}")
    _resolvectl("default-route", bridge, "false")


def revert(bridge: str) -> bool:
    """Drop banger's settings from the link; False when there was nothing to drop."""
    check_ifname(bridge, "bridge")
    if unavailable() is not None:
        return False
    try:
        _resolvectl("revert", bridge)
    except NotFound:
        return False  # no such link: its settings went with it
    return True


def link(bridge: str) -> LinkDns:
    """What resolved has for the link now (empty when the link or resolved is absent)."""
    check_ifname(bridge, "bridge")
    if unavailable() is not None:
        return LinkDns()
    dns = _resolvectl("dns", bridge, check=False)
    dom = _resolvectl("domain", bridge, check=False)
    return LinkDns(_values(dns), _values(dom))


def _values(out: str) -> list[str]:
    # "Link 5 (banger0): 172.30.0.1" → ["172.30.0.1"]
    for line in out.splitlines():
        if ":" in line and line.startswith("Link"):
            return line.split(":", 1)[1].split()
    return []


def fix_hint(server: str) -> str:
    """What to do on a host without systemd-resolved."""
    return (
        "install systemd-resolved (`apt-get install systemd-resolved`, then `banger dns "
        "setup`), or point your own resolver's `vm` domain at the bridge address "
        f"(dnsmasq: `server=/vm/{server}`)"
    )
