"""`banger vm health` and `banger vm ports`: the guest agent's answers."""

from __future__ import annotations

import sys
from typing import Any

import click

from banger.cli.common import client, json_option
from banger.cli.output import health_color, health_rows, out, print_json
from banger.errors import BangerError


@click.command()
@click.argument("name")
@json_option
def health(name: str, as_json: bool) -> None:
    """Ask the VM's guest agent whether it is healthy (exit 1 if not)."""
    h = client().vm_health(name)
    if as_json:
        print_json(h)
    elif h.get("healthy"):
        out.print(f"[green]✓[/] {name}: agent ok ({h.get('latency_ms', '?')} ms, {h['transport']})")
        for key, value in health_rows(h):
            out.print(f"  {key:<11}{value}")
    else:
        out.print(f"[{health_color(h)}]✗[/] {name}: agent: {h.get('detail') or h.get('agent')}")
        if h.get("hint"):
            out.print(f"  [dim]hint: {h['hint']}[/]")
    if not h.get("healthy"):
        sys.exit(1)


@click.command()
@click.argument("name")
@json_option
def ports(name: str, as_json: bool) -> None:
    """List the VM's published ports, and its listening TCP ports (through its agent)."""
    c = client()
    vm = c.vm(name)
    published = [p.model_dump() for p in vm.ports]
    data: dict[str, Any] = {"name": vm.name, "ip": vm.ip, "ports": [], "published": published}
    agent_error = ""
    if vm.state == "running":
        try:
            data.update(c.vm_ports(name))
        except BangerError as exc:
            agent_error = exc.message
    data["published"] = published
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    if published:
        t = Table("published", "guest port", "proto")
        for p in published:
            host = "*" if p["host_addr"] == "0.0.0.0" else p["host_addr"]
            t.add_row(f"{host}:{p['host_port']}", str(p["guest_port"]), p["proto"])
        out.print(t)
    items: list[dict[str, Any]] = data.get("ports", [])
    if vm.state != "running":
        out.print(f"{name} is {vm.state}: listening ports show while it runs")
        return
    if agent_error:
        out.print(f"listening ports unavailable: {agent_error}")
        return
    if not items:
        out.print(f"nothing listens on TCP in {name}")
        return
    by_guest: dict[int, list[str]] = {}
    for p in published:
        if p["proto"] == "tcp":
            by_guest.setdefault(int(p["guest_port"]), []).append(f"host :{p['host_port']}")
    t = Table("port", "address", "process", "link", "published")
    seen: set[int] = set()
    for p in items:
        port = int(p["port"])
        addr = str(p.get("address", ""))
        loopback = addr.startswith("127.") or addr == "::1"
        link = "" if loopback or port in seen else f"http://{name}.vm:{port}"
        seen.add(port)
        proc = p.get("process") or "-"
        if p.get("pid"):
            proc = f"{proc} ({p['pid']})"
        t.add_row(str(port), addr, proc, link, ", ".join(by_guest.get(port, [])))
    out.print(t)


def attach(group: click.Group) -> None:
    """Add `health` and `ports` to the `vm` group."""
    group.add_command(health)
    group.add_command(ports)
