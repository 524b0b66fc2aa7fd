"""A guest stream (exec, tar-in, tar-out) between a program and the daemon.

The daemon's `GET /v1/vms/{name}/stream` is a WebSocket on its UNIX socket; this is
the blocking client side, built on wsproto (sans-IO) and a plain socket so that
`banger vm exec` stays quick to start. Binary messages carry data behind a one-byte
channel (0 stdin, 1 stdout, 2 stderr); text messages are JSON control messages.
See `banger.daemon.routes.agent.vm_stream` for the other end.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from banger.errors import BangerError, DaemonUnavailable, from_dict

CH_STDIN, CH_STDOUT, CH_STDERR = 0, 1, 2
CONNECT_TIMEOUT = 10.0
# Until the stream is open: longer than the daemon's own bound on a guest starting the
# command (banger.agent.client.STREAM_TIMEOUT), so a slow guest's error comes from it.
OPEN_TIMEOUT = 60.0


@dataclass
class Event:
    """`kind` is "stdout", "stderr" (with `data`) or "exit" (with `info`: code,
    signal, error, timed_out)."""

    kind: str
    data: bytes = b""
    info: dict[str, Any] = field(default_factory=dict)


class GuestStream:
    """One stream: send input and control from any thread, read events from one."""

    def __init__(self, socket_path: Path, vm: str, spec: dict[str, Any]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(CONNECT_TIMEOUT)
        try:
            self.sock.connect(str(socket_path))
        except OSError as exc:
            self.sock.close()
            raise DaemonUnavailable(
                f"cannot reach the banger daemon at {socket_path} ({exc.strerror or exc})",
                hint="start it with `banger daemon start`",
            ) from exc
        self.ws = WSConnection(ConnectionType.CLIENT)
        # Sending may block (flow control) while another thread must keep reading,
        # so the two directions have separate locks.
        self.lock = threading.Lock()
        self.rlock = threading.Lock()
        self.queue: collections.deque[Event] = collections.deque()
        self.partial: dict[type, list[Any]] = {}
        self.closed = False
        self.peer_closed = False
        self.exit: dict[str, Any] | None = None
        self.opened: dict[str, Any] = {}
        try:
            target = f"/v1/vms/{urllib.parse.quote(vm, safe='')}/stream"
            self.sock.settimeout(OPEN_TIMEOUT)
            self._send(Request(host="bangerd", target=target))
            self._handshake()
            self._send(TextMessage(data=json.dumps(spec)))
            self._wait_opened()
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(None)

    # -- plumbing ------------------------------------------------------------------

    def _send(self, event: Any) -> None:
        with self.lock:
            if self.closed:
                return
            data = self.ws.send(event)
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def _recv(self) -> bool:
        try:
            data = self.sock.recv(1 << 18)
        except TimeoutError as exc:
            raise DaemonUnavailable("the banger daemon did not answer in time") from exc
        except OSError:
            data = b""
        with self.rlock:
            self.ws.receive_data(data or None)
        return bool(data)

    def _handshake(self) -> None:
        body = b""
        status = 0
        while True:
            if not self._recv():
                raise DaemonUnavailable("the banger daemon closed the stream connection")
            for ev in self.ws.events():
                if isinstance(ev, AcceptConnection):
                    return
                if isinstance(ev, RejectConnection):
                    status = ev.status_code
                    if not ev.has_body:
                        raise BangerError(f"the daemon refused the stream ({status})")
                elif isinstance(ev, RejectData):
                    body += ev.data
                    if ev.body_finished:
                        try:
                            raise from_dict(json.loads(body)["error"])
                        except (ValueError, KeyError, TypeError):
                            raise BangerError(
                                f"the daemon refused the stream ({status}): {body[:200]!r}"
                            ) from None

    def _wait_opened(self) -> None:
        while (ev := self._next()) is not None:
            if ev.kind == "opened":
                self.opened = ev.info
                return
            self.queue.appendleft(ev)
            return

    def _decode(self) -> None:
        """Move what wsproto has parsed into the event queue."""
        with self.rlock:
            events = list(self.ws.events())
        for ev in events:
            if isinstance(ev, BytesMessage | TextMessage):
                parts = self.partial.setdefault(type(ev), [])
                parts.append(ev.data)
                if not ev.message_finished:
                    continue
                whole = (b"" if isinstance(ev, BytesMessage) else "").join(parts)
                del self.partial[type(ev)]
                if isinstance(whole, bytes):
                    kind = "stdout" if whole[:1] == bytes([CH_STDOUT]) else "stderr"
                    self.queue.append(Event(kind, whole[1:]))
                    continue
                msg = json.loads(whole)
                kind = str(msg.get("type"))
                if kind in ("opened", "exit", "error"):
                    self.queue.append(Event(kind, info=msg))
            elif isinstance(ev, Ping):
                self._send(ev.response())
            elif isinstance(ev, CloseConnection):
                self.peer_closed = True

    def _next(self) -> Event | None:
        """The next event in order; None once the daemon closed without more."""
        while not self.queue:
            if self.peer_closed or not self._recv():
                self.peer_closed = True
                return None
            self._decode()
        ev = self.queue.popleft()
        if ev.kind == "error":
            raise from_dict(ev.info.get("error") or {})
        if ev.kind == "exit":
            self.exit = ev.info
        return ev

    # -- the API -------------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    def events(self) -> Iterator[Event]:
        """stdout/stderr events in order, then one exit event."""
        while True:
            if self.exit is not None and not self.queue:
                return
            ev = self._next()
            if ev is None:
                self.exit = {"code": 255, "error": "the daemon closed the stream early"}
                yield Event("exit", info=self.exit)
                return
            if ev.kind != "opened":
                yield ev
            if ev.kind == "exit":
                return

    def write(self, data: bytes) -> None:
        """Send input (blocks while the guest is not reading: flow control)."""
        view = memoryview(data)
        while view:
            self._send(BytesMessage(data=bytes([CH_STDIN]) + bytes(view[: 1 << 20])))
            view = view[1 << 20 :]

    def close_stdin(self) -> None:
        self._send(BytesMessage(data=bytes([CH_STDIN])))

    def resize(self, rows: int, cols: int) -> None:
        self._send(TextMessage(data=json.dumps({"type": "resize", "rows": rows, "cols": cols})))

    def signal(self, signum: int) -> None:
        self._send(TextMessage(data=json.dumps({"type": "signal", "signal": signum})))

    def close(self) -> None:
        """Hang up: a guest process still running is killed."""
        if not self.closed:
            self._send(CloseConnection(code=1000))
            self.closed = True
        self.sock.close()

    def __enter__(self) -> GuestStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- exec and file transfer on top of streams --------------------------------------------


@dataclass
class ExecResult:
    """What `Client.exec` returns: exit code (128+N for signal N), output, and
    whether the command was killed by its timeout."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def output(self) -> str:
        return self.stdout.decode(errors="replace")


def exec_spec(
    argv: list[str] | tuple[str, ...],
    *,
    stdin: bool = False,
    tty: bool = False,
    env: dict[str, str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    timeout: float | None = None,
    rows: int = 0,
    cols: int = 0,
    term: str | None = None,
) -> dict[str, Any]:
    if not argv:
        raise BangerError("no command given", hint="put the command after `--`")
    spec: dict[str, Any] = {"kind": "exec", "argv": [str(a) for a in argv], "stdin": stdin}
    if tty:
        spec.update(tty=True, rows=rows, cols=cols, term=term or "xterm-256color")
    if env:
        spec["env"] = dict(env)
    if workdir:
        spec["workdir"] = workdir
    if user:
        spec["user"] = user
    if timeout:
        spec["timeout"] = timeout
    return spec


def collect(stream: GuestStream, input: bytes | None = None) -> ExecResult:
    """Run a stream to its end, feeding `input` from a thread, gathering output."""
    if input is not None:

        def feed() -> None:
            stream.write(input)
            stream.close_stdin()

        threading.Thread(target=feed, daemon=True).start()
    out: list[bytes] = []
    err: list[bytes] = []
    info: dict[str, Any] = {}
    for ev in stream.events():
        if ev.kind == "stdout":
            out.append(ev.data)
        elif ev.kind == "stderr":
            err.append(ev.data)
        else:
            info = ev.info
    return ExecResult(
        exit_code=int(info.get("code", 255)),
        stdout=b"".join(out),
        stderr=b"".join(err),
        signal=info.get("signal"),
        timed_out=bool(info.get("timed_out")),
        error=info.get("error"),
    )


class _StreamWriter:
    """A file object writing into a stream's stdin (for tarfile)."""

    def __init__(self, stream: GuestStream, progress: Any = None) -> None:
        self.stream = stream
        self.sent = 0
        self.progress = progress
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) >= 1 << 18:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            self.stream.write(bytes(self.buf))
            self.sent += len(self.buf)
            self.buf.clear()
            if self.progress:
                self.progress(self.sent)


class _StreamReader:
    """A file object over a stream's stdout (for tarfile); keeps the exit info."""

    def __init__(self, stream: GuestStream, progress: Any = None) -> None:
        self.events = stream.events()
        self.buf = bytearray()
        self.exit: dict[str, Any] | None = None
        self.errors: list[bytes] = []
        self.got = 0
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        while self.exit is None and (n < 0 or len(self.buf) < n):
            ev = next(self.events, None)
            if ev is None:
                self.exit = {"code": 255, "error": "the stream ended early"}
            elif ev.kind == "stdout":
                self.buf += ev.data
                self.got += len(ev.data)
                if self.progress:
                    self.progress(self.got)
            elif ev.kind == "stderr":
                self.errors.append(ev.data)
            else:
                self.exit = ev.info
        if n < 0:
            n = len(self.buf)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def finish(self) -> dict[str, Any]:
        while self.exit is None:
            self.read(1 << 20)
        return self.exit


def _check(info: dict[str, Any], what: str) -> dict[str, Any]:
    if int(info.get("code", 255)) != 0:
        raise BangerError(
            f"{what}: {info.get('error') or 'failed'}",
            hint="check the path in the VM (`banger vm exec NAME -- ls -la PATH`)",
        )
    return info


def send_tree(
    stream: GuestStream, local: Path, arcname: str, progress: Any = None
) -> dict[str, Any]:
    """Archive `local` into the stream (a tar-in stream) and return the exit info."""
    import tarfile

    result: list[dict[str, Any]] = []

    def wait_exit() -> None:
        for ev in stream.events():
            if ev.kind == "exit":
                result.append(ev.info)

    waiter = threading.Thread(target=wait_exit, daemon=True)
    waiter.start()
    writer = _StreamWriter(stream, progress)
    try:
        with tarfile.open(
            fileobj=cast(Any, writer),
            mode="w|",
            format=tarfile.PAX_FORMAT,
        ) as tar:
            tar.add(str(local), arcname=arcname, recursive=True)
        writer.flush()
    finally:
        stream.close_stdin()
    waiter.join()
    return result[0] if result else {"code": 255, "error": "the stream ended early"}


def local_extract(
    stream: GuestStream, dest: Path, progress: Any = None
) -> tuple[dict[str, Any], dict[str, int]]:
    """Extract a tar-out stream at `dest` (the same rules as in the guest)."""
    from banger.agent.guest import extract_archive  # the guest's own checks, both ends

    reader = _StreamReader(stream, progress)
    stats: dict[str, int] = {}
    if "error" not in stream.opened:
        try:
            stats = extract_archive(cast(Any, reader), str(dest))
        except Exception:
            info = reader.finish()
            if int(info.get("code", 255)) != 0:
                return info, stats
            raise
    return reader.finish(), stats


def tar_bytes(name: str, data: bytes, mode: int) -> bytes:
    import io
    import tarfile
    import time

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def untar_one(stream: GuestStream, limit: int | None) -> bytes:
    """The single regular file of a tar-out stream, as bytes."""
    import tarfile

    reader = _StreamReader(stream)
    data = b""
    try:
        with tarfile.open(fileobj=cast(Any, reader), mode="r|") as tar:
            member = tar.next()
            if member is not None and not member.isreg():
                raise BangerError(f"{member.name} is not a regular file")
            if member is not None:
                if limit is not None and member.size > limit:
                    raise BangerError(
                        f"the file is {member.size} bytes, more than the {limit} asked for"
                    )
                f = tar.extractfile(member)
                data = f.read() if f else b""
    except tarfile.TarError:
        pass  # the exit info says why
    _check(reader.finish(), "read failed")
    return data


def tree_size(path: str) -> int:
    """Bytes of regular files under `path` (for progress bars)."""
    from banger.agent.guest import tree_size as size

    return size(path)
