"""The host side of banger-agent: HTTP/1.1 GETs over whichever channel the VM has.

The channel comes from the engine handle, `EngineHandle.extra["agent"]`:

  {"transport": "virtio-serial", "path": ".../agent.sock"}   QEMU without vhost-vsock
  {"transport": "vsock", "cid": N}                            QEMU with vhost-vsock
  {"transport": "hybrid-vsock", "path": ".../v.sock", "cid": N}  Firecracker

virtio-serial is one byte stream per VM, and QEMU's chardev takes one client at a
time, so requests to one path are serialised here, and every request carries an
`X-Request-Id` that the agent echoes: an answer left over from an earlier client
that gave up is skipped instead of being taken for ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from banger.agent import VSOCK_PORT
from banger.engines.firecracker_vsock import open_hybrid_vsock
from banger.errors import BangerError

DEFAULT_TIMEOUT = 5.0
MAX_BODY = 4 << 20

_serial_locks: dict[str, asyncio.Lock] = {}


class AgentUnavailable(BangerError):
    code = "agent_unavailable"
    http_status = 503


class AgentClient:
    def __init__(self, agent: dict[str, Any] | None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not agent or "transport" not in agent:
            raise AgentUnavailable(
                "this VM has no guest agent channel",
                hint="its engine was started without one; restart the VM with a current banger",
            )
        self.agent = dict(agent)
        self.transport = str(agent["transport"])
        if self.transport not in ("virtio-serial", "vsock", "hybrid-vsock"):
            raise AgentUnavailable(f"unknown guest agent transport {self.transport!r}")
        self.timeout = timeout

    def describe(self) -> str:
        if self.transport == "vsock":
            return f"vsock cid {self.agent.get('cid')} port {VSOCK_PORT}"
        return f"{self.transport} {self.agent.get('path')}"

    async def healthz(self) -> dict[str, Any]:
        return await self.get("/healthz")

    async def ports(self) -> list[dict[str, Any]]:
        data = await self.get("/ports")
        return list(data.get("ports", []))

    async def info(self) -> dict[str, Any]:
        return await self.get("/info")

    async def get(self, path: str) -> dict[str, Any]:
        """GET `path` from the agent; raises AgentUnavailable when it does not answer."""
        try:
            if self.transport == "virtio-serial":
                key = str(self.agent["path"])
                lock = _serial_locks.setdefault(key, asyncio.Lock())
                async with asyncio.timeout(self.timeout), lock:
                    return await self._exchange(path)
            async with asyncio.timeout(self.timeout):
                return await self._exchange(path)
        except TimeoutError as exc:
            raise self._unavailable(f"did not answer {path} within {self.timeout:g}s") from exc
        except (OSError, EOFError, BangerError) as exc:
            if isinstance(exc, AgentUnavailable):
                raise
            msg = exc.message if isinstance(exc, BangerError) else str(exc) or type(exc).__name__
            raise self._unavailable(f"{path}: {msg}") from exc

    def _unavailable(self, what: str) -> AgentUnavailable:
        return AgentUnavailable(
            f"guest agent ({self.describe()}) {what}",
            hint="the guest may still be booting, or banger-agent.service is not running "
            "in it: `banger vm ssh NAME -- systemctl status banger-agent`",
        )

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.transport == "virtio-serial":
            return await asyncio.open_unix_connection(str(self.agent["path"]))
        if self.transport == "hybrid-vsock":
            return await open_hybrid_vsock(Path(self.agent["path"]), VSOCK_PORT, self.timeout)
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(
                sock, (int(self.agent["cid"]), VSOCK_PORT)
            )
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _exchange(self, path: str) -> dict[str, Any]:
        reader, writer = await self._open()
        try:
            rid = secrets.token_hex(8)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: banger-agent\r\nX-Request-Id: {rid}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            while True:
                status, headers, body = await read_response(reader)
                if headers.get("x-request-id") == rid:
                    break  # anything else is a stale answer to an earlier client
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise AgentUnavailable(f"guest agent sent invalid JSON for {path}") from exc
        if status != 200 or not isinstance(data, dict):
            err = data.get("error") if isinstance(data, dict) else None
            raise BangerError(f"guest agent answered {path} with {status}: {err or data}")
        return data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length; skips anything before its status line."""
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError("connection closed before a response")
        words = line.split(None, 2)
        if len(words) >= 2 and words[0].startswith(b"HTTP/1.") and words[1].isdigit():
            status = int(words[1])
            break
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError("connection closed in the response headers")
        if line in (b"\r\n", b"\n"):
            break
        key, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if not 0 <= length <= MAX_BODY:
        raise EOFError(f"response too large ({length} bytes)")
    body = await reader.readexactly(length)
    return status, headers, body


async def wait_healthy(agent: dict[str, Any] | None, timeout: float) -> float:
    """Poll the agent's /healthz until it answers; returns the seconds waited."""
    start = time.monotonic()
    client = AgentClient(agent, timeout=min(DEFAULT_TIMEOUT, timeout))
    last: BangerError | None = None
    while time.monotonic() - start < timeout:
        try:
            await client.healthz()
            return time.monotonic() - start
        except BangerError as exc:
            last = exc
            await asyncio.sleep(0.2)
    raise AgentUnavailable(
        f"the guest agent did not answer within {timeout:.0f}s ({last})",
        hint="SSH works; check `systemctl status banger-agent` in the VM (`banger vm ssh`)",
    )
