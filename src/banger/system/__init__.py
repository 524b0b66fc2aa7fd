"""The system layer: the only place (with engines/process.py) that runs host programs.

`run`/`arun` execute a program and raise `CommandFailed` with its stderr on failure.
`privileged=True` runs it directly when we are root and through `sudo -n` otherwise;
when sudo would prompt, `PrivilegeError` says exactly what to configure.
`tools` maps every host program banger uses to the Debian package that ships it.
"""

from banger.system.run import (
    Result,
    arun,
    is_root,
    run,
    run_interactive,
    run_lines,
    spawn_detached,
    sudo_ready,
)
from banger.system.tools import TOOLS, Tool, find_tool, require_tool

__all__ = [
    "TOOLS",
    "Result",
    "Tool",
    "arun",
    "find_tool",
    "is_root",
    "require_tool",
    "run",
    "run_interactive",
    "run_lines",
    "spawn_detached",
    "sudo_ready",
]
