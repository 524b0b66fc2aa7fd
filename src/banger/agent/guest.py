#!/usr/bin/python3
"""banger-agent: the guest agent, installed in images as /usr/local/bin/banger-agent.

Standard library only (the guest has Debian's python3 and nothing else), and no
imports from banger. It answers HTTP/1.1 GET requests:

  /healthz   {"ok": true, "agent_version", "hostname", "uptime_s"}
  /ports     {"ports": [{"port", "address", "family", "pid", "process"}, ...]}
             listening TCP sockets from /proc/net/tcp{,6}; the owner is found by
             matching socket inodes under /proc/<pid>/fd
  /info      hostname, kernel, uptime, load, memory, disk usage of / and /root

Transports, whichever the VM has (both are served when both exist):

  virtio-serial  /dev/virtio-ports/banger.agent: one byte stream shared by every
                 host client in turn, not connections. Requests are served one after
                 another; a line that is not a request line is skipped, so the stream
                 resynchronises after garbage or a half-sent request. A request's
                 `X-Request-Id` header is echoed so the host can drop stale answers.
  vsock          AF_VSOCK port 1024 (QEMU vhost-vsock, Firecracker hybrid vsock):
                 ordinary connections, one thread each.

The agent waits for either channel to appear (the virtio_console module may load
after the service starts), so the unit can simply be `Restart=always`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

AGENT_VERSION = "1"
SERIAL_PATH = "/dev/virtio-ports/banger.agent"
VSOCK_PORT = 1024
MAX_LINE = 8192
MAX_HEADERS = 100
MAX_BODY = 1 << 20

_REQUEST_LINE = re.compile(rb"^([A-Z]{3,10}) (/[!-~]*) HTTP/1\.[01]\r?\n$")
_TCP_LISTEN = "0A"
_STARTED = time.monotonic()


def log(msg: str) -> None:
    print(f"banger-agent: {msg}", file=sys.stderr, flush=True)


# -- facts -----------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _hex_address(text: str) -> str:
    """An address as /proc/net/tcp prints it: 32-bit words in host byte order."""
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw)


def listening_sockets(proc: str = "/proc") -> list[dict[str, Any]]:
    """Listening TCP sockets: port, address, family and socket inode."""
    found: list[dict[str, Any]] = []
    for family in ("tcp", "tcp6"):
        lines = _read(f"{proc}/net/{family}").splitlines()[1:]
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != _TCP_LISTEN:
                continue
            addr, _, port = cols[1].partition(":")
            try:
                found.append(
                    {
                        "port": int(port, 16),
                        "address": _hex_address(addr),
                        "family": family,
                        "inode": int(cols[9]),
                    }
                )
            except ValueError:
                continue
    return found


def socket_owners(inodes: set[int], proc: str = "/proc") -> dict[int, tuple[int, str]]:
    """inode -> (pid, process name), for the inodes wanted (best effort)."""
    owners: dict[int, tuple[int, str]] = {}
    if not inodes:
        return owners
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return owners
    for pid in sorted(pids):
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            inode = int(target[8:-1])
            if inode in inodes and inode not in owners:
                owners[inode] = (pid, _read(f"{proc}/{pid}/comm").strip())
        if len(owners) == len(inodes):
            break
    return owners


def ports(proc: str = "/proc") -> dict[str, Any]:
    socks = listening_sockets(proc)
    owners = socket_owners({s["inode"] for s in socks if s["inode"]}, proc)
    out = []
    for s in socks:
        pid, name = owners.get(s.pop("inode"), (None, None))
        out.append({**s, "pid": pid, "process": name})
    out.sort(key=lambda s: (s["port"], s["family"], s["address"]))
    return {"ports": out}


def _uptime(proc: str) -> float | None:
    try:
        return float(_read(f"{proc}/uptime").split()[0])
    except (IndexError, ValueError):
        return None


def _memory(proc: str) -> dict[str, int]:
    fields = {"MemTotal": "total_bytes", "MemAvailable": "available_bytes"}
    out: dict[str, int] = {}
    for line in _read(f"{proc}/meminfo").splitlines():
        key, _, rest = line.partition(":")
        if key in fields and rest.split():
            out[fields[key]] = int(rest.split()[0]) * 1024
    return out


def _disk(path: str) -> dict[str, int] | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return {
        "total_bytes": total,
        "used_bytes": (st.f_blocks - st.f_bfree) * st.f_frsize,
        "free_bytes": free,
    }


def info(proc: str = "/proc") -> dict[str, Any]:
    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "hostname": socket.gethostname(),
        "kernel": os.uname().release,
        "uptime_s": _uptime(proc),
        "load": load,
        "memory": _memory(proc),
        "disk": {p: _disk(p) for p in ("/", "/root")},
        "agent_version": AGENT_VERSION,
    }


def healthz(proc: str = "/proc") -> dict[str, Any]:
    return {
        "ok": True,
        "agent_version": AGENT_VERSION,
        "hostname": socket.gethostname(),
        "uptime_s": _uptime(proc),
    }


# -- HTTP --------------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def route(method: str, path: str, proc: str = "/proc") -> tuple[int, dict[str, Any]]:
    handlers: dict[str, Callable[[str], dict[str, Any]]] = {
        "/healthz": healthz,
        "/ports": ports,
        "/info": info,
    }
    handler = handlers.get(path.split("?", 1)[0])
    if handler is None:
        return 404, {"error": f"no such path {path}", "paths": sorted(handlers)}
    if method != "GET":
        return 405, {"error": f"{method} not allowed; use GET"}
    try:
        return 200, handler(proc)
    except Exception as exc:  # report, never die: the agent must keep answering
        return 500, {"error": f"{type(exc).__name__}: {exc}"}


def response(status: int, body: dict[str, Any], request_id: str | None) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Internal Server Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
    ]
    if request_id:
        head.append(f"X-Request-Id: {request_id}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class Stream:
    """Buffered reads and full writes over a raw file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def readline(self) -> bytes | None:
        """One line (with its newline); an over-long line comes back truncated to
        MAX_LINE bytes without a newline. None at end of stream."""
        while True:
            nl = self.buf.find(b"\n", 0, MAX_LINE)
            if nl >= 0:
                line, self.buf = self.buf[: nl + 1], self.buf[nl + 1 :]
                return line
            if len(self.buf) >= MAX_LINE:
                line, self.buf = self.buf[:MAX_LINE], self.buf[MAX_LINE:]
                return line
            if not self._fill():
                line, self.buf = self.buf, b""
                return line or None

    def read(self, n: int) -> bytes:
        while len(self.buf) < n and self._fill():
            pass
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


def serve_one(stream: Stream, proc: str = "/proc") -> bool | None:
    """Read one request (skipping anything before a request line) and answer it.

    True: answered; False: answered, and the client asked to close (meaningless on
    the serial port, where the next client simply follows); None: end of stream.
    """
    while True:
        line = stream.readline()
        if line is None:
            return None
        m = _REQUEST_LINE.match(line)
        if m:
            break
    method, path = m.group(1).decode(), m.group(2).decode()
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        raw = stream.readline()
        if raw is None:
            return None
        if raw in (b"\r\n", b"\n"):
            break
        if _REQUEST_LINE.match(raw):
            # A new request began before this one ended: drop the broken one.
            stream.buf = raw + stream.buf
            return True
        key, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    length = headers.get("content-length", "0")
    if length.isdigit() and 0 < int(length) <= MAX_BODY:
        stream.read(int(length))
    status, body = route(method, path, proc)
    rid = headers.get("x-request-id")
    stream.write(response(status, body, rid if rid and rid.isprintable() else None))
    return headers.get("connection", "").lower() != "close"


def serve_stream(stream: Stream, proc: str = "/proc", *, connection: bool = True) -> None:
    """Answer requests until the stream ends, or (a connection, not a serial port)
    until the client asks to close."""
    while (more := serve_one(stream, proc)) is not None:
        if connection and not more:
            return


# -- transports --------------------------------------------------------------------------


def serve_serial(path: str, proc: str = "/proc") -> None:
    """Serve the virtio-serial port forever, (re)opening it as needed.

    While no host client is connected, reads return end-of-file at once: wait a
    little and read again, keeping any partial request (it resynchronises).
    """
    waiting_logged = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            if not waiting_logged:
                log(f"waiting for {path} ({exc.strerror})")
                waiting_logged = True
            time.sleep(1.0)
            continue
        log(f"serving {path}")
        waiting_logged = False
        stream = Stream(fd)
        try:
            while True:
                if serve_one(stream, proc) is None:
                    stream.eof = False
                    time.sleep(0.1)  # host side not connected
        except OSError as exc:
            log(f"{path}: {exc}; reopening")
            time.sleep(0.5)
        finally:
            os.close(fd)


def _serve_conn(conn: socket.socket, proc: str) -> None:
    with conn, contextlib.suppress(OSError):
        serve_stream(Stream(conn.fileno()), proc)


def serve_vsock(port: int, proc: str = "/proc") -> None:
    """Accept vsock connections forever (waiting until the guest has vsock)."""
    af_vsock = getattr(socket, "AF_VSOCK", None)
    if af_vsock is None:
        log("this python has no AF_VSOCK")
        return
    waiting_logged = False
    while True:
        try:
            srv = socket.socket(af_vsock, socket.SOCK_STREAM)
            try:
                srv.bind((socket.VMADDR_CID_ANY, port))
                srv.listen(16)
            except OSError:
                srv.close()
                raise
        except OSError as exc:
            if not waiting_logged:
                log(f"waiting for vsock ({exc.strerror})")
                waiting_logged = True
            time.sleep(2.0)
            continue
        log(f"serving vsock port {port}")
        with srv:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError as exc:
                    log(f"vsock accept: {exc}")
                    time.sleep(0.1)
                    continue
                threading.Thread(target=_serve_conn, args=(conn, proc), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="banger-agent", description=__doc__.split("\n")[0])
    ap.add_argument("--serial", default=SERIAL_PATH, help="virtio-serial port to serve")
    ap.add_argument("--vsock-port", type=int, default=VSOCK_PORT)
    ap.add_argument("--no-serial", action="store_true")
    ap.add_argument("--no-vsock", action="store_true")
    ap.add_argument("--fd", type=int, help="serve this inherited stream until it ends (tests)")
    ap.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fd is not None:
        serve_stream(Stream(args.fd), args.proc, connection=False)  # like the serial port
        return 0
    threads = []
    if not args.no_serial:
        threads.append(threading.Thread(target=serve_serial, args=(args.serial, args.proc)))
    if not args.no_vsock:
        threads.append(threading.Thread(target=serve_vsock, args=(args.vsock_port, args.proc)))
    if not threads:
        ap.error("nothing to serve")
    for t in threads:
        t.daemon = True
        t.start()
    for t in threads:
        t.join()
    return 1  # only when every transport gave up; systemd restarts us


if __name__ == "__main__":
    sys.exit(main())
