"""`banger snapshot list|show|rm`: named snapshots taken with `banger vm snapshot`."""

from __future__ import annotations

import click

from banger.cli.common import client, json_option
from banger.cli.output import out, print_json
from banger.units import format_size, format_time


@click.group()
def snapshot() -> None:
    """Named snapshots of VMs (memory, device state and both disks)."""


@snapshot.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List snapshots."""
    snaps = client().snapshots()
    if as_json:
        print_json(snaps)
        return
    if not snaps:
        out.print("no snapshots yet: `banger vm snapshot NAME --as SNAP` takes one")
        return
    from rich.table import Table

    t = Table("name", "vm", "image", "engine", "cpu", "mem", "size", "taken")
    for s in snaps:
        t.add_row(
            s.name,
            s.vm,
            s.image,
            s.engine,
            str(s.vcpus),
            format_size(s.memory_mib * 1024**2),
            format_size(s.size_bytes),
            format_time(s.created_at, seconds=True),
        )
    out.print(t)


@snapshot.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show a snapshot: its files, the machine it holds and where it came from."""
    s = client().snapshot(name)
    if as_json:
        print_json(s)
        return
    rows = [
        ("name", s.name),
        ("vm", f"{s.vm} ({s.vm_state} when taken)"),
        ("image / kernel", f"{s.image} / {s.kernel}"),
        ("engine", s.engine),
        ("shape", f"{s.vcpus} vCPU, {format_size(s.memory_mib * 1024**2)}, "
                  f"disk {format_size(s.disk_bytes)}, work {format_size(s.work_bytes)}"),
        ("size", format_size(s.size_bytes)),
        ("dir", s.dir),
        ("taken", format_time(s.created_at, seconds=True)),
    ]  # fmt: skip
    for k, v in rows:
        out.print(f"[bold]{k:>15}[/]  {v}")


@snapshot.command()
@click.argument("names", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> None:
    """Remove snapshots and their files."""
    c = client()
    for name in names:
        out.print(f"[green]✓[/] {c.delete_snapshot(name)} removed")
