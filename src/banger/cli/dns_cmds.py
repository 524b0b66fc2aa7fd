"""`banger dns setup|status|teardown`: `NAME.vm` on the host (systemd-resolved)."""

from __future__ import annotations

import sys
from typing import Any

import click

from banger.cli.common import client, json_option
from banger.cli.output import out, print_json


@click.group()
def dns() -> None:
    """Make `NAME.vm` resolve on the host (systemd-resolved)."""


def _show(s: dict[str, Any]) -> bool:
    """Print a status; True when the host resolves `.vm` through the daemon."""
    link = s.get("link") or {}
    probe = s.get("probe") or {}
    mark = "[green]✓[/]" if s["active"] else "[yellow]✗[/]"
    state = "configured" if s["configured"] else "not configured"
    out.print(f"{mark} host DNS for .vm: {state}; systemd-resolved: {s['resolved']}")
    out.print(f"  bridge    {s['bridge']} → {s['server']} (daemon DNS serving: {s['serving']})")
    servers = " ".join(link.get("servers") or []) or "-"
    domains = " ".join(link.get("domains") or []) or "-"
    out.print(f"  link      dns {servers}; domains {domains}")
    works = False
    if probe:
        got = probe.get("got")
        works = got == probe.get("expected")
        result = got or probe.get("error", "?")
        out.print(f"  resolves  {probe['name']} → {result} {'✓' if works else '✗'}")
    else:
        out.print("  resolves  (no running VM to try)")
    if s.get("fix"):
        out.print(f"  [dim]fix: {s['fix']}[/]")
    elif not s["configured"]:
        out.print("  [dim]fix: `banger dns setup`[/]")
    return bool(s["active"])


@dns.command()
@json_option
def setup(as_json: bool) -> None:
    """Send `*.vm` lookups of the host to the daemon (per-link DNS, `~vm` domain)."""
    s = client().dns("setup")
    if as_json:
        print_json(s)
    elif _show(s):
        out.print(
            "  now try: ssh root@NAME.vm (with `banger vm ssh` keys) or `getent hosts NAME.vm`"
        )


@dns.command()
@json_option
def status(as_json: bool) -> None:
    """Show what is configured and whether a running VM's name resolves (exit 1 if not)."""
    s = client().dns("status")
    if as_json:
        print_json(s)
        ok = bool(s["active"])
    else:
        ok = _show(s)
    if not ok:
        sys.exit(1)


@dns.command()
@json_option
def teardown(as_json: bool) -> None:
    """Remove the host resolver settings `setup` made."""
    s = client().dns("teardown")
    if as_json:
        print_json(s)
    else:
        _show(s)
