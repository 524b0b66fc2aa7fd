"""`banger kernel list|pull|build|show|rm`."""

from __future__ import annotations

import contextlib
import os
import time

import click

from banger.api.models import KernelBuild
from banger.cli.common import client, follow, json_option
from banger.cli.output import err, out, print_json
from banger.errors import BangerError, Cancelled, InvalidInput
from banger.units import format_size, format_time


@click.group()
def kernel() -> None:
    """Guest kernels for microVMs: pulled from Debian (vmlinux + initramfs) or built."""


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

    t = Table("name", "kind", "package", "version", "release", "size", "created")
    for k in kernels:
        t.add_row(
            k.name,
            k.kind,
            k.package,
            k.version,
            k.kernel_release,
            format_size(k.size_bytes),
            format_time(k.created_at),
        )
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
@click.option("--name", default="micro-6.1", show_default=True, help="Name of the kernel.")
@click.option(
    "--source",
    default="linux-source-6.1",
    show_default=True,
    help="Debian kernel source package, fetched with the host's apt.",
)
@click.option(
    "--config-fragment",
    "fragment",
    type=click.Path(dir_okay=False),
    help="Kconfig fragment (CONFIG_X=y lines) merged over banger's microvm.config.",
)
@click.option("--jobs", "-j", type=int, default=0, help="Parallel compile jobs [one per CPU].")
@json_option
def build(name: str, source: str, fragment: str | None, jobs: int, as_json: bool) -> None:
    """Compile a microVM kernel (no modules, no initramfs) from Debian's kernel source.

    The first build downloads and unpacks the source and compiles everything; the
    objects are kept, so a later build with a changed fragment recompiles only what
    changed, and an unchanged one is a no-op. Ctrl-C cancels the build.
    """
    text = None
    if fragment is not None:
        try:
            with open(fragment, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise InvalidInput(
                f"cannot read --config-fragment {fragment}: {why}",
                hint="pass a text file of CONFIG_X=y lines",
            ) from exc
    c = client()
    req = KernelBuild(
        name=name,
        source=source,
        fragment=text,
        fragment_origin=os.path.abspath(fragment) if fragment else None,
        jobs=jobs,
    )
    started = time.monotonic()
    op = c.build_kernel(req)
    try:
        follow(op, f"building kernel {name}", quiet=as_json)
    except KeyboardInterrupt:
        err.print("cancelling the build…")
        c.cancel(op.id)
        with contextlib.suppress(BangerError):
            c.wait(op)  # until the build has stopped make and removed its temp files
        raise Cancelled(f"kernel build {name} cancelled; nothing was kept") from None
    k = c.kernel(name)
    if as_json:
        print_json(k)
    else:
        took = time.monotonic() - started
        out.print(
            f"kernel [bold]{name}[/] ready: {k.kernel_release} from {k.package} {k.version} "
            f"({format_size(k.size_bytes)}, {took:.0f} s) — boot it with "
            f"`banger vm run --kernel {name}`"
        )


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
