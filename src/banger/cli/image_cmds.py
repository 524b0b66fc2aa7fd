"""`banger image list|pull|build|show|rm|register|promote`."""

from __future__ import annotations

import click

from banger.api.models import BuildImage, PullOciImage, RegisterImage
from banger.cli.common import client, follow, json_option
from banger.cli.output import out, print_json
from banger.units import format_size, format_time


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

    t = Table("name", "managed", "kernel", "work-seed", "size", "min memory", "created")
    for i in images:
        t.add_row(
            i.name,
            "yes" if i.managed else "no",
            i.kernel or (i.vmlinux or "-"),
            "yes" if i.work_seed else "no (slow path)",
            format_size(i.size_bytes),
            format_size(i.min_memory_mib * 1024**2) if i.min_memory_mib else "-",
            format_time(i.created_at),
        )
    out.print(t)


def _default_authfile() -> str | None:
    """The containers auth file skopeo/podman/docker would use for this user, if any:
    $REGISTRY_AUTH_FILE, ${XDG_RUNTIME_DIR}/containers/auth.json,
    ~/.config/containers/auth.json, ~/.docker/config.json. Sent with the request
    because the daemon may run as another user."""
    import os

    home = os.path.expanduser("~")
    candidates = [
        os.environ.get("REGISTRY_AUTH_FILE", ""),
        os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent"), "containers/auth.json"),
        os.path.join(
            os.environ.get("XDG_CONFIG_HOME", os.path.join(home, ".config")),
            "containers/auth.json",
        ),
        os.path.join(os.environ.get("DOCKER_CONFIG", os.path.join(home, ".docker")), "config.json"),
    ]
    return next((os.path.abspath(p) for p in candidates if p and os.path.isfile(p)), None)


def _absolute_archive(ref: str) -> str:
    """oci-archive:/docker-archive:/oci: paths made absolute (the daemon has cwd /)."""
    import os

    for transport in ("oci-archive:", "docker-archive:", "oci:"):
        if ref.startswith(transport):
            path, sep, rest = ref[len(transport) :].partition(":")
            return f"{transport}{os.path.abspath(path) if path else path}{sep}{rest}"
    return ref


@image.command()
@click.argument("ref", default="debian-bookworm")
@click.option("--name", help="Image name (default: from REF, e.g. test/app:1 -> test-app).")
@click.option(
    "--authfile",
    type=click.Path(dir_okay=False),
    help="Registry credentials (default: the containers/docker auth file of this user).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plain HTTP / unverified TLS to the registry (always allowed on loopback).",
)
@json_option
def pull(ref: str, name: str | None, authfile: str | None, insecure: bool, as_json: bool) -> None:
    """Build a catalog image (default: debian-bookworm) or pull an OCI image.

    REF is a catalog name (a plain word), or an OCI reference:
    REGISTRY/NAME[:TAG][@sha256:DIGEST], oci-archive:PATH[:TAG],
    docker-archive:PATH or oci:DIR[:TAG]."""
    import os

    c = client()
    if "/" not in ref and ":" not in ref and "@" not in ref:  # a catalog name
        if name or authfile or insecure:
            raise click.UsageError("--name, --authfile and --insecure are for OCI references")
        follow(c.pull_image(ref), f"pulling image {ref}", quiet=as_json)
        result_name = ref
    else:
        req = PullOciImage(
            ref=_absolute_archive(ref),
            name=name,
            authfile=os.path.abspath(authfile) if authfile else _default_authfile(),
            insecure=insecure,
        )
        started = c.pull_oci_image(req)
        try:
            op = follow(started, f"pulling {ref}", quiet=as_json)
        except KeyboardInterrupt:
            c.cancel(started.id)  # Ctrl-C cancels the pull; it removes what it made
            raise
        result_name = str((op.result or {}).get("name") or name or ref)
    img = c.image(result_name)
    if as_json:
        print_json(img)
    else:
        out.print(f"image [bold]{result_name}[/] ready: {img.rootfs}")


@image.command()
@click.option("--from", "base", required=True, metavar="BASE", help="Image to start from.")
@click.option("--name", required=True, help="Name of the new image.")
@click.option("--size", help="Grow the root filesystem to this, e.g. 4G (default: BASE's).")
@click.option(
    "--package", "packages", multiple=True, metavar="PKG", help="Debian package (repeatable)."
)
@click.option(
    "--script", "scripts", multiple=True, metavar="FILE", help="Script to run (repeatable)."
)
@click.option(
    "--file", "files", multiple=True, metavar="SRC:DST", help="Copy a host file (repeatable)."
)
@click.option("--nat", is_flag=True, help="Let scripts reach the internet (apt always does).")
@json_option
def build(
    base: str,
    name: str,
    size: str | None,
    packages: tuple[str, ...],
    scripts: tuple[str, ...],
    files: tuple[str, ...],
    nat: bool,
    as_json: bool,
) -> None:
    """Build an image: boot BASE, copy files, install packages, run scripts, keep
    the result. Steps run in that order; Ctrl-C cancels and leaves nothing behind."""
    import os

    from banger.imagespec import check_package, parse_file_spec
    from banger.units import parse_size

    if size is not None:
        parse_size(size)
    for p in packages:
        check_package(p)
    abs_files = []
    for spec in files:
        f = parse_file_spec(spec)
        abs_files.append(f"{os.path.abspath(os.path.expanduser(f.src))}:{f.dest}")
    req = BuildImage(
        name=name,
        base=base,
        size=size,
        packages=list(packages),
        scripts=[os.path.abspath(os.path.expanduser(s)) for s in scripts],
        files=abs_files,
        nat=nat,
    )
    c = client()
    follow(
        c.build_image(req),
        f"building image {name}",
        quiet=as_json,
        cancel_on_interrupt=True,
        output_stage="output",
    )
    img = c.image(name)
    if as_json:
        print_json(img)
    else:
        out.print(f"[green]✓[/] image [bold]{name}[/] built from {base}: {img.rootfs}")
        out.print(f"  try it: banger vm run {name}")


@image.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show an image's files, kernel and provenance."""
    img = client().image(name)
    if as_json:
        print_json(img)
        return
    for key, val in img.model_dump(exclude={"info", "min_memory_mib", "min_memory_reason"}).items():
        out.print(f"{key:<10} {val}")
    if img.min_memory_mib:
        why = f" ({img.min_memory_reason})" if img.min_memory_reason else ""
        out.print(f"{'min memory':<10} {img.min_memory_mib} MiB{why}", markup=False)
    for key, val in img.info.items():
        if val is not None and not isinstance(val, (dict, list)):
            out.print(f"{key:<10} {val}")
    oci = img.info.get("oci") or {}
    for key in ("reference", "digest", "platform", "entrypoint", "cmd", "workdir", "user"):
        val = oci.get(key)
        if val:
            shown = " ".join(val) if isinstance(val, list) else val
            out.print(f"{key:<10} {shown}")
    for env in oci.get("env") or []:
        out.print(f"{'env':<10} {env}")
    if oci.get("ports"):
        out.print(f"{'ports':<10} {' '.join(oci['ports'])}")
    if img.info.get("cmdline"):
        out.print(f"{'cmdline':<10} {' '.join(img.info['cmdline'])}")
    for tool, t in (img.info.get("tools") or {}).items():
        state = "installed" if t.get("installed") else f"skipped: {t.get('skipped')}"
        out.print(f"{'tool':<10} {tool} {t.get('version')} ({t.get('package')}) {state}")
    b = img.info.get("build")
    if isinstance(b, dict):
        base = b.get("base", "")
        if b.get("base_rootfs_sha256"):
            base += f" (rootfs sha256 {b['base_rootfs_sha256'][:16]}…)"
        out.print(f"{'base':<10} {base}")
        out.print(f"{'digest':<10} {b.get('digest', '')}")
        for n, step in enumerate(b.get("steps") or [], 1):
            out.print(
                f"{'step':<10} {n}. {step.get('kind'):<8} {step.get('what')}  "
                f"[dim]sha256 {str(step.get('sha256'))[:16]}…[/]"
            )
        if not b.get("steps"):
            out.print(f"{'step':<10} (none: a copy of the base)")


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
