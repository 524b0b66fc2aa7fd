"""`banger doctor`: runs locally so it works before anything else is set up."""

from __future__ import annotations

import sys

import click

from banger.cli.common import json_option
from banger.cli.output import out, print_json
from banger.config import load_config
from banger.paths import default_paths
from banger.services.doctor import run_doctor

_MARK = {"ok": "[green]OK  [/]", "warn": "[yellow]WARN[/]", "fail": "[red]FAIL[/]"}


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check the host: tools, KVM, engines, privileges, dirs, artifacts."""
    paths = default_paths()
    report = run_doctor(paths, load_config(paths).config)
    if as_json:
        print_json(report)
    else:
        for status in ("fail", "warn", "ok"):
            checks = [c for c in report.checks if c.status == status]
            if not checks:
                continue
            out.print(f"\n[bold]{status.upper()}[/] ({len(checks)})")
            for c in checks:
                out.print(f"  {_MARK[c.status]} {c.group}/{c.name}: {c.detail}")
                if c.fix:
                    out.print(f"         [dim]fix:[/] {c.fix}")
        n_fail = sum(c.status == "fail" for c in report.checks)
        out.print(
            f"\n{'[red]' if n_fail else '[green]'}{n_fail} required check(s) failing[/]"
            if n_fail
            else "\n[green]ready[/]"
        )
    if report.failed:
        sys.exit(1)
