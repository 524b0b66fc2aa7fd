"""The progress callback long-running work reports through.

Library code (artifact builds, VM creates) takes a `Progress` and calls it with a
stage name and an optional detail; the daemon's operation machinery turns those
calls into events that the CLI streams. `null_progress` is for callers that do
not care.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, detail: str = "", fraction: float | None = None) -> None: ...


def null_progress(stage: str, detail: str = "", fraction: float | None = None) -> None:
    return None
