"""Starting the daemon in the background and waiting until it answers."""

from __future__ import annotations

import socket
import sys
import time

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
    from banger.system import spawn_detached  # only when a daemon must be started

    paths.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = paths.log_dir / "bangerd.out"
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
    tail = (
        log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.exists() else []
    )
    raise DaemonUnavailable(
        "the daemon did not come up within "
        f"{timeout:.0f}s" + (f": {' | '.join(tail)}" if tail else ""),
        hint=f"run `bangerd --foreground --debug` to see why (log: {paths.daemon_log})",
    )
