"""`banger vm …`: the VM lifecycle."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from banger.cli.common import after_daemon_loss, client, follow, json_option
from banger.cli.output import err, escape, out, print_json, print_table
from banger.client import Client
from banger.engine_names import ENGINE_CHOICES
from banger.errors import BangerError, DaemonUnavailable
from banger.sizing import precheck
from banger.units import format_duration, format_size

if TYPE_CHECKING:
    from banger.api.models import VM, Operation

# `vm list` and `vm show` read the daemon's JSON as it comes (`Client.vm_rows`): the
# pydantic models are imported only by the commands that send or build them.

ENGINES = click.Choice(ENGINE_CHOICES)


@click.group()
def vm() -> None:
    """Create, run and manage microVMs."""


def _uptime(v: dict[str, Any]) -> str:
    if v["state"] != "running" or not v.get("started_at"):
        return "-"
    return format_duration(time.time() - float(v["started_at"]))


@vm.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List VMs."""
    vms = client().vm_rows()
    if as_json:
        print_json(vms)
        return
    if not vms:
        sys.stdout.write("no VMs yet: `banger vm run` creates one and opens a shell\n")
        return
    colors = {"running": "green", "stopped": "dim", "error": "red", "suspended": "cyan"}
    print_table(
        ["name", "state", "ip", "image", "engine", "cpu", "mem", "uptime"],
        [
            [
                v["name"],
                (v["state"], colors.get(v["state"], "yellow")),
                v.get("ip") or "-",
                v["image"],
                v["engine"],
                str(v["vcpus"]),
                format_size(int(v["memory_mib"]) * 1024**2),
                _uptime(v),
            ]
            for v in vms
        ],
    )


F = TypeVar("F", bound=Callable[..., Any])

_publish_option = click.option(
    "-p",
    "--publish",
    multiple=True,
    metavar="[ADDR:]HOST:GUEST[/udp]",
    help="Publish a guest port on the host, like Docker's -p (repeatable).",
)


def _create_options(f: F) -> F:
    for opt in reversed(
        [
            click.option("--name", help="VM name (DNS label; default: generated)."),
            click.option("--image", help="Image (default: debian-bookworm)."),
            click.option("--kernel", help="Kernel (default: the image's)."),
            click.option("--vcpus", type=int, help="Virtual CPUs."),
            click.option("--memory", help="Memory, e.g. 1G, 512M."),
            click.option("--disk-size", help="Root disk size, e.g. 4G."),
            click.option("--work-size", help="/root work disk size, e.g. 2G."),
            click.option("--engine", type=ENGINES, help="Hypervisor (default from config)."),
            click.option("--nat", is_flag=True, help="Give the VM internet access."),
            _publish_option,
            click.option(
                "--cold", is_flag=True, help="Boot, even when a golden snapshot could be restored."
            ),
            click.option(
                "--from",
                "from_snapshot",
                metavar="SNAP",
                help="Fork: restore a named snapshot (`banger vm snapshot`) as a new VM.",
            ),
        ]
    ):
        f = opt(f)
    return f


def _create(quiet: bool, **kw: Any) -> VM:
    """Check what can be checked here, then create through the daemon (started if need be)."""
    from banger.api.models import CreateVM

    kw["publish"] = list(kw.get("publish") or ())
    req = CreateVM.model_validate({k: v for k, v in kw.items() if v is not None})
    precheck(vcpus=req.vcpus, memory=req.memory, disk_size=req.disk_size, work_size=req.work_size)
    c = client()
    op = c.create_vm(req)
    final = follow(op, f"creating {op.target}", quiet=quiet)
    vm_ = c.vm(final.result["name"])
    return vm_


@vm.command()
@_create_options
@json_option
def create(as_json: bool, **kw: object) -> None:
    """Create and boot a VM; returns when SSH is ready."""
    v = _create(as_json, **kw)
    if as_json:
        print_json(v)
        return
    total = v.timings.get("total", 0.0)
    out.print(f"[green]✓[/] {v.name} is running at {v.ip} (ready in {total:.1f}s)")
    out.print(f"  connect: banger vm ssh {v.name}")
    for p in v.ports:
        out.print(f"  published: {_port_line(p.model_dump())}")


def _port_line(p: dict[str, Any]) -> str:
    """One published port (`api.models.PublishedPort` as JSON) as `vm show` prints it."""
    host = "*" if p["host_addr"] == "0.0.0.0" else p["host_addr"]
    return f"{host}:{p['host_port']}/{p['proto']} -> {p['guest_port']}"


def _fan_out(names: tuple[str, ...], action: str, verb: str, **params: object) -> None:
    """Run one action on several VMs concurrently; report each; exit 1 if any failed."""
    from concurrent.futures import ThreadPoolExecutor

    c = client()

    lost = False

    def one(name: str) -> tuple[str, str | None, str]:
        nonlocal lost
        op: Operation | None = None
        try:
            with Client(c.paths) as own:
                if action == "delete":
                    op = own.delete_vm(name, force=bool(params.get("force")))
                else:
                    op = own.vm_action(name, action, **params)
                final = own.wait(op)
            result = final.result if isinstance(final.result, dict) else {}
            if action == "stop" and result.get("state") == "deleted":
                return name, None, "was still being created: create cancelled, VM removed"
            return name, None, verb
        except BangerError as exc:
            if isinstance(exc, DaemonUnavailable):
                lost = True
                if op is not None:
                    exc = after_daemon_loss(c, op, exc)
            return name, exc.message + (f" ({exc.hint})" if exc.hint else ""), verb

    with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        results = list(pool.map(one, names))
    failed = 0
    for name, error, said in results:
        if error is None:
            out.print(f"[green]✓[/] {name} {said}")
        else:
            failed += 1
            err.print(f"[red]✗[/] {name}: {escape(error)}")
    if failed:
        sys.exit(DaemonUnavailable.exit_code if lost else 1)


@vm.command()
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--cold", is_flag=True, help="Discard a suspended VM's saved state and boot it instead."
)
def start(names: tuple[str, ...], cold: bool) -> None:
    """Start stopped VMs (same disks); a suspended VM resumes where it was."""
    params = {"cold": True} if cold else {}
    if len(names) == 1:
        c = client()
        was = c.vm(names[0]).state
        verb = "resumed" if was == "suspended" and not cold else "started"
        label = "resuming" if verb == "resumed" else "starting"
        follow(c.vm_action(names[0], "start", **params), f"{label} {names[0]}")
        out.print(f"[green]✓[/] {names[0]} {verb}")
        return
    _fan_out(names, "start", "started", **params)


vm.add_command(start, "resume")


@vm.command("snapshot")
@click.argument("name")
@click.option("--as", "as_name", metavar="SNAP", help="Snapshot name (default: NAME-<time>).")
def snapshot_(name: str, as_name: str | None) -> None:
    """Snapshot a running or suspended VM: memory, device state and both disks,
    copied while the guest is paused; a running VM then carries on."""
    c = client()
    final = follow(c.take_snapshot(name, as_name), f"snapshotting {name}")
    result = final.result if isinstance(final.result, dict) else {}
    out.print(f"[green]✓[/] snapshot {result.get('name', as_name)} of {name}")


@vm.command()
@click.argument("names", nargs=-1, required=True)
def suspend(names: tuple[str, ...]) -> None:
    """Save running VMs' memory and device state beside their disks and end their
    processes; `vm start` resumes them where they were."""
    _fan_out(names, "suspend", "suspended")


@vm.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Kill instead of a graceful shutdown.")
def stop(names: tuple[str, ...], force: bool) -> None:
    """Shut VMs down gracefully, keeping their disks (a suspended VM's saved state
    is discarded)."""
    _fan_out(names, "stop", "stopped", force=force)


@vm.command()
@click.argument("names", nargs=-1, required=True)
def restart(names: tuple[str, ...]) -> None:
    """Stop and start VMs."""
    _fan_out(names, "restart", "restarted")


@vm.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Delete even if running.")
def delete(names: tuple[str, ...], force: bool) -> None:
    """Delete VMs and everything they own (disks, address, TAP)."""
    _fan_out(names, "delete", "deleted", force=force)


@vm.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show a VM's details and its last create/start stage timings."""
    v = client().vm_row(name)
    if as_json:
        print_json(v)
        return
    # Plain lines (no rich): values are printed as they are, never read as markup.
    lines = [f"{key:<11} {val}" for key, val in v.items() if key not in ("timings", "ports")]
    ports: list[dict[str, Any]] = v.get("ports") or []
    lines.append(f"{'ports':<11} " + (", ".join(_port_line(p) for p in ports) or "-"))
    timings: dict[str, float] = v.get("timings") or {}
    if timings:
        lines.append("timings    " + "  ".join(f"{k}={s:.2f}s" for k, s in timings.items()))
    sys.stdout.write("\n".join(lines) + "\n")


@vm.command("set")
@click.argument("names", nargs=-1, required=True)
@click.option("--vcpus", type=int)
@click.option("--memory")
@click.option("--nat/--no-nat", default=None)
def set_(names: tuple[str, ...], vcpus: int | None, memory: str | None, nat: bool | None) -> None:
    """Change VM settings (vcpus/memory only while stopped)."""
    from banger.api.models import SetVM

    precheck(vcpus=vcpus, memory=memory)
    c = client()
    req = SetVM(vcpus=vcpus, memory=memory, nat=nat)
    failed = 0
    for n in names:
        try:
            c.set_vm(n, req)
            out.print(f"[green]✓[/] {n} updated")
        except BangerError as exc:
            failed += 1
            hint = f" ({exc.hint})" if exc.hint else ""
            err.print(f"[red]✗[/] {n}: {escape(exc.message + hint)}")
    if failed:
        sys.exit(1)


@vm.command()
@click.argument("name")
@click.argument("specs", nargs=-1, required=True, metavar="[ADDR:]HOST:GUEST[/udp]...")
@json_option
def publish(name: str, specs: tuple[str, ...], as_json: bool) -> None:
    """Publish guest ports on the host (live if the VM runs), like Docker's -p."""
    v = client().publish(name, list(specs))
    if as_json:
        print_json(v)
        return
    for p in v.ports:
        out.print(f"[green]✓[/] {name}: {_port_line(p.model_dump())}")


@vm.command()
@click.argument("name")
@click.argument("specs", nargs=-1, required=True, metavar="[ADDR:]HOST[:GUEST][/udp]...")
def unpublish(name: str, specs: tuple[str, ...]) -> None:
    """Stop publishing ports (by host port, or as they were published)."""
    v = client().publish(name, list(specs), remove=True)
    left = ", ".join(_port_line(p.model_dump()) for p in v.ports) or "no ports"
    out.print(f"[green]✓[/] {name} now publishes {left}")


def _ssh_argv(info: dict[str, object], command: tuple[str, ...], tty: bool) -> list[str]:
    from banger.system.ssh import ssh_options

    argv = ["ssh", *ssh_options(Path(str(info["key"])), Path(str(info["known_hosts"])))]
    argv += ["-o", "ConnectTimeout=10"] + (["-t"] if tty else [])
    argv.append(f"root@{info['ip']}")
    if command:
        argv += ["--", remote_command(command)]
    return argv


def remote_command(command: tuple[str, ...]) -> str:
    """What ssh hands the guest's shell: one argument is a shell command line (as
    with ssh itself: `-- 'echo hi > f'`); several are an argv, quoted so each reaches
    the program exactly (spaces, quotes, `$`, `;`, empty strings)."""
    if len(command) == 1 and command[0]:
        return command[0]
    return shlex.join(command)


def _ssh(c: Client, name: str, command: tuple[str, ...]) -> int:
    from banger.system import run_interactive

    info = c.ssh_info(name)
    if info["state"] != "running":
        raise BangerError(
            f"VM `{name}` is {info['state']}", hint=f"start it with `banger vm start {name}`"
        )
    if not info.get("ssh", True):
        raise BangerError(
            f"VM `{name}` has no SSH server: its image {info.get('image')} has none",
            hint=f"use the agent instead: `banger vm exec {name} -- CMD` "
            f"(`banger vm exec -it {name} -- sh` for a shell)",
        )
    interactive = not command
    rc = run_interactive(_ssh_argv(info, command, tty=interactive and sys.stdin.isatty()))
    if interactive:
        try:
            if c.vm(name).state == "running":
                err.print(
                    f"[dim]{name} is still running; `banger vm stop {name}` stops it "
                    "(its disks are kept)[/]"
                )
        except BangerError:
            pass
    return rc


@vm.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(name: str, command: tuple[str, ...]) -> None:
    """Open a shell in a VM, or run `-- CMD`."""
    sys.exit(_ssh(client(), name, command))


@vm.command()
@click.argument("name")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new output.")
def logs(name: str, follow_: bool) -> None:
    """Print a VM's serial console."""
    path = Path(client().console_log(name))
    if not path.exists():
        raise BangerError(f"no console log for `{name}` yet", hint="it appears when the VM boots")
    with path.open("rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if not follow_:
                return
            time.sleep(0.2)


class _RunCommand(click.Command):
    """`vm run [IMAGE] [-- CMD...]`: everything after `--` is the command, never the
    image (click alone would hand the command's first word to IMAGE)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["banger.command"] = tuple(args[i + 1 :])
            args = args[:i]
        return super().parse_args(ctx, args)


@vm.command(cls=_RunCommand)
@click.argument("image", required=False)
@click.option("--name", help="VM name (default: generated).")
@click.option("--rm", "remove", is_flag=True, help="Delete the VM when the session ends.")
@click.option("--nat", is_flag=True, help="Give the VM internet access.")
@click.option("--engine", type=ENGINES)
@click.option("--kernel", help="Kernel (default: the image's), e.g. one from `kernel build`.")
@_publish_option
@click.pass_context
def run(
    ctx: click.Context,
    image: str | None,
    name: str | None,
    remove: bool,
    nat: bool,
    engine: str | None,
    kernel: str | None,
    publish: tuple[str, ...],
) -> None:
    """Pull what is missing, create a VM, and open a shell in it (or run `-- CMD`).

    IMAGE defaults to the configured default image: `banger vm run --rm -- uname -a`
    runs `uname -a` in a throwaway VM of it."""
    command: tuple[str, ...] = ctx.meta.get("banger.command", ())
    v = _create(
        False,
        name=name,
        image=image,
        nat=nat or None,
        engine=engine,
        kernel=kernel,
        publish=publish,
    )
    c = client()
    out.print(f"[green]✓[/] {v.name} is running at {v.ip}")
    try:
        if c.ssh_info(v.name).get("ssh", True):
            rc = _ssh(c, v.name, command)
        else:  # no SSH server in the image (OCI image on banger-init): the agent runs it
            from banger.cli.exec_cmds import run_exec

            tty = not command and sys.stdin.isatty()
            rc = run_exec(
                v.name,
                command or ("/bin/sh",),
                interactive=True,
                tty=tty,
                env={},
                workdir=None,
                user=None,
                timeout=None,
            )
    finally:
        if remove:
            c.wait(c.delete_vm(v.name, force=True))
            err.print(f"[dim]deleted {v.name}[/]")
    sys.exit(rc)


from banger.cli.agent_cmds import attach  # noqa: E402
from banger.cli.exec_cmds import attach as attach_exec  # noqa: E402

attach(vm)
attach_exec(vm)
