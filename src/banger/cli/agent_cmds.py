"""`banger vm health` and `banger vm ports`: the guest agent's answers."""

from __future__ import annotations

import sys
from typing import Any

import click

from banger.cli.common import client, json_option
from banger.cli.output import out, print_json
from banger.units import format_duration, format_size


def _disk(d: Any) -> str:
    if not isinstance(d, dict) or not d.get("total_bytes"):
        return "-"
    used, total = int(d.get("used_bytes", 0)), int(d["total_bytes"])
    return f"{format_size(used)} / {format_size(total)} ({100 * used // total}%)"


@click.command()
@click.argument("name")
@json_option
def health(name: str, as_json: bool) -> None:
    """Ask the VM's guest agent whether it is healthy (exit 1 if not)."""
    h = client().vm_health(name)
    if as_json:
        print_json(h)
    elif h.get("healthy"):
        info = h.get("info") or {}
        mem = info.get("memory") or {}
        load = info.get("load") or []
        out.print(f"[green]✓[/] {name}: agent ok ({h.get('latency_ms', '?')} ms, {h['transport']})")
        rows = [
            ("hostname", info.get("hostname", "-")),
            ("kernel", info.get("kernel", "-")),
            ("uptime", format_duration(info.get("uptime_s"))),
            ("load", " ".join(f"{x:.2f}" for x in load) or "-"),
            (
                "memory",
                f"{format_size(mem['available_bytes'])} free of {format_size(mem['total_bytes'])}"
                if "total_bytes" in mem and "available_bytes" in mem
                else "-",
            ),
            ("disk /", _disk((info.get("disk") or {}).get("/"))),
            ("disk /root", _disk((info.get("disk") or {}).get("/root"))),
            ("agent", str(info.get("agent_version", "-"))),
        ]
        for key, value in rows:
            out.print(f"  {key:<11}{value}")
    else:
        color = "yellow" if h.get("agent") in ("absent", "stopped") else "red"
        out.print(f"[{color}]✗[/] {name}: agent: {h.get('detail') or h.get('agent')}")
        if h.get("hint"):
            out.print(f"  [dim]hint: {h['hint']}[/]")
    if not h.get("healthy"):
        sys.exit(1)


@click.command()
@click.argument("name")
@json_option
def ports(name: str, as_json: bool) -> None:
    """List listening TCP ports in the VM (through its guest agent)."""
    data = client().vm_ports(name)
    items: list[dict[str, Any]] = data.get("ports", [])
    if as_json:
        print_json(data)
        return
    if not items:
        out.print(f"nothing listens on TCP in {name}")
        return
    from rich.table import Table

    t = Table("port", "address", "process", "link")
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
        t.add_row(str(port), addr, proc, link)
    out.print(t)


def attach(group: click.Group) -> None:
    """Add `health` and `ports` to the `vm` group."""
    group.add_command(health)
    group.add_command(ports)
