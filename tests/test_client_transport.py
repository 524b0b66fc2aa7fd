"""The client's plain-JSON transport (`client._exchange`: one request, the whole
response, over the daemon's UNIX socket) against raw answers a server may give."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.client import Client
from banger.errors import DaemonUnavailable, NotFound
from banger.paths import Paths, _xdg


@pytest.fixture
def answer(tmp_path: Path) -> Iterator[tuple[Client, list[bytes], list[bytes]]]:
    """A client whose daemon answers each request with the next raw bytes queued."""
    paths = Paths(tmp_path / "c", tmp_path / "s", tmp_path / "d", tmp_path / "r")
    paths.runtime_dir.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(paths.socket))
    server.listen()
    queued: list[bytes] = []
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                req = b""
                while b"\r\n\r\n" not in req:
                    req += conn.recv(4096)
                seen.append(req)
                conn.sendall(queued.pop(0))

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield Client(paths, timeout=5), queued, seen
    finally:
        server.close()


def test_content_length_and_chunked_bodies(answer: tuple[Client, list[bytes], list[bytes]]) -> None:
    client, queued, seen = answer
    queued.append(b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n[{"name":"a"}]')
    assert client.vm_rows() == [{"name": "a"}]
    assert seen[0].startswith(b"GET /v1/vms HTTP/1.1\r\n") and b"Connection: close" in seen[0]
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked = head + b'4\r\n{"na\r\n9\r\nme": "b"}\r\n0\r\n\r\n'
    queued.append(chunked)
    assert client.vm_row("b") == {"name": "b"}
    assert seen[1].startswith(b"GET /v1/vms/b HTTP/1.1\r\n")


def test_errors_keep_their_type(answer: tuple[Client, list[bytes], list[bytes]]) -> None:
    client, queued, _ = answer
    body = b'{"error": {"code": "not_found", "message": "no VM named `x`", "hint": "h"}}'
    queued.append(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(NotFound, match="no VM named `x`"):
        client.vm_row("x")


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # the daemon hung up
        b"garbage",
        b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n[{"name":"a"}]',  # cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n[]",
    ],
)
def test_a_broken_answer_is_a_lost_daemon(
    answer: tuple[Client, list[bytes], list[bytes]], raw: bytes
) -> None:
    client, queued, _ = answer
    queued.append(raw)
    with pytest.raises(DaemonUnavailable, match="lost contact with the banger daemon"):
        client.vm_rows()


def test_xdg_directories(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert _xdg("XDG_STATE_HOME", ".local/state") == tmp_path
    monkeypatch.setenv("XDG_STATE_HOME", "  ")  # blank: the default, like platformdirs
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _xdg("XDG_STATE_HOME", ".local/state") == tmp_path / "home" / ".local/state"
