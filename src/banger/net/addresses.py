"""Pure address arithmetic for the VM subnet: no I/O, no state.

Leases live in the daemon's store; this module only answers questions such as
"which address is free next" or "what does the kernel `ip=` argument look like".
The first host address of the subnet is the bridge (gateway, DNS server); the
network and broadcast addresses are never handed out.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterable

from banger.errors import Conflict, InvalidInput

DEFAULT_CIDR = "172.30.0.0/24"


def parse_subnet(cidr: str) -> ipaddress.IPv4Network:
    """Parse an IPv4 subnet; host bits are dropped ("172.30.0.1/24" -> 172.30.0.0/24)."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise InvalidInput(
            f"invalid subnet {cidr!r}: {exc}", hint=f"use CIDR notation, e.g. {DEFAULT_CIDR}"
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidInput(f"subnet {cidr!r} is not IPv4", hint=f"e.g. {DEFAULT_CIDR}")
    # /30 is the smallest subnet with a gateway and one VM.
    if net.prefixlen > 30:
        raise InvalidInput(
            f"subnet {cidr!r} is too small for a gateway and a VM", hint="use /30 or larger"
        )
    return net


def parse_ip(ip: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(ip)
    except ValueError:
        raise InvalidInput(f"invalid IPv4 address {ip!r}") from None


def gateway(cidr: str) -> str:
    """The bridge's address: the subnet's first host address."""
    return str(parse_subnet(cidr).network_address + 1)


def host_interface(cidr: str) -> str:
    """The bridge's address with its prefix, e.g. "172.30.0.1/24"."""
    net = parse_subnet(cidr)
    return f"{net.network_address + 1}/{net.prefixlen}"


def prefixlen(cidr: str) -> int:
    return parse_subnet(cidr).prefixlen


def netmask(cidr: str) -> str:
    return str(parse_subnet(cidr).netmask)


def contains(cidr: str, ip: str) -> bool:
    return parse_ip(ip) in parse_subnet(cidr)


def reserved(cidr: str) -> set[str]:
    """Addresses that are never leased: network, gateway, broadcast."""
    net = parse_subnet(cidr)
    return {str(net.network_address), str(net.network_address + 1), str(net.broadcast_address)}


def allocate(used: Iterable[str], cidr: str) -> str:
    """The lowest address of `cidr` that is neither used nor reserved."""
    net = parse_subnet(cidr)
    taken = {parse_ip(u) for u in used} | {parse_ip(r) for r in reserved(cidr)}
    for ip in net.hosts():
        if ip not in taken:
            return str(ip)
    raise Conflict(
        f"no free address left in {net} ({net.num_addresses - 3} usable, all leased)",
        hint="delete unused VMs or configure a larger `bridge_cidr`",
    )


def generate_mac(seed: str | None = None) -> str:
    """A locally administered unicast MAC; stable for a given `seed`, random without."""
    raw = hashlib.sha256(seed.encode()).digest()[:6] if seed is not None else os.urandom(6)
    # Set the locally-administered bit and clear the multicast bit of the first octet.
    first = (raw[0] | 0x02) & 0xFE
    return ":".join(f"{b:02x}" for b in (first, *raw[1:]))


def kernel_ip_param(
    ip: str, cidr: str, hostname: str = "", device: str = "eth0", dns: str | None = None
) -> str:
    """The kernel's static `ip=` argument: client::gateway:netmask:hostname:dev:off[:dns]."""
    if not contains(cidr, ip):
        raise InvalidInput(f"{ip} is not inside {cidr}")
    param = f"ip={ip}::{gateway(cidr)}:{netmask(cidr)}:{hostname}:{device}:off"
    return param + (f":{dns}" if dns else "")
