"""Human sizes and names: `512M`, `2G`, `1.5GiB`; DNS-label VM names."""

from __future__ import annotations

import re
import time

from banger.errors import InvalidInput

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# fullmatch, ASCII only: `$` would let a trailing newline through, `\d` Unicode digits.
_SIZE_RE = re.compile(r" *([0-9]+(?:\.[0-9]+)?) *([KMGT]?)(?:I?B)? *", re.IGNORECASE | re.ASCII)
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


def parse_size(text: str | int) -> int:
    """Bytes from `2G`, `512M`, `1.5GiB` or a plain byte count."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise InvalidInput(f"{text!r} is not a size", hint="use e.g. 512M, 2G, 1.5GiB")
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise InvalidInput(
            f"`{text}` is not a size",
            hint="use a number with an optional unit, e.g. 512M, 2G, 1.5GiB",
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{n}B"


def format_duration(seconds: float | None) -> str:
    """`42s`, `5m07s`, `3h12m`, `2d4h`; `-` when unknown."""
    if not isinstance(seconds, int | float) or seconds < 0:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_time(ts: float | None, *, seconds: bool = False) -> str:
    """A timestamp as local time: `2026-12-01 19:42` (`19:42:05` with `seconds`); `-`
    when unknown."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(ts))


def check_vm_name(name: str) -> str:
    if not isinstance(name, str) or not _LABEL_RE.fullmatch(name):
        raise InvalidInput(
            f"{name!r} is not a valid VM name",
            hint="use 1-63 lowercase letters, digits and hyphens, not starting or ending "
            "with a hyphen (it becomes the DNS name <name>.vm)",
        )
    return name
