"""Published ports, like Docker's `-p`: `--publish [ADDR:]HOST_PORT:GUEST_PORT[/udp]`.

A published port is a row in `published_ports` (persistent: it belongs to the VM
until unpublished or the VM is deleted, so a conflict is refused even while its
owner is stopped) and a DNAT rule in banger's nftables table while the VM runs
(`banger.net.nat.set_published`): made on `attach`, removed on `detach`, changed
live by `publish`/`unpublish`, and squared with the running VMs by `reclaim` at
daemon start, so a crash never leaves a port pointing at an address a later VM
may get.

Conflicts are refused with the owner named: another VM's row for the same
protocol and port on an overlapping address (0.0.0.0 overlaps every address), or
a program on the host already listening there.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import re
import socket
import sqlite3
import threading
import time
from typing import Any

from banger.capabilities.base import BootContributions, Capability, PrepareContext
from banger.errors import Conflict, InvalidInput, NotFound
from banger.net import nat
from banger.net._ns import call_in_netns
from banger.net.nat import PortRule
from banger.store import Store
from banger.system import find_tool
from banger.vm import VMRecord

log = logging.getLogger("banger.publish")

ANY = "0.0.0.0"
_SPEC = re.compile(r"^(?:(?P<addr>[0-9.]+):)?(?P<host>\d+):(?P<guest>\d+)(?:/(?P<proto>\w+))?$")
SPEC_HINT = "use [ADDR:]HOST_PORT:GUEST_PORT[/udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp"


def parse_spec(spec: str) -> PortRule:
    """`[ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]` → a PortRule, or a one-line error."""
    m = _SPEC.match(spec.strip())
    if m is None:
        if spec.count(":") > 2 or "[" in spec:
            raise InvalidInput(f"--publish {spec!r}: only IPv4 host addresses", hint=SPEC_HINT)
        raise InvalidInput(f"--publish {spec!r} is not a port mapping", hint=SPEC_HINT)
    proto = (m["proto"] or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise InvalidInput(f"--publish {spec!r}: protocol must be tcp or udp", hint=SPEC_HINT)
    try:
        addr = str(ipaddress.IPv4Address(m["addr"] or ANY))
    except ValueError:
        raise InvalidInput(f"--publish {spec!r}: {m['addr']} is not an IPv4 address") from None
    host, guest = int(m["host"]), int(m["guest"])
    for port in (host, guest):
        if not 1 <= port <= 65535:
            raise InvalidInput(f"--publish {spec!r}: port {port} is out of range (1-65535)")
    return PortRule(proto, addr, host, guest)


def _overlap(a: PortRule, b: PortRule) -> bool:
    """Same protocol and host port on the same address, or either on every address."""
    same_port = a.proto == b.proto and a.host_port == b.host_port
    return same_port and (a.host_addr == b.host_addr or ANY in (a.host_addr, b.host_addr))


class PublishCapability(Capability):
    name = "publish"
    stage = "network"

    def __init__(
        self,
        store: Store,
        bridge: str,
        subnet: str,
        *,
        netns: str | None = None,
        probe_host: bool = True,
    ) -> None:
        self.store = store
        self.bridge = bridge
        self.subnet = subnet
        self.netns = netns
        self.probe_host = probe_host  # check the host for listeners on the port
        self._lock = threading.Lock()

    # -- queries -------------------------------------------------------------------

    def rules_for(self, vm_id: str) -> list[PortRule]:
        rows = self.store.query(
            "SELECT * FROM published_ports WHERE vm_id = ? ORDER BY host_port, proto", (vm_id,)
        )
        return [_rule(r) for r in rows]

    def all_rules(self) -> dict[str, list[PortRule]]:
        """vm_id → its published ports."""
        found: dict[str, list[PortRule]] = {}
        for r in self.store.query("SELECT * FROM published_ports ORDER BY host_port, proto"):
            found.setdefault(str(r["vm_id"]), []).append(_rule(r))
        return found

    # -- validation ----------------------------------------------------------------

    def validate(self, options: dict[str, Any]) -> None:
        """Early check of a create request (before anything is made)."""
        self._check(self._parse_all(options.get("publish") or []), vm_id=None)

    def _parse_all(self, specs: list[str]) -> list[PortRule]:
        rules = [parse_spec(s) for s in specs]
        for i, a in enumerate(rules):
            for b in rules[:i]:
                if _overlap(a, b):
                    raise InvalidInput(f"--publish {a} and {b} use the same host port")
        return rules

    def _check(self, rules: list[PortRule], vm_id: str | None) -> None:
        taken = self.store.query(
            "SELECT p.*, v.name AS owner, v.state AS owner_state FROM published_ports p "
            "JOIN vms v ON v.id = p.vm_id"
        )
        for rule in rules:
            for row in taken:
                other = _rule(row)
                if row["vm_id"] != vm_id and _overlap(rule, other):
                    raise Conflict(
                        f"host port {rule.host_port}/{rule.proto} is already published by VM "
                        f"`{row['owner']}` ({other}, {row['owner_state']})",
                        hint=f"pick another host port, or `banger vm unpublish {row['owner']} "
                        f"{other}`",
                    )
            if self.probe_host:
                self._probe(rule)

    def _probe(self, rule: PortRule) -> None:
        """Refuse a port a program on the host already listens on (DNAT would hide it)."""

        def bind() -> int:
            kind = socket.SOCK_STREAM if rule.proto == "tcp" else socket.SOCK_DGRAM
            with socket.socket(socket.AF_INET, kind) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((rule.host_addr, rule.host_port))
                except OSError as exc:
                    return exc.errno or -1
            return 0

        code = call_in_netns(self.netns, bind)
        if code == errno.EADDRINUSE:
            raise Conflict(
                f"host port {rule.host_addr}:{rule.host_port}/{rule.proto} is in use by a "
                "program on the host",
                hint=f"pick another host port (`ss -lnp 'sport = :{rule.host_port}'` shows "
                "the program)",
            )
        if code == errno.EADDRNOTAVAIL:
            raise InvalidInput(
                f"--publish {rule}: {rule.host_addr} is not an address of this host",
                hint="use one of the host's addresses (`ip -4 addr`), 127.0.0.1, or omit it",
            )
        # EACCES (a low port without privilege) says nothing about listeners: DNAT
        # needs no bind, so the port can be published anyway.

    # -- lifecycle -----------------------------------------------------------------

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        rules = self._parse_all(list(ctx.options.get("publish") or []))
        if rules:
            await asyncio.to_thread(self._insert, vm, rules)
            ctx.progress("publish", ", ".join(str(r) for r in rules))

    def _insert(self, vm: VMRecord, rules: list[PortRule]) -> None:
        with self._lock:  # check-then-insert is atomic among this daemon's requests
            self._check(rules, vm.id)
            now = time.time()
            try:
                with self.store.transaction() as db:
                    for r in rules:
                        db.execute(
                            "INSERT INTO published_ports VALUES (?, ?, ?, ?, ?, ?)",
                            (vm.id, r.proto, r.host_addr, r.host_port, r.guest_port, now),
                        )
            except sqlite3.IntegrityError as exc:  # the same VM asked twice
                raise Conflict(
                    f"VM `{vm.name}` already publishes one of {', '.join(map(str, rules))}",
                    hint=f"`banger vm ports {vm.name}` lists what it publishes",
                ) from exc

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        await self.apply(vm)

    async def apply(self, vm: VMRecord) -> None:
        """Make the table match the stored rows for a running (or booting) VM."""
        if vm.ip is None:
            return
        rules = self.rules_for(vm.id)
        if rules or find_tool("nft") is not None:
            await asyncio.to_thread(self._set, vm.ip, rules)
        if rules:
            log.info("vm %s: published %s", vm.name, ", ".join(map(str, rules)))

    def _set(self, ip: str, rules: list[PortRule]) -> None:
        nat.set_published(ip, rules, self.bridge, self.subnet, netns=self.netns)

    async def detach(self, vm: VMRecord) -> None:
        await self._remove_quietly(vm)

    async def destroy(self, vm: VMRecord) -> None:
        await self._remove_quietly(vm)
        self.store.delete("published_ports", "vm_id", vm.id)

    async def _remove_quietly(self, vm: VMRecord) -> None:
        # On stop and rollback raising would hide the real error; a rule left behind
        # is removed by `reclaim` at the next daemon start.
        if vm.ip is None or find_tool("nft") is None:
            return
        try:
            await asyncio.to_thread(self._set, vm.ip, [])
        except Exception as exc:
            log.warning("vm %s: could not remove published ports: %s", vm.name, exc)

    # -- live changes ----------------------------------------------------------------

    async def publish(self, vm: VMRecord, specs: list[str]) -> list[PortRule]:
        """Add published ports to `vm`; live when it runs. All or nothing."""
        rules = self._parse_all(specs)
        if not rules:
            raise InvalidInput("nothing to publish", hint=SPEC_HINT)
        await asyncio.to_thread(self._insert, vm, rules)
        if vm.running:
            try:
                await self.apply(vm)
            except BaseException:
                self._delete(vm.id, rules)
                await self._reapply_quietly(vm)
                raise
        return rules

    async def unpublish(self, vm: VMRecord, specs: list[str]) -> list[PortRule]:
        """Remove published ports, named as published or by `[ADDR:]HOST_PORT[/proto]`."""
        mine = self.rules_for(vm.id)
        gone: list[PortRule] = []
        for spec in specs:
            match = [r for r in mine if _names(spec, r)]
            if not match:
                have = ", ".join(map(str, mine)) or "nothing"
                raise NotFound(
                    f"VM `{vm.name}` does not publish {spec}",
                    hint=f"it publishes {have}",
                )
            gone += [r for r in match if r not in gone]
        self._delete(vm.id, gone)
        if vm.running:
            await self.apply(vm)
        return gone

    def _delete(self, vm_id: str, rules: list[PortRule]) -> None:
        with self.store.transaction() as db:
            for r in rules:
                db.execute(
                    "DELETE FROM published_ports WHERE vm_id = ? AND proto = ? AND "
                    "host_addr = ? AND host_port = ?",
                    (vm_id, r.proto, r.host_addr, r.host_port),
                )

    async def _reapply_quietly(self, vm: VMRecord) -> None:
        try:
            await self.apply(vm)
        except Exception as exc:
            log.warning("vm %s: could not restore published ports: %s", vm.name, exc)

    # -- daemon start --------------------------------------------------------------

    async def reclaim(self, vms: list[VMRecord]) -> None:
        """At daemon start (after re-adoption): rules only for the running VMs, exactly
        their stored ones. Without VMs the host is left alone (network on first use)."""
        if vms:
            running = {vm.ip: vm.id for vm in vms if vm.running and vm.ip}
            log.info("published ports reclaim: %s", await self.reclaim_running(running))

    async def reclaim_running(self, running: dict[str, str]) -> dict[str, list[str]]:
        """`running`: address → vm id of the running VMs. Rules of any other address go;
        running VMs get exactly their stored rules back."""
        return await asyncio.to_thread(self._reclaim, running)

    def _reclaim(self, running: dict[str, str]) -> dict[str, list[str]]:
        report: dict[str, list[str]] = {"removed": [], "restored": []}
        if find_tool("nft") is None:
            return report
        present: dict[str, set[PortRule]] = {}
        for entry in nat.list_published(netns=self.netns):
            present.setdefault(entry.ip, set()).add(entry.rule)
        stored = self.all_rules()
        for ip in sorted(set(present) - set(running)):
            self._set(ip, [])
            report["removed"].append(ip)
        for ip, vm_id in sorted(running.items()):
            want = stored.get(vm_id, [])
            if set(want) != present.get(ip, set()):
                self._set(ip, want)
                report["restored"].append(ip)
        if report["removed"] or report["restored"]:
            log.info("published ports reclaim: %s", report)
        return report


def _names(spec: str, rule: PortRule) -> bool:
    """Does `spec` (as published, or `[ADDR:]HOST_PORT[/proto]`) name `rule`?"""
    spec = spec.strip()
    try:
        return parse_spec(spec) == rule
    except InvalidInput:
        pass
    m = re.match(r"^(?:(?P<addr>[0-9.]+):)?(?P<port>\d+)(?:/(?P<proto>\w+))?$", spec)
    if m is None:
        return False
    if m["addr"] and m["addr"] != rule.host_addr:
        return False
    return int(m["port"]) == rule.host_port and (m["proto"] or "tcp").lower() == rule.proto


def _rule(row: dict[str, Any]) -> PortRule:
    return PortRule(
        str(row["proto"]), str(row["host_addr"]), int(row["host_port"]), int(row["guest_port"])
    )
