"""Per-VM masquerade and published ports in an nftables table that banger owns
(`table ip banger`).

Layout (base rules carry the comment `banger:base`, per-VM NAT rules `banger:<ip>`,
published ports `banger:pub:<ip>`):

    chain postrouting   nat hook:    ip saddr CIDR ip daddr != CIDR jump nat_vms
                                     ip saddr 127.0.0.0/8 oifname BR masquerade
                                     oifname BR ip saddr CIDR ct status dnat masquerade
    chain nat_vms                    ip saddr VM [oifname UPLINK] masquerade
    chain prerouting    nat hook:    fib daddr type local jump publish
    chain output        nat hook:    fib daddr type local jump publish
    chain publish                    [ip daddr ADDR] tcp|udp dport HP dnat to VM:GP
    chain forward       filter hook: oifname BR ct state established,related accept
                                     iifname BR oifname != BR ct status dnat accept
                                     iifname BR oifname != BR jump fwd_vms
                                     iifname BR oifname != BR drop
    chain fwd_vms                    ip saddr VM [oifname UPLINK] accept

Published ports work like Docker's `-p` without its userland proxy: DNAT for traffic
to any local address arriving from outside (prerouting) or made on the host
(output). From 127.0.0.1 that needs `route_localnet` on the bridge and a masquerade
of loopback sources; a VM reaching a published port through a host address is
masqueraded too (hairpin), so the reply comes back the same way; its TAP is a
hairpin bridge port (`ops._join_bridge`), without which br_netfilter drops the
DNATed frame the bridge would send back out the port it came in on.

Per-VM rules live in their own chains so they need not know the bridge or subnet,
and the trailing drop keeps VMs without `--nat` off the uplink even when the host
forwards for other reasons. An accept here cannot override a drop in another table
(nftables needs every base chain on a hook to accept), which `doctor` should explain.

nft has no maintained Python binding, so this module drives `nft -f -` scripts
(atomic transactions) and `nft -j` listings through `banger.system.run`, inside a
namespace with `ip netns exec`. Deleting a rule needs its handle, hence the
list-then-delete under a process-wide lock.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from banger.errors import CommandFailed, NotFound
from banger.net import addresses
from banger.net._ns import check_ifname, netns_path
from banger.net.bridge import DEFAULT_BRIDGE
from banger.net.ops import FORWARD_SYSCTL
from banger.net.privileged import dispatch
from banger.system import require_tool, run

TABLE = "banger"
TAG = "banger:"
BASE_TAG = "banger:base"
_lock = threading.Lock()


@dataclass(frozen=True)
class NatEntry:
    ip: str
    uplink: str | None  # None: masquerade on any interface but the bridge's subnet


def _nft(netns: str | None) -> list[str]:
    nft = require_tool("nft")
    if netns is None:
        return [nft]
    netns_path(netns)  # a clear NotFound rather than an `ip netns exec` error
    return [require_tool("ip"), "netns", "exec", netns, nft]


def _apply(script: str, netns: str | None) -> None:
    run([*_nft(netns), "-f", "-"], privileged=True, input=script.encode())


def _rules(netns: str | None) -> list[dict[str, Any]] | None:
    """Our table's rules (with handles), or None when the table does not exist."""
    argv = [*_nft(netns), "-j", "-a", "list", "table", "ip", TABLE]
    res = run(argv, privileged=True, check=False)
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace")
        if "No such file or directory" in err:
            return None
        raise CommandFailed(
            f"listing nftables table ip {TABLE} failed: {err.strip()}",
            hint="check that nftables works: `nft list ruleset`",
        )
    items = json.loads(res.out).get("nftables", [])
    return [i["rule"] for i in items if "rule" in i]


def _tag(ip: str) -> str:
    return f"{TAG}{addresses.parse_ip(ip)}"


def ensure_table(
    bridge: str = DEFAULT_BRIDGE, cidr: str = addresses.DEFAULT_CIDR, netns: str | None = None
) -> None:
    """Create the table and its base rules; per-VM rules survive a re-run (idempotent)."""
    check_ifname(bridge, "bridge")
    net = addresses.parse_subnet(cidr)
    t = f"ip {TABLE}"
    c = f'comment "{BASE_TAG}"'
    script = f"""
add table {t}
add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}
add chain {t} nat_vms
add chain {t} fwd_vms
add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain {t} output {{ type nat hook output priority -100; policy accept; }}
add chain {t} publish
flush chain {t} postrouting
flush chain {t} forward
flush chain {t} prerouting
flush chain {t} output
add rule {t} postrouting ip saddr {net} ip daddr != {net} jump nat_vms {c}
add rule {t} postrouting ip saddr 127.0.0.0/8 oifname "{bridge}" masquerade {c}
add rule {t} postrouting oifname "{bridge}" ip saddr {net} ct status dnat masquerade {c}
add rule {t} prerouting fib daddr type local jump publish {c}
add rule {t} output fib daddr type local jump publish {c}
add rule {t} forward oifname "{bridge}" ct state established,related accept {c}
add rule {t} forward iifname "{bridge}" oifname != "{bridge}" ct status dnat accept {c}
add rule {t} forward iifname "{bridge}" oifname != "{bridge}" jump fwd_vms {c}
add rule {t} forward iifname "{bridge}" oifname != "{bridge}" drop {c}
"""
    with _lock:
        _apply(script, netns)


def enable_nat(vm_ip: str, uplink: str | None = None, netns: str | None = None) -> None:
    """Masquerade `vm_ip`'s outbound traffic (only via `uplink` when given). Idempotent."""
    tag = _tag(vm_ip)
    ip = tag.removeprefix(TAG)
    out = f' oifname "{check_ifname(uplink, "uplink")}"' if uplink else ""
    with _lock:
        rules = _rules(netns)
        if rules is None:
            raise NotFound(
                f"nftables table ip {TABLE} does not exist",
                hint="the daemon creates it at start (nat.ensure_table); restart bangerd",
            )
        # Replace rather than add, in one transaction: re-enabling never duplicates.
        script = [_delete_line(r) for r in rules if r.get("comment") == tag]
        script.append(f'add rule ip {TABLE} nat_vms ip saddr {ip}{out} masquerade comment "{tag}"')
        script.append(f'add rule ip {TABLE} fwd_vms ip saddr {ip}{out} accept comment "{tag}"')
        _apply("\n".join(script) + "\n", netns)
    enable_forwarding(netns)


def disable_nat(vm_ip: str, netns: str | None = None) -> bool:
    """Remove `vm_ip`'s rules; False when there were none."""
    tag = _tag(vm_ip)
    with _lock:
        ours = [r for r in _rules(netns) or [] if r.get("comment") == tag]
        if ours:
            _apply("\n".join(_delete_line(r) for r in ours) + "\n", netns)
    return bool(ours)


def list_nat(netns: str | None = None) -> list[NatEntry]:
    """VMs that currently have NAT, by address."""
    entries = []
    for rule in _rules(netns) or []:
        comment = str(rule.get("comment", ""))
        if rule.get("chain") == "nat_vms" and comment.startswith(TAG):
            entries.append(NatEntry(comment.removeprefix(TAG), _uplink(rule)))
    return sorted(entries, key=lambda e: addresses.parse_ip(e.ip))


def flush(netns: str | None = None) -> None:
    """Delete banger's table with every rule in it (no-op when absent)."""
    with _lock:
        # `add` first makes the delete valid whether or not the table exists.
        _apply(f"add table ip {TABLE}\ndelete table ip {TABLE}\n", netns)


PUB_TAG = "banger:pub:"


@dataclass(frozen=True)
class PortRule:
    """One published port: `host_addr:host_port/proto` → the VM's `guest_port`.
    `host_addr` 0.0.0.0 means every address of the host (Docker's default)."""

    proto: str
    host_addr: str
    host_port: int
    guest_port: int

    def __str__(self) -> str:
        addr = "" if self.host_addr == "0.0.0.0" else f"{self.host_addr}:"
        suffix = "" if self.proto == "tcp" else f"/{self.proto}"
        return f"{addr}{self.host_port}:{self.guest_port}{suffix}"


@dataclass(frozen=True)
class PublishEntry:
    ip: str
    rule: PortRule


def _pub_line(ip: str, rule: PortRule) -> str:
    if rule.proto not in ("tcp", "udp"):
        raise ValueError(f"bad protocol {rule.proto!r}")
    addr = addresses.parse_ip(rule.host_addr)
    hp, gp = int(rule.host_port), int(rule.guest_port)
    if not (0 < hp < 65536 and 0 < gp < 65536):
        raise ValueError(f"bad port in {rule}")
    match = "" if str(addr) == "0.0.0.0" else f"ip daddr {addr} "
    return (
        f"add rule ip {TABLE} publish {match}{rule.proto} dport {hp} "
        f'dnat to {ip}:{gp} comment "{PUB_TAG}{ip}"'
    )


def set_published(
    vm_ip: str,
    rules: list[PortRule],
    bridge: str = DEFAULT_BRIDGE,
    cidr: str = addresses.DEFAULT_CIDR,
    netns: str | None = None,
) -> None:
    """Make `vm_ip`'s published ports exactly `rules`, in one transaction (an empty
    list removes them). Creates the table when missing."""
    ip = str(addresses.parse_ip(vm_ip))
    tag = f"{PUB_TAG}{ip}"
    lines = [_pub_line(ip, r) for r in rules]
    with _lock:
        current = _rules(netns)
    if current is None or _no_publish_chain(current):
        if not rules:
            return
        ensure_table(bridge, cidr, netns)
    with _lock:
        current = _rules(netns) or []
        script = [_delete_line(r) for r in current if r.get("comment") == tag]
        script += lines
        if script:
            _apply("\n".join(script) + "\n", netns)
    if rules:
        enable_forwarding(netns)
        dispatch("route_localnet", bridge=bridge, netns=netns)


def _no_publish_chain(rules: list[dict[str, Any]]) -> bool:
    """True for a table made before published ports existed (no DNAT hook rules)."""
    return not any(r.get("chain") == "prerouting" for r in rules)


def list_published(netns: str | None = None) -> list[PublishEntry]:
    """Every published-port rule in the table, by VM address."""
    entries = []
    for rule in _rules(netns) or []:
        comment = str(rule.get("comment", ""))
        if rule.get("chain") == "publish" and comment.startswith(PUB_TAG):
            parsed = _parse_pub(rule)
            if parsed is not None:
                entries.append(PublishEntry(comment.removeprefix(PUB_TAG), parsed))
    return entries


def _parse_pub(rule: dict[str, Any]) -> PortRule | None:
    addr, proto, hport, gport = "0.0.0.0", None, None, None
    for expr in rule.get("expr", []):
        match = expr.get("match")
        if match:
            left = match.get("left", {})
            payload = left.get("payload", {}) if isinstance(left, dict) else {}
            if payload.get("protocol") == "ip" and payload.get("field") == "daddr":
                addr = str(match.get("right"))
            elif payload.get("field") == "dport":
                proto, hport = str(payload.get("protocol")), int(match.get("right"))
        if "dnat" in expr:
            gport = int(expr["dnat"].get("port", 0))
    if proto is None or hport is None or gport is None:
        return None
    return PortRule(proto, addr, hport, gport)


def enable_forwarding(netns: str | None = None) -> bool:
    """Turn on IPv4 forwarding in the namespace; True when it was off.

    Never turned off again: the host may forward for other reasons.
    """
    if netns is None:
        with open(FORWARD_SYSCTL) as f:  # readable without privilege: skip the sudo hop
            if f.read().strip() == "1":
                return False
    return bool(dispatch("ip_forward", netns=netns))


def _delete_line(rule: dict[str, Any]) -> str:
    return f"delete rule ip {TABLE} {rule['chain']} handle {int(rule['handle'])}"


def _uplink(rule: dict[str, Any]) -> str | None:
    for expr in rule.get("expr", []):
        match = expr.get("match", {})
        if match.get("left") == {"meta": {"key": "oifname"}} and match.get("op") == "==":
            return str(match.get("right"))
    return None
