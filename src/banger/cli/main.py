"""`banger`: the CLI entry point. Errors become one line plus a hint, never a traceback
(unless --debug)."""

from __future__ import annotations

import os
import sys

# pydantic scans every installed distribution's entry points for plugins at import;
# banger uses none, and the scan is a noticeable slice of a ~150 ms `banger vm list`.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import click

from banger import __version__
from banger.cli.output import err, escape
from banger.errors import BangerError


class LazyGroup(click.Group):
    """Imports a sub-command's module only when it runs: keeps `banger vm list` fast.

    `banger --help` lists the commands from `summary` without importing any of them
    (`tests/test_cli_imports.py` checks each summary against its command's help)."""

    lazy: dict[str, tuple[str, str]] = {
        "daemon": ("banger.cli.daemon_cmds", "daemon"),
        "config": ("banger.cli.config_cmds", "config"),
        "doctor": ("banger.cli.doctor_cmd", "doctor"),
        "dns": ("banger.cli.dns_cmds", "dns"),
        "kernel": ("banger.cli.kernel_cmds", "kernel"),
        "image": ("banger.cli.image_cmds", "image"),
        "vm": ("banger.cli.main", "vm"),
        "snapshot": ("banger.cli.snapshot_cmds", "snapshot"),
        "tui": ("banger.cli.tui_cmd", "tui"),
        "mcp": ("banger.cli.exec_cmds", "mcp"),
    }
    summary: dict[str, str] = {
        "config": "Inspect configuration (~/.config/banger/config.toml).",
        "daemon": "Start, stop and inspect the banger daemon.",
        "dns": "Make `NAME.vm` resolve on the host (systemd-resolved).",
        "doctor": "Check the host: tools, KVM, engines, privileges, dirs, artifacts.",
        "image": "Root filesystem images (rootfs + work-seed).",
        "kernel": "Guest kernels for microVMs: pulled from Debian (vmlinux + initramfs) or built.",
        "mcp": "Serve the Model Context Protocol on stdio (for coding agents).",
        "snapshot": "Named snapshots of VMs (memory, device state and both disks).",
        "tui": "Terminal UI: VMs, images, kernels, operations, doctor.",
        "vm": "Create, run and manage microVMs.",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.lazy)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return None
        import importlib

        module, attr = self.lazy[name]
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def summary_for(self, name: str, limit: int) -> str:
        """`name`'s summary cut to `limit` as click cuts a command's own help."""
        return click.Command(name, help=self.summary[name]).get_short_help_str(limit)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(n, self.summary_for(n, limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class LazyVM(click.Group):
    """`banger vm`: `exec` and `cp` load without the rest of the VM commands (and
    their pydantic models), so a `vm exec` spends its time in the guest, not here."""

    fast: dict[str, tuple[str, str]] = {
        "exec": ("banger.cli.exec_cmds", "exec_"),
        "cp": ("banger.cli.exec_cmds", "cp"),
    }

    def _full(self) -> click.Group:
        from banger.cli.vm_cmds import vm as full

        return full

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._full().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.fast:
            import importlib

            module, attr = self.fast[name]
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return self._full().get_command(ctx, name)


vm = LazyVM("vm", help="Create, run and manage microVMs.")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="banger")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fast, persistent Linux microVMs. Start with `banger vm run`."""
    ctx.obj = {"debug": debug}


def main() -> None:
    debug = "--debug" in sys.argv[1:] or os.environ.get("BANGER_DEBUG") == "1"
    try:
        rv = cli.main(prog_name="banger", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "banger"
        err.print(f"[red]error:[/] {escape(exc.format_message())}")
        err.print(f"[dim]hint:[/] run `{cmd} --help` to see the commands and options")
        sys.exit(2)
    except click.ClickException as exc:
        err.print(f"[red]error:[/] {escape(exc.format_message())}")
        sys.exit(exc.exit_code)
    except BangerError as exc:
        if debug:
            raise
        # Messages name user input and syntax like `[ADDR:]HOST:GUEST[/udp]`: not markup.
        err.print(f"[red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err.print(f"[dim]hint:[/] {escape(exc.hint)}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
