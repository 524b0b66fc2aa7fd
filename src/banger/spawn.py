"""Starting the daemon in the background and waiting until it answers."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from banger.errors import DaemonUnavailable
from banger.paths import Paths


def socket_answers(paths: Paths) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(paths.socket))
        return True
    except OSError:
        return False
    finally:
        s.close()


def start_detached(paths: Paths, timeout: float = 15.0) -> int:
    """Start `bangerd --foreground` detached and return the pid that answers.

    The config is checked first, here: a broken config.toml is reported at once
    (naming the file and key) instead of as a daemon that never comes up.
    """
    from banger.config import load_config
    from banger.system import spawn_detached  # only when a daemon must be started

    load_config(paths)
    paths.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = paths.log_dir / "bangerd.out"
    start = log_path.stat().st_size if log_path.exists() else 0
    pid = spawn_detached([sys.executable, "-m", "banger.daemon", "--foreground"], log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if socket_answers(paths):
            # With two CLIs racing to start a daemon, the one that won the lock answers;
            # report its pid (the loser exits on the lock).
            try:
                return int(paths.pid_file.read_text())
            except (OSError, ValueError):
                return pid
        time.sleep(0.02)
    tail = _new_lines(log_path, start)[-3:]  # this attempt's lines, not an earlier one's
    raise DaemonUnavailable(
        "the daemon did not come up within "
        f"{timeout:.0f}s" + (f": {' | '.join(tail)}" if tail else ""),
        hint=f"run `bangerd --foreground --debug` to see why (log: {paths.daemon_log})",
    )


def _new_lines(path: Path, offset: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return []
