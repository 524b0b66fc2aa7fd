"""The host side of banger-agent: one multiplexed session per VM channel.

The channel comes from the engine handle, `EngineHandle.extra["agent"]`:

  {"transport": "virtio-serial", "path": ".../agent.sock"}   QEMU without vhost-vsock
  {"transport": "vsock", "cid": N}                            QEMU with vhost-vsock
  {"transport": "hybrid-vsock", "path": ".../v.sock", "cid": N}  Firecracker

QEMU's virtio-serial chardev takes one client at a time, so the daemon keeps one
connection per channel (`AgentSession`, shared through a small pool) and runs every
request and stream over it as frames (see `banger.agent.guest` for the protocol).
The same code serves vsock and hybrid vsock: a byte stream is all it needs, so it
also survives a transparent relay in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from banger.agent import VSOCK_PORT
from banger.agent import guest as proto
from banger.engines.firecracker_vsock import open_hybrid_vsock
from banger.errors import BangerError

DEFAULT_TIMEOUT = 5.0
# Opening a stream starts a process in the guest (or a tar). A guest on a loaded host
# can take longer than DEFAULT_TIMEOUT for that: 16 execs opened at once on a TCG
# guest at host load 11 did. The bound only catches an agent that stopped answering.
STREAM_TIMEOUT = 30.0
HELLO_RETRY = 0.5


class AgentUnavailable(BangerError):
    code = "agent_unavailable"
    http_status = 503


@dataclass
class StreamEvent:
    """What a guest stream produced: `kind` is opened, stdout, stderr or exit."""

    kind: str
    data: bytes = b""
    info: dict[str, Any] = field(default_factory=dict)


class AgentStream:
    """One exec/tar stream on a session. Read events with `next_event()`; every
    stdout/stderr event must be acknowledged with `consumed(n)` once handled (that
    is the flow control: the guest stops sending when the window is used up)."""

    def __init__(self, session: AgentSession, sid: int) -> None:
        self.session = session
        self.sid = sid
        self.events: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.credit = proto.WINDOW_INITIAL
        self.credit_changed = asyncio.Event()
        self.done = False

    async def next_event(self) -> StreamEvent:
        return await self.events.get()

    async def write(self, data: bytes) -> None:
        """Send input, waiting for the guest's window; b"" ends the input."""
        if not data:
            await self.session.send(proto.encode(proto.STDIN, self.sid))
            return
        view = memoryview(data)
        while view:
            while self.credit <= 0:
                if self.done:
                    return
                self.credit_changed.clear()
                await self.credit_changed.wait()
            n = min(len(view), self.credit, proto.CHUNK)
            self.credit -= n
            await self.session.send(proto.encode(proto.STDIN, self.sid, bytes(view[:n])))
            view = view[n:]

    async def consumed(self, n: int) -> None:
        if n and not self.done:
            await self.session.send(proto.encode(proto.WINDOW, self.sid, proto.window(n)))

    async def resize(self, rows: int, cols: int) -> None:
        await self.session.send(
            proto.encode_json(proto.RESIZE, self.sid, {"rows": rows, "cols": cols})
        )

    async def signal(self, signum: int) -> None:
        await self.session.send(proto.encode_json(proto.SIGNAL, self.sid, {"signal": signum}))

    async def close(self) -> None:
        """Abandon the stream: the guest kills what it runs. Idempotent."""
        if self.done:
            return
        self.done = True
        self.credit_changed.set()
        self.session.streams.pop(self.sid, None)
        # no EXIT will come for an abandoned stream: whoever waits on it is told here
        self.events.put_nowait(StreamEvent("exit", info={"code": 255, "error": "closed"}))
        with contextlib.suppress(BangerError, OSError):
            await self.session.send(proto.encode(proto.CLOSE, self.sid))

    def _deliver(self, ftype: int, payload: bytes) -> None:
        if ftype == proto.WINDOW:
            self.credit += proto.parse_window(payload)
            self.credit_changed.set()
        elif ftype in (proto.STDOUT, proto.STDERR):
            self.events.put_nowait(
                StreamEvent("stdout" if ftype == proto.STDOUT else "stderr", payload)
            )
        elif ftype == proto.OPENED:
            self.events.put_nowait(StreamEvent("opened", info=proto.decode_json(payload)))
        elif ftype == proto.EXIT:
            self.done = True
            self.credit_changed.set()
            self.events.put_nowait(StreamEvent("exit", info=proto.decode_json(payload)))

    def _lost(self, why: str) -> None:
        if not self.done:
            self.done = True
            self.credit_changed.set()
            self.events.put_nowait(StreamEvent("exit", info={"code": 255, "error": why}))


class AgentSession:
    """One connection to a guest agent carrying any number of streams."""

    def __init__(self, agent: dict[str, Any], describe: str) -> None:
        self.agent = agent
        self.describe = describe
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.wlock = asyncio.Lock()
        self.next_sid = 1
        self.streams: dict[int, AgentStream] = {}
        self.requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.hello: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None
        self.dead = False
        self.loop = asyncio.get_running_loop()
        self.last_rx = time.monotonic()

    async def connect(self, timeout: float) -> None:
        reader, writer = await _open_channel(self.agent, timeout)
        self.reader, self.writer = reader, writer
        session_id = secrets.token_hex(8)
        hello = proto.encode_json(
            proto.HELLO, 0, {"session": session_id, "version": proto.PROTOCOL_VERSION}
        )
        buf = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while True:
                # A guest that is still booting (or out of step) may miss a HELLO: repeat.
                writer.write(hello)
                await writer.drain()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                try:
                    async with asyncio.timeout(min(HELLO_RETRY, left)):
                        self.hello = await self._hunt(reader, buf, session_id)
                    break
                except TimeoutError:
                    continue
        except BaseException:
            writer.close()
            raise
        self.task = asyncio.create_task(self._read_loop(bytes(buf)))

    @staticmethod
    async def _hunt(
        reader: asyncio.StreamReader, buf: bytearray, session_id: str
    ) -> dict[str, Any]:
        """Skip everything up to the HELLO answer carrying our session id."""
        prefix = proto.MAGIC + bytes([proto.HELLO])
        while True:
            i = buf.find(prefix)
            if i >= 0 and len(buf) - i >= proto.HEADER.size:
                try:
                    _, _, length = proto.decode_header(bytes(buf[i : i + proto.HEADER.size]))
                except proto.FrameError:
                    del buf[: i + 1]
                    continue
                end = i + proto.HEADER.size + length
                if len(buf) >= end:
                    payload = bytes(buf[i + proto.HEADER.size : end])
                    del buf[:end]
                    answer = proto.decode_json(payload)
                    if answer.get("session") == session_id:
                        return answer
                    continue
            elif i < 0 and len(buf) > len(prefix):
                del buf[: len(buf) - len(prefix)]
            chunk = await reader.read(65536)
            if not chunk:
                raise EOFError("the agent channel closed")
            buf += chunk

    async def _read_loop(self, pending: bytes) -> None:
        assert self.reader is not None
        reader = self.reader
        buf = bytearray(pending)
        why = "the agent channel closed"

        async def readexactly(n: int) -> bytes:
            while len(buf) < n:
                chunk = await reader.read(max(65536, n - len(buf)))
                if not chunk:
                    raise EOFError
                buf.extend(chunk)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        try:
            while True:
                ftype, sid, length = proto.decode_header(await readexactly(proto.HEADER.size))
                payload = await readexactly(length)
                self.last_rx = time.monotonic()
                if ftype == proto.RESPONSE:
                    fut = self.requests.pop(sid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(proto.decode_json(payload))
                elif (stream := self.streams.get(sid)) is not None:
                    stream._deliver(ftype, payload)
                    if ftype == proto.EXIT:
                        self.streams.pop(sid, None)
        except (EOFError, OSError, asyncio.IncompleteReadError):
            pass
        except proto.FrameError as exc:
            why = f"the agent sent garbage ({exc})"
        finally:
            self._fail(why)

    def _fail(self, why: str) -> None:
        self.dead = True
        for fut in self.requests.values():
            if not fut.done():
                fut.set_exception(AgentUnavailable(f"guest agent ({self.describe}): {why}"))
        self.requests.clear()
        for stream in list(self.streams.values()):
            stream._lost(why)
        self.streams.clear()
        if self.writer is not None:
            self.writer.close()

    def stalled(self, quiet_for: float) -> None:
        """A call timed out: when nothing at all came from the guest for that long,
        the session is out of step (or the agent restarted); drop it so the next call
        starts a new one. A merely busy guest keeps its streams."""
        if time.monotonic() - self.last_rx >= quiet_for:
            self._fail("it stopped answering")

    def _sid(self) -> int:
        sid = self.next_sid
        self.next_sid = (self.next_sid + 1) % 2**32 or 1
        return sid

    async def send(self, frame: bytes) -> None:
        if self.dead or self.writer is None:
            raise AgentUnavailable(f"guest agent ({self.describe}): the connection is gone")
        async with self.wlock:
            self.writer.write(frame)
            await self.writer.drain()

    async def request(
        self, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        sid = self._sid()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.requests[sid] = fut
        msg: dict[str, Any] = {"path": path} if body is None else {"path": path, "body": body}
        try:
            await self.send(proto.encode_json(proto.REQUEST, sid, msg))
            answer = await fut
        finally:
            self.requests.pop(sid, None)
        body = answer.get("body")
        return int(answer.get("status", 500)), body if isinstance(body, dict) else {}

    async def open(self, spec: dict[str, Any]) -> AgentStream:
        sid = self._sid()
        stream = AgentStream(self, sid)
        self.streams[sid] = stream
        await self.send(proto.encode_json(proto.OPEN, sid, spec))
        return stream

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def _http_get(agent: dict[str, Any], path: str, timeout: float) -> tuple[int, dict[str, Any]]:
    """One plain HTTP GET (agent version 1). A line break goes first: whatever an
    earlier client left unterminated in the agent's line buffer ends there."""
    reader, writer = await _open_channel(agent, timeout)
    try:
        rid = secrets.token_hex(8)
        writer.write(
            f"\r\nGET {path} HTTP/1.1\r\nHost: banger-agent\r\nX-Request-Id: {rid}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        while True:  # skip stale answers and frames meant for someone else
            line = await reader.readline()
            if not line:
                raise EOFError("the agent channel closed")
            words = line.split(None, 2)
            if len(words) < 2 or not words[0].endswith(b"HTTP/1.1") or not words[1].isdigit():
                continue
            headers: dict[str, str] = {}
            while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = h.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            if headers.get("x-request-id") == rid:
                data = json.loads(body)
                return int(words[1]), data if isinstance(data, dict) else {}
    finally:
        writer.close()


async def _open_channel(
    agent: dict[str, Any], timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    transport = agent["transport"]
    limit = 1 << 20
    if transport == "virtio-serial":
        async with asyncio.timeout(timeout):
            return await asyncio.open_unix_connection(str(agent["path"]), limit=limit)
    if transport == "hybrid-vsock":
        return await open_hybrid_vsock(Path(agent["path"]), VSOCK_PORT, timeout)
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (int(agent["cid"]), VSOCK_PORT))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=limit)


# One session per channel, shared by every caller in this process (the daemon).
_sessions: dict[str, AgentSession] = {}
_connecting: dict[str, asyncio.Lock] = {}
# Channels whose agent answered plain HTTP but no HELLO: agent version 1, in VMs made
# from images built before the framed protocol. They keep /healthz, /ports and /info.
# Remembered for a minute (a vsock CID can later belong to another VM).
_legacy: dict[str, float] = {}
LEGACY_TTL = 60.0


def _is_legacy(key: str) -> bool:
    return time.monotonic() - _legacy.get(key, -LEGACY_TTL) < LEGACY_TTL


async def close_sessions() -> None:
    """Close every pooled session (daemon shutdown)."""
    sessions = list(_sessions.values())
    _sessions.clear()
    for s in sessions:
        await s.close()


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
        self.key = json.dumps(self.agent, sort_keys=True)

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

    async def _legacy_get(self, path: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await _http_get(self.agent, path, self.timeout)
        except (TimeoutError, OSError, EOFError, ValueError, BangerError) as exc:
            raise self._unavailable(f"did not answer {path} within {self.timeout:g}s") from exc
        if status != 200:
            raise BangerError(f"guest agent answered {path} with {status}: {body.get('error')}")
        return body

    def _unavailable(self, what: str) -> AgentUnavailable:
        return AgentUnavailable(
            f"guest agent ({self.describe()}) {what}",
            hint="the guest may still be booting, or banger-agent.service is not running "
            "in it: `banger vm ssh NAME -- systemctl status banger-agent`",
        )

    async def session(self, timeout: float | None = None) -> AgentSession:
        """The pooled session for this channel, connecting (within `timeout`, by default
        the client's) when needed."""
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        current = _sessions.get(self.key)
        if current is not None and not current.dead and current.loop is loop:
            return current
        lock = _connecting.get(self.key)
        if lock is None or lock._loop not in (None, loop):  # type: ignore[attr-defined]
            lock = _connecting[self.key] = asyncio.Lock()
        try:
            async with asyncio.timeout(timeout), lock:
                current = _sessions.get(self.key)
                if current is not None and not current.dead and current.loop is loop:
                    return current
                fresh = AgentSession(self.agent, self.describe())
                await fresh.connect(timeout)
                _sessions[self.key] = fresh
                return fresh
        except TimeoutError as exc:
            raise self._unavailable(f"did not answer within {timeout:g}s") from exc
        except (OSError, EOFError, BangerError) as exc:
            if isinstance(exc, AgentUnavailable):
                raise
            msg = exc.message if isinstance(exc, BangerError) else str(exc) or type(exc).__name__
            raise self._unavailable(f"cannot be reached: {msg}") from exc

    async def set_clock(self) -> dict[str, Any]:
        """Set the guest's clock to the host's now (after a resume)."""
        return await self.act("/clock", {"unix_ns": time.time_ns()})

    async def get(self, path: str) -> dict[str, Any]:
        """A request/response message (`/healthz`, `/ports`, `/info`, ...)."""
        if _is_legacy(self.key):
            return await self._legacy_get(path)
        try:
            session = await self.session()
        except AgentUnavailable as exc:
            # No HELLO answer: maybe a version-1 agent, which speaks only HTTP.
            try:
                data = await self._legacy_get(path)
            except AgentUnavailable:
                raise exc from None
            # A current agent that started just after our HELLO answers HTTP too: only
            # one that still ignores a HELLO now is a version-1 agent.
            try:
                await self.session()
            except AgentUnavailable:
                _legacy[self.key] = time.monotonic()
            return data
        return await self._request(session, path)

    async def act(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """An action with a JSON body (`guest.ACTIONS`); agents before version 3
        answer 404 (a `BangerError`)."""
        if _is_legacy(self.key):
            raise AgentUnavailable(f"the guest agent in this VM is too old for {path}")
        return await self._request(await self.session(), path, body)

    async def _request(
        self, session: AgentSession, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One request on the session: a stall or a non-200 answer is an error."""
        try:
            async with asyncio.timeout(self.timeout):
                status, answer = await session.request(path, body)
        except TimeoutError as exc:
            session.stalled(self.timeout)
            raise self._unavailable(f"did not answer {path} within {self.timeout:g}s") from exc
        if status != 200:
            raise BangerError(f"guest agent answered {path} with {status}: {answer.get('error')}")
        return answer

    async def open(self, spec: dict[str, Any]) -> tuple[AgentStream, dict[str, Any]]:
        """Open an exec/tar stream; returns it with the OPENED info. A stream the
        agent refused comes back with an exit event queued instead (info has "error")."""
        if _is_legacy(self.key):
            raise AgentUnavailable(
                "the guest agent in this VM is too old to run commands or copy files "
                "(agent version 1, from an image built before `vm exec` existed)",
                hint="recreate the VM from a current image; `banger image pull` rebuilds "
                "it. `banger vm ssh` still works",
            )
        wait = max(self.timeout, STREAM_TIMEOUT)
        session = await self.session(wait)
        stream = await session.open(spec)
        try:
            async with asyncio.timeout(wait):
                first = await stream.next_event()
        except TimeoutError as exc:
            await stream.close()
            session.stalled(wait)
            raise self._unavailable(
                f"did not start the {spec.get('kind')} stream within {wait:g}s"
            ) from exc
        if first.kind == "exit":
            stream.events.put_nowait(first)
            return stream, {"error": first.info.get("error"), **first.info}
        return stream, first.info


async def wait_healthy(
    agent: dict[str, Any] | None, timeout: float, check: Callable[[], None] | None = None
) -> float:
    """Poll the agent's /healthz until it answers; returns the seconds waited.
    `check` raises to end the wait early (a dead or hung guest, see BootWatch)."""
    start = time.monotonic()
    client = AgentClient(agent, timeout=min(DEFAULT_TIMEOUT, timeout))
    last: BangerError | None = None
    while time.monotonic() - start < timeout:
        if check is not None:
            check()
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
