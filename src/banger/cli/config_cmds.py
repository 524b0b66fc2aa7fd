"""`banger config show`."""

from __future__ import annotations

import click

from banger.cli.common import json_option
from banger.cli.output import out, print_json
from banger.config import load_config
from banger.paths import default_paths


@click.group()
def config() -> None:
    """Inspect configuration (~/.config/banger/config.toml)."""


@config.command()
@json_option
def show(as_json: bool) -> None:
    """Print the effective config and where each value came from."""
    loaded = load_config(default_paths())
    rows = loaded.explain()
    if as_json:
        print_json({"path": str(loaded.path), "values": rows})
        return
    from rich.table import Table

    table = Table(title=f"config ({loaded.path})", title_justify="left")
    table.add_column("key")
    table.add_column("value")
    table.add_column("source")
    for r in rows:
        style = "" if r["source"] == "default" else "bold"
        table.add_row(r["key"], repr(r["value"]), r["source"], style=style)
    out.print(table)
