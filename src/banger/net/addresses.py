"""Pure address arithmetic for the VM subnet: no I/O, no state.

Leases live in the daemon's store; this module only answers questions such as
"which address is free next" or "what does the kernel `ip=` argument look like".
The first host address of the subnet is the bridge (gateway, DNS server); the
network and broadcast addresses are never handed out.
"""

from __future__ import annotations

import hashlib
import ipaddress
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


def prefixlen(cidr: str) -> int:
    return parse_subnet(cidr).prefixlen


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


def mac_for(seed: str) -> str:
    """The one MAC generator: stable for `seed` (a VM's id, the bridge's name), locally
    administered and unicast (first octet 0x02)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def kernel_ip_param(
    ip: str, prefix: int, gateway: str, hostname: str, dns: str | None = None
) -> str:
    """The one builder of the kernel's static `ip=` argument, validated:
    `ip=<client>::<gw>:<netmask>:<hostname>:eth0:off[:<dns0>]`."""
    try:
        iface = ipaddress.IPv4Interface(f"{ip}/{prefix}")
        gw = ipaddress.IPv4Address(gateway)
        dns_addr = ipaddress.IPv4Address(dns) if dns else None
    except ValueError as exc:
        raise InvalidInput(f"invalid guest network settings: {exc}") from exc
    if gw not in iface.network:
        raise InvalidInput(f"gateway {gw} is outside the guest network {iface.network}")
    if iface.ip in (gw, iface.network.network_address, iface.network.broadcast_address):
        raise InvalidInput(f"{iface.ip} cannot be a guest address in {iface.network}")
    # ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>[:<dns0>]
    param = f"ip={iface.ip}::{gw}:{iface.netmask}:{hostname}:eth0:off"
    return f"{param}:{dns_addr}" if dns_addr else param
