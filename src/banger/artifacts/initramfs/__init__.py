"""The initramfs `/init` template (a POSIX sh script kept as a file, not a string).

It is shipped as package data so it can be read, linted and diffed like any
other script; `init_script()` returns it for the initramfs builder.
"""

from __future__ import annotations

from importlib import resources


def init_script() -> bytes:
    return resources.files(__name__).joinpath("init.sh").read_bytes()
