"""One error type that every layer raises and every surface can render.

A `BangerError` carries a stable machine code, a one-line human message that names
the problem, and a hint that names the fix. The daemon serialises it into API error
bodies, the client turns those back into `BangerError`, and the CLI prints
`error: <message>` / `hint: <hint>` with a non-zero exit code.
"""

from __future__ import annotations

import errno
from typing import Any


class BangerError(Exception):
    code = "error"
    exit_code = 1
    http_status = 400

    def __init__(self, message: str, hint: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return self.message


class NotFound(BangerError):
    code = "not_found"
    http_status = 404


class Conflict(BangerError):
    code = "conflict"
    http_status = 409


class InvalidInput(BangerError):
    code = "invalid_input"
    exit_code = 2
    http_status = 422


class BadRequest(InvalidInput):
    """Malformed request syntax (query parameter, body shape): HTTP 400."""

    http_status = 400


class ToolMissing(BangerError):
    code = "tool_missing"
    http_status = 424


class PrivilegeError(BangerError):
    code = "privilege"
    http_status = 403


class NoSpace(BangerError):
    """The host cannot hold what was asked for (disk full, file too large, quota)."""

    code = "no_space"
    http_status = 409


class CommandFailed(BangerError):
    code = "command_failed"
    http_status = 500


class DaemonUnavailable(BangerError):
    code = "daemon_unavailable"
    exit_code = 3


class Cancelled(BangerError):
    code = "cancelled"
    exit_code = 130
    http_status = 409


_BY_CODE: dict[str, type[BangerError]] = {
    cls.code: cls
    for cls in (
        BangerError,
        NotFound,
        Conflict,
        InvalidInput,
        ToolMissing,
        PrivilegeError,
        CommandFailed,
        DaemonUnavailable,
        Cancelled,
        NoSpace,
    )
}


def from_dict(data: dict[str, Any]) -> BangerError:
    code = str(data.get("code", "error"))
    cls = _BY_CODE.get(code, BangerError)
    return cls(str(data.get("message", "unknown error")), str(data.get("hint", "")), code=code)


_OS_ERRORS: dict[int, tuple[type[BangerError], str, str]] = {
    errno.ENOENT: (InvalidInput, "does not exist", "check the path"),
    errno.ENOTDIR: (InvalidInput, "has a part that is not a directory", "check the path"),
    errno.EISDIR: (InvalidInput, "is a directory", "pass a file"),
    errno.ELOOP: (InvalidInput, "is a symlink loop", "point it at a real file"),
    errno.ENAMETOOLONG: (InvalidInput, "is too long a name", "use a shorter path"),
    errno.EACCES: (PrivilegeError, "is not accessible to this user", "fix its permissions"),
    errno.EPERM: (PrivilegeError, "is not permitted to this user", "fix its permissions"),
    errno.EROFS: (PrivilegeError, "is on a read-only filesystem", "use a writable location"),
    errno.ENOSPC: (NoSpace, "no space left on the device", "free some space or ask for less"),
    errno.EDQUOT: (NoSpace, "disk quota exceeded", "free some space or ask for less"),
    errno.EFBIG: (NoSpace, "file too large for its filesystem", "ask for a smaller size"),
    errno.EEXIST: (Conflict, "already exists", "remove it or pick another name"),
    errno.ENOTEMPTY: (Conflict, "is not empty", "empty it first"),
    errno.EBUSY: (Conflict, "is busy", "retry when whatever holds it is done"),
}


def from_os_error(exc: BaseException, what: str = "") -> BangerError | None:
    """A filesystem error (OSError, NUL byte in a path, symlink loop) as a BangerError
    naming the file and the fix; None when it is not one of those."""
    if isinstance(exc, ValueError) and "null" in str(exc):
        return InvalidInput(
            f"{what + ' ' if what else ''}path contains a NUL byte", hint="pass a real path"
        )
    if isinstance(exc, RuntimeError) and "Symlink loop" in str(exc):
        return InvalidInput(f"{what + ': ' if what else ''}{exc}", hint="point it at a real file")
    if not isinstance(exc, OSError) or exc.errno not in _OS_ERRORS:
        return None
    cls, problem, hint = _OS_ERRORS[exc.errno]
    name = exc.filename if exc.filename is not None else ""
    subject = " ".join(str(x) for x in (what, name) if x)
    if cls is NoSpace:
        return cls(f"{subject}: {problem}" if subject else problem, hint=hint)
    return cls(f"{subject or 'a path'} {problem}", hint=hint)
