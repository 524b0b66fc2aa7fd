"""The engine names, in one place.

Config, the CLI's `--engine` choices, the API models, the engine registry, the
doctor and the TUI all read them here, so a new engine is named once.
"""

from __future__ import annotations

from typing import Literal, get_args

EngineName = Literal["qemu", "firecracker"]
# What a user may ask for: an engine, or "auto" (Firecracker where it runs, else QEMU).
EngineChoice = Literal["auto", EngineName]

ENGINES: tuple[EngineName, ...] = get_args(EngineName)
ENGINE_CHOICES: tuple[str, ...] = get_args(EngineChoice)


def engine_hint() -> str:
    """`use "auto", "qemu" or "firecracker"`: the fix for an unknown engine name."""
    quoted = [f'"{e}"' for e in ENGINE_CHOICES]
    return f"use {', '.join(quoted[:-1])} or {quoted[-1]}"
