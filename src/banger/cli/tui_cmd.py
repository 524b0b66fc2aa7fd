"""`banger tui`: the terminal UI. Textual is imported only here, when it runs."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--interval",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0.1, 10.0),
    help="Seconds between refreshes of the VM list.",
)
def tui(interval: float) -> None:
    """Terminal UI: VMs, images, kernels, operations, doctor."""
    from banger.tui.app import run

    run(interval=interval)
