"""HTTP over the UNIX socket: middlewares (peer check, errors) and the listener.

Routes live in `daemon/routes/`, the HTTP server in `daemon/web.py`; this module knows
nothing about VMs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from banger.daemon import web
from banger.daemon.peer import peer_allowed, peer_uid
from banger.daemon.web import Handler
from banger.errors import BangerError, Conflict, PrivilegeError, from_os_error

log = logging.getLogger("banger.server")


def error_response(exc: BangerError) -> web.Response:
    return web.json_response({"error": exc.to_dict()}, status=exc.http_status)


async def peer_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        uid = peer_uid(sock)
        if not peer_allowed(uid):
            log.warning("rejected API request from uid %s", uid)
            return error_response(
                PrivilegeError(
                    f"uid {uid} may not use this daemon (owned by uid {os.getuid()})",
                    hint="run banger as the user that owns the daemon",
                )
            )
    return await handler(request)


def _error(status: int, code: str, message: str, hint: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "hint": hint}}, status=status
    )


async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BangerError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status == 404:
            what = f"{request.method} {request.path} is not an API endpoint"
            hint = "the CLI and daemon versions may differ; restart the daemon"
            return _error(404, "no_such_endpoint", what, hint)
        raise
    except json.JSONDecodeError as exc:
        return _error(400, "invalid_input", f"bad JSON body: {exc}", "send a JSON object")
    except Exception as exc:
        mapped = from_os_error(exc)
        if mapped is not None:
            log.info("%s %s: %s", request.method, request.path, mapped.message)
            return error_response(mapped)
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal", f"internal error: {exc}", "see the daemon log for details")


def bind_socket(path: Path) -> socket.socket:
    """Bind the API socket 0600, replacing a stale socket but never a live daemon's."""
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # stale: left by a daemon that died
        else:
            raise Conflict(
                f"another bangerd is already listening on {path}",
                hint="use `banger daemon status`, or `banger daemon stop` first",
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600 atomically: no window with looser mode
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(app: web.Application, sock: socket.socket) -> web.Server:
    return await web.serve(app, sock)
