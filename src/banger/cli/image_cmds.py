"""`banger image list|pull|show|rm|register|promote`."""

from __future__ import annotations

import click

from banger.api.models import RegisterImage
from banger.cli.common import client, follow, json_option
from banger.cli.kernel_cmds import _when
from banger.cli.output import out, print_json
from banger.units import format_size


@click.group()
def image() -> None:
    """Root filesystem images (rootfs + work-seed)."""


@image.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List images."""
    images = client().images()
    if as_json:
        print_json(images)
        return
    if not images:
        out.print("no images yet: `banger image pull debian-bookworm`")
        return
    from rich.table import Table

    t = Table("name", "managed", "kernel", "work-seed", "size", "created")
    for i in images:
        t.add_row(
            i.name,
            "yes" if i.managed else "no",
            i.kernel or (i.vmlinux or "-"),
            "yes" if i.work_seed else "no (slow path)",
            format_size(i.size_bytes),
            _when(i.created_at),
        )
    out.print(t)


@image.command()
@click.argument("name", default="debian-bookworm")
@json_option
def pull(name: str, as_json: bool) -> None:
    """Build or fetch a catalog image (default: debian-bookworm)."""
    c = client()
    follow(c.pull_image(name), f"pulling image {name}", quiet=as_json)
    img = c.image(name)
    if as_json:
        print_json(img)
    else:
        out.print(f"image [bold]{name}[/] ready: {img.rootfs}")


@image.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show an image's files, kernel and provenance."""
    img = client().image(name)
    if as_json:
        print_json(img)
        return
    for key, val in img.model_dump(exclude={"info"}).items():
        out.print(f"{key:<10} {val}")
    for key, val in img.info.items():
        if not isinstance(val, (dict, list)):
            out.print(f"{key:<10} {val}")
    for tool, t in (img.info.get("tools") or {}).items():
        state = "installed" if t.get("installed") else f"skipped: {t.get('skipped')}"
        out.print(f"{'tool':<10} {tool} {t.get('version')} ({t.get('package')}) {state}")


@image.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even if VMs use it (they will not start).")
def rm(name: str, force: bool) -> None:
    """Remove an image (managed files are deleted; registered files stay)."""
    res = client().remove_image(name, force=force)
    out.print(
        f"removed image {name}"
        + (f"; broke: {', '.join(res['broken'])}" if res.get("broken") else "")
    )


@image.command()
@click.option("--name", required=True, help="Name for the image.")
@click.option(
    "--rootfs", required=True, type=click.Path(dir_okay=False), help="ext4 root filesystem."
)
@click.option("--work-seed", type=click.Path(dir_okay=False), help="ext4 holding /root.")
@click.option("--kernel", "kernel_name", help="A pulled kernel to boot it with.")
@click.option("--vmlinux", type=click.Path(dir_okay=False), help="Or: an ELF vmlinux.")
@click.option("--initrd", type=click.Path(dir_okay=False), help="initramfs for --vmlinux.")
@json_option
def register(
    name: str,
    rootfs: str,
    work_seed: str | None,
    kernel_name: str | None,
    vmlinux: str | None,
    initrd: str | None,
    as_json: bool,
) -> None:
    """Record an unmanaged image whose files stay where they are."""
    import os

    req = RegisterImage(
        name=name,
        rootfs=os.path.abspath(rootfs),
        work_seed=os.path.abspath(work_seed) if work_seed else None,
        kernel=kernel_name,
        vmlinux=os.path.abspath(vmlinux) if vmlinux else None,
        initrd=os.path.abspath(initrd) if initrd else None,
    )
    img = client().register_image(req)
    if as_json:
        print_json(img)
    else:
        out.print(f"registered image [bold]{name}[/] ({img.rootfs})")


@image.command()
@click.argument("name")
def promote(name: str) -> None:
    """Copy a registered image into managed storage."""
    c = client()
    follow(c.promote_image(name), f"promoting image {name}")
    out.print(f"image [bold]{name}[/] is now managed: {c.image(name).rootfs}")
