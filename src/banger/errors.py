"""One error type that every layer raises and every surface can render.

A `BangerError` carries a stable machine code, a one-line human message that names
the problem, and a hint that names the fix. The daemon serialises it into API error
bodies, the client turns those back into `BangerError`, and the CLI prints
`error: <message>` / `hint: <hint>` with a non-zero exit code.
"""

from __future__ import annotations

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


class ToolMissing(BangerError):
    code = "tool_missing"
    http_status = 424


class PrivilegeError(BangerError):
    code = "privilege"
    http_status = 403


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
    )
}


def from_dict(data: dict[str, Any]) -> BangerError:
    code = str(data.get("code", "error"))
    cls = _BY_CODE.get(code, BangerError)
    return cls(str(data.get("message", "unknown error")), str(data.get("hint", "")), code=code)
