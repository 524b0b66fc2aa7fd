"""`banger kernel list|pull|show|rm`."""

from __future__ import annotations

import datetime as dt

import click

from banger.cli.common import client, follow, json_option
from banger.cli.output import out, print_json
from banger.units import format_size


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


@click.group()
def kernel() -> None:
    """Guest kernels (vmlinux + initramfs) for microVMs."""


@kernel.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List pulled kernels."""
    kernels = client().kernels()
    if as_json:
        print_json(kernels)
        return
    if not kernels:
        out.print("no kernels yet: `banger kernel pull debian-6.1`")
        return
    from rich.table import Table

    t = Table("name", "package", "version", "size", "pulled")
    for k in kernels:
        t.add_row(k.name, k.package, k.version, format_size(k.size_bytes), _when(k.created_at))
    out.print(t)


@kernel.command()
@click.argument("name", default="debian-6.1")
@json_option
def pull(name: str, as_json: bool) -> None:
    """Fetch and prepare a catalog kernel (default: debian-6.1)."""
    c = client()
    follow(c.pull_kernel(name), f"pulling kernel {name}", quiet=as_json)
    k = c.kernel(name)
    if as_json:
        print_json(k)
    else:
        out.print(f"kernel [bold]{name}[/] ready: {k.package} {k.version} ({k.path})")


@kernel.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show a kernel's files and provenance."""
    k = client().kernel(name)
    if as_json:
        print_json(k)
        return
    for key, val in k.model_dump().items():
        out.print(f"{key:<11} {val}")


@kernel.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even if VMs use it (they will not boot).")
def rm(name: str, force: bool) -> None:
    """Remove a pulled kernel."""
    res = client().remove_kernel(name, force=force)
    out.print(
        f"removed kernel {name}"
        + (f"; broke: {', '.join(res['broken'])}" if res.get("broken") else "")
    )
