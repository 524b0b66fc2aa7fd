"""`bangerd`: the daemon process.

`bangerd --foreground` serves until SIGTERM/SIGINT (what a systemd user unit
runs). Plain `bangerd` starts a detached foreground daemon and returns once its
socket answers.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Sequence
from logging.handlers import RotatingFileHandler
from typing import IO

from banger import __version__
from banger.config import load_config
from banger.daemon import web
from banger.daemon.app import build_daemon
from banger.daemon.routes import setup_routes
from banger.daemon.routes.common import DAEMON_KEY
from banger.daemon.server import bind_socket, errors, peer_check, serve
from banger.errors import BangerError, Conflict
from banger.paths import Paths, default_paths, ensure_dirs, tighten

log = logging.getLogger("banger.daemon")


def _setup_logging(paths: Paths, level: str, to_stderr: bool) -> None:
    handlers: list[logging.Handler] = [
        RotatingFileHandler(paths.daemon_log, maxBytes=10 * 1024**2, backupCount=3)
    ]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    # At debug level these libraries log every QMP message and netlink frame: pages
    # per create, which drown banger's own step-by-step timeline (and slow it down).
    for noisy in ("qemu.qmp", "pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


def _take_lock(paths: Paths) -> IO[str]:
    """An exclusive flock held for the daemon's life: exactly one daemon per user."""
    lock = open(paths.runtime_dir / "bangerd.lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = paths.pid_file.read_text().strip() if paths.pid_file.exists() else "?"
        raise Conflict(
            f"bangerd is already running (pid {pid})",
            hint="`banger daemon status` shows it; `banger daemon stop` stops it",
        ) from None
    return lock


async def _serve_forever(paths: Paths) -> None:

    loaded = load_config(paths)
    daemon = build_daemon(paths, loaded)
    app = web.Application(middlewares=[peer_check, errors])
    app[DAEMON_KEY] = daemon
    stop = asyncio.Event()
    app["stop_event"] = stop
    setup_routes(app)
    await daemon.startup()
    # The pid file before the socket: whoever sees the socket answer reads our pid.
    paths.pid_file.write_text(f"{os.getpid()}\n")
    sock = bind_socket(paths.socket)
    runner = await serve(app, sock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("bangerd %s listening on %s (pid %s)", __version__, paths.socket, os.getpid())
    try:
        await stop.wait()
    finally:
        log.info("bangerd shutting down; running VMs keep running")
        await runner.cleanup()
        await daemon.shutdown()
        paths.socket.unlink(missing_ok=True)
        paths.pid_file.unlink(missing_ok=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    # argparse, not click: the daemon keeps the ~1 MB click costs for the CLI's sake.
    ap = argparse.ArgumentParser(prog="bangerd", description="The banger daemon.")
    ap.add_argument(
        "--foreground", action="store_true", help="Serve in the foreground (for systemd)."
    )
    ap.add_argument("--debug", action="store_true", help="Log at debug level to stderr too.")
    ap.add_argument("--version", action="version", version=f"bangerd, version {__version__}")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """`bangerd [--foreground] [--debug]`."""
    args = _parse(argv)
    foreground, debug = args.foreground, args.debug
    paths = default_paths()
    # Everything the daemon (and the VMs it starts) writes is private to this user,
    # and it holds no directory of whoever started it.
    os.umask(0o077)
    os.chdir("/")
    try:
        ensure_dirs(paths)
        if not foreground:
            from banger.spawn import socket_answers, start_detached

            if socket_answers(paths):
                pid_text = paths.pid_file.read_text().strip() if paths.pid_file.exists() else "?"
                raise Conflict(
                    f"bangerd is already running (pid {pid_text})",
                    hint="`banger daemon status` shows it; `banger daemon stop` stops it",
                )
            pid = start_detached(paths)
            print(f"bangerd started (pid {pid}), listening on {paths.socket}")
            return
        lock = _take_lock(paths)
        level = "debug" if debug else load_config(paths).config.log_level
        _setup_logging(paths, level, to_stderr=True)
        tightened = tighten(paths)  # after the logging set-up: what it skips is logged
        if tightened:
            log.info("made %d files and directories private (0600/0700)", tightened)
        asyncio.run(_serve_forever(paths))
        lock.close()
    except BangerError as exc:
        print(f"bangerd: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
