"""Saved machine states: what an engine wrote, and what it fits.

`Engine.save_state` writes a VM's memory and device state into a directory and
finishes by writing `state.json` there (atomically, last): the engine that wrote
it, its version and accelerator, the kernel and initrd (path, size, mtime), vCPUs,
memory and the device set, plus the size of every file it wrote. A directory
without `state.json` is an interrupted save and holds nothing usable.

`read_state` refuses a state whose files are missing or not the recorded size
(truncated), and `SavedState.check` one that does not fit the machine about to be
launched; both raise `StateUnusable` with one line naming the problem.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.engines.base import GuestConfig
from banger.errors import BangerError

STATE_META = "state.json"
STATE_FORMAT = 1
COLD_HINT = "`banger vm start --cold NAME` discards the saved state and boots"


class StateUnusable(BangerError):
    """A saved state that cannot be restored: missing, truncated or not fitting."""

    code = "state_unusable"
    http_status = 409


def _file_id(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path), "size": None, "mtime_ns": None}
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def device_set(config: GuestConfig, agent: str | None) -> list[str]:
    """The guest-visible devices, in device order (names, not host paths)."""
    devices = [f"drive:{d.drive_id}" + (":ro" if d.read_only else "") for d in config.drives]
    devices += [f"nic:{n.iface_id}" for n in config.nics]
    if agent is not None:
        devices.append(f"agent:{agent}")
    return devices


def machine_fit(
    config: GuestConfig, *, engine: str, version: str, accel: str, agent: str | None
) -> dict[str, Any]:
    """What a state saved from (or restored into) `config` is tied to."""
    return {
        "engine": engine,
        "engine_version": version,
        "accel": accel,
        "kernel": _file_id(config.kernel),
        "initrd": _file_id(config.initrd),
        "vcpus": config.vcpus,
        "memory_mib": config.memory_mib,
        "devices": device_set(config, agent),
    }


def _describe(key: str, value: Any) -> str:
    if key == "memory_mib":
        return f"{value} MiB"
    if key in ("kernel", "initrd"):
        if value is None:
            return "none"
        return f"{value['path']} ({value['size']} bytes)"
    if key == "devices":
        return ", ".join(value) or "none"
    return str(value)


_LABELS = {
    "engine": "engine",
    "engine_version": "engine version",
    "accel": "accelerator",
    "kernel": "kernel",
    "initrd": "initrd",
    "vcpus": "vCPUs",
    "memory_mib": "memory",
    "devices": "device set",
}


@dataclass(frozen=True)
class SavedState:
    """A complete saved state in `dir`: `fit` says what it needs, `files` its files."""

    dir: Path
    fit: dict[str, Any]
    files: dict[str, int]
    saved_at: float
    drives: dict[str, str]  # drive id -> host path at save time
    # Restore with the NICs' links down (`set_links` brings them up): a fork's guest
    # still has its source's MAC and address until it takes its own identity.
    hold_nics: bool = False

    def path(self, name: str) -> Path:
        return self.dir / name

    def mismatch(self, want: dict[str, Any]) -> str | None:
        """The first way this state does not fit `want` (a `machine_fit`), or None."""
        for key, label in _LABELS.items():
            have = self.fit.get(key)
            if have != want.get(key):
                return (
                    f"{label} is {_describe(key, want.get(key))} but the saved state "
                    f"needs {_describe(key, have)}"
                )
        return None

    def check(self, want: dict[str, Any], *, what: str = "saved state") -> None:
        problem = self.mismatch(want)
        if problem is not None:
            raise StateUnusable(f"the {what} in {self.dir} does not fit: {problem}", COLD_HINT)


def write_state(
    dest: Path, fit: dict[str, Any], files: list[str], drives: dict[str, str]
) -> SavedState:
    """Record a finished save: sizes of `files` in `dest`, then `state.json` (last)."""
    sizes = {name: (dest / name).stat().st_size for name in files}
    saved = SavedState(dest, fit, sizes, time.time(), drives)
    doc = {
        "format": STATE_FORMAT,
        "fit": fit,
        "files": sizes,
        "saved_at": saved.saved_at,
        "drives": drives,
    }
    tmp = dest / (STATE_META + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, dest / STATE_META)
    return saved


def has_state(directory: Path) -> bool:
    return (directory / STATE_META).is_file()


def read_state(directory: Path, *, what: str = "saved state") -> SavedState:
    """The complete state in `directory`; `StateUnusable` when it is missing,
    unreadable or a file is not the size it was saved with."""
    meta = directory / STATE_META
    try:
        doc = json.loads(meta.read_text())
        fit, files = doc["fit"], doc["files"]
        if doc.get("format") != STATE_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {doc.get('format')!r}")
    except FileNotFoundError:
        raise StateUnusable(f"no {what} in {directory}", COLD_HINT) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateUnusable(f"the {what} record {meta} is unreadable: {exc}", COLD_HINT) from None
    for name, size in files.items():
        try:
            actual = (directory / name).stat().st_size
        except OSError:
            raise StateUnusable(
                f"the {what} file {directory / name} is missing", COLD_HINT
            ) from None
        if actual != size:
            raise StateUnusable(
                f"the {what} file {directory / name} is truncated or altered: "
                f"{actual} bytes, saved with {size}",
                COLD_HINT,
            )
    return SavedState(
        directory, fit, dict(files), float(doc.get("saved_at", 0.0)), dict(doc.get("drives", {}))
    )
