"""Shared CLI output: rich console on stderr/stdout, JSON, errors and progress."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from banger.units import format_duration, format_size

if TYPE_CHECKING:
    from rich.console import Console

    from banger.api.models import Operation, OperationEvent


class _LazyConsole:
    """A rich Console made on first use: `--json` paths never import rich (~60 ms)."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            # Piped stdout (`banger image list | grep …`) gets whole cells, not cells cut
            # to rich's 80-column default: there is no terminal to fit.
            piped = not self._stderr and _UNCUT if _piped() else None
            self._console = Console(
                stderr=self._stderr, highlight=False, soft_wrap=True, width=piped or None
            )
        return getattr(self._console, name)


_UNCUT = 4096  # the width of "no terminal": tables keep their natural width


def _piped() -> bool:
    """stdout is not a terminal and COLUMNS does not say how wide to draw."""
    cols = os.environ.get("COLUMNS", "")
    return not (cols.isdigit() and int(cols) > 0) and not sys.stdout.isatty()


out: Console = _LazyConsole(stderr=False)  # type: ignore[assignment]
err: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]


def escape(text: str) -> str:
    """`text` as rich prints it literally: daemon messages and user input are not markup
    (`[ADDR:]HOST:GUEST[/udp]` would otherwise raise MarkupError)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# A cell: its text, or its text and a style ("green", "dim", "red", "yellow", "bold").
Cell = str | tuple[str, str]
_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33"}


def _columns() -> int:
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return _UNCUT if _piped() else 80


def _color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def print_table(headers: list[str], rows: list[list[Cell]]) -> None:
    """A table on stdout drawn like rich's default one (heavy head, cells padded by one,
    columns cut with `…` to fit the terminal), without importing rich: `banger vm list`
    is on the quick path. Styles are ANSI colours on a terminal only."""
    cells = [[(c, "") if isinstance(c, str) else c for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i][0]) for r in cells]) for i, h in enumerate(headers)]
    while sum(widths) + 3 * len(widths) + 1 > _columns() and max(widths) > 1:
        widths[widths.index(max(widths))] -= 1
    color = _color()

    def fit(text: str, width: int, style: str) -> str:
        text = text if len(text) <= width else text[: width - 1] + "…"
        pad = " " * (width - len(text))
        if color and style in _SGR:
            text = f"\x1b[{_SGR[style]}m{text}\x1b[0m"
        return text + pad

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    bold = "bold" if color else ""
    out_lines = [line("┏", "━", "┳", "┓")]
    out_lines.append(
        "┃" + "┃".join(f" {fit(h, w, bold)} " for h, w in zip(headers, widths, strict=True)) + "┃"
    )
    out_lines.append(line("┡", "━", "╇", "┩"))
    for row in cells:
        text = "│".join(f" {fit(t, w, st)} " for (t, st), w in zip(row, widths, strict=True))
        out_lines.append(f"│{text}│")
    out_lines.append(line("└", "─", "┴", "┘"))
    sys.stdout.write("\n".join(out_lines) + "\n")


def _usage(d: Any) -> str:
    if not isinstance(d, dict) or not d.get("total_bytes"):
        return "-"
    used, total = int(d.get("used_bytes", 0)), int(d["total_bytes"])
    return f"{format_size(used)} / {format_size(total)} ({100 * used // total}%)"


def health_rows(h: dict[str, Any]) -> list[tuple[str, str]]:
    """The label/value rows of a healthy `GET /v1/vms/{name}/health` answer, as
    `banger vm health` and the TUI both show them."""
    info = h.get("info") or {}
    mem = info.get("memory") or {}
    load = info.get("load") or []
    disk = info.get("disk") or {}
    return [
        ("hostname", str(info.get("hostname", "-"))),
        ("kernel", str(info.get("kernel", "-"))),
        ("uptime", format_duration(info.get("uptime_s"))),
        ("load", " ".join(f"{x:.2f}" for x in load) or "-"),
        (
            "memory",
            f"{format_size(mem['available_bytes'])} free of {format_size(mem['total_bytes'])}"
            if "total_bytes" in mem and "available_bytes" in mem
            else "-",
        ),
        ("disk /", _usage(disk.get("/"))),
        ("disk /root", _usage(disk.get("/root"))),
        ("agent", str(info.get("agent_version", "-"))),
    ]


def health_color(h: dict[str, Any]) -> str:
    """An unhealthy answer's colour: yellow when the VM simply has no agent running
    (stopped, or an image without one), red when the agent should answer and does not."""
    return "yellow" if h.get("agent") in ("absent", "stopped") else "red"


def print_json(data: Any) -> None:
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if hasattr(d, "model_dump") else d for d in data]
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


class StageProgress:
    """Live stage lines on a TTY's stderr: `✓ disk 0.21s`, spinner for the current stage.

    Off a TTY it prints one plain line per finished stage, so logs stay readable.
    """

    def __init__(self, title: str, enabled: bool = True) -> None:
        self.title = title
        self.enabled = enabled
        self.tty = err.is_terminal
        self.stage: str | None = None
        self.detail = ""
        self.stage_started = time.monotonic()
        self.started = time.monotonic()
        self._status: Any = None
        self.timings: dict[str, float] = {}

    def __enter__(self) -> StageProgress:
        if self.enabled and self.tty:
            self._status = err.status(self.title)
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_stage(ok=exc[0] is None)
        if self._status is not None:
            self._status.__exit__(*exc)

    def _finish_stage(self, ok: bool = True) -> None:
        if self.stage is None or not self.enabled:
            return
        took = time.monotonic() - self.stage_started
        self.timings[self.stage] = took
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        if self.tty:
            err.print(f"  {mark} {self.stage:<12} {took:6.2f}s [dim]{self.detail}[/]")
        else:
            err.print(f"  {'ok' if ok else 'FAILED'} {self.stage} {took:.2f}s {self.detail}")
        self.stage = None

    def __call__(self, event: OperationEvent) -> None:
        if event.stage != self.stage:
            self._finish_stage()
            self.stage = event.stage
            self.stage_started = time.monotonic()
        self.detail = event.detail
        if self._status is not None:
            frac = f" {event.fraction * 100:.0f}%" if event.fraction is not None else ""
            self._status.update(
                f"{self.title}: [bold]{event.stage}[/]{frac} [dim]{event.detail}[/]"
            )

    def line(self, text: str) -> None:
        """A line of the work's own output (a build script's), printed as it comes."""
        if self.enabled:
            from rich.markup import escape

            err.print(f"    [dim]│[/] {escape(text)}")

    def done(self, op: Operation) -> None:
        self._finish_stage()
