"""The host's Debian mirror, reachable from inside a test's network namespace.

A test namespace has no way out, and giving it one would mean forwarding and NAT in
the host's own namespace, which this shared machine's other users depend on. Guests
that must run apt (image builds) get a relay instead: each mirror address the host's
apt sources name is put on the namespace's loopback, and a listening
socket there (made by a thread that entered the namespace) hands every connection to
a connection made from the host's namespace to the real mirror. The guest resolves
the mirror's name through the daemon DNS (the host's resolution) and reaches it
through NAT, as it would on a real host; only the last hop is this relay.

Run by hand: `python -m tests.mirror_relay NAMESPACE` (until Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from banger.artifacts.mirror import discover_mirror
from tests import netns

CLONE_NEWNET = 0x40000000


def mirror_endpoints(suite: str = "bookworm") -> list[tuple[str, str, int]]:
    """(name, address, port) of every archive the host's apt sources give for `suite`."""
    m = discover_mirror(suite)
    uris = [m.uri] + ([m.security_uri] if m.security_uri else [])
    found: list[tuple[str, str, int]] = []
    for uri in uris:
        parts = urlsplit(uri)
        port = parts.port or (443 if parts.scheme.endswith("https") else 80)
        for info in socket.getaddrinfo(parts.hostname, port, socket.AF_INET, socket.SOCK_STREAM):
            ep = (str(parts.hostname), str(info[4][0]), port)
            if ep not in found:
                found.append(ep)
    return found


def _setns(ns: str) -> None:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
        else:  # Python < 3.12
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def _listen_in(ns: str, addr: str, port: int) -> socket.socket:
    """A listening socket inside `ns` (made by a thread that entered it)."""
    box: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            _setns(ns)  # this thread only
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(64)
            box.append(s)
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


def _serve(listener: socket.socket, target: tuple[str, int], stop: threading.Event) -> None:
    listener.settimeout(0.5)
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            upstream = socket.create_connection(target, timeout=30)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        client.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


@contextmanager
def mirror_relay(ns: str) -> Iterator[list[tuple[str, int]]]:
    """Relay the host's mirror addresses into namespace `ns` while the block runs.
    Enter it before starting anything in `ns` that resolves names: the mirror's
    name goes into /etc/netns/<ns>/hosts, which `ip netns exec` mounts over
    /etc/hosts when a program starts."""
    found = mirror_endpoints()
    endpoints = sorted({(a, p) for _, a, p in found})
    addrs = sorted({a for a, _ in endpoints})
    etc = Path("/etc/netns") / ns
    made_etc = not etc.exists()
    etc.mkdir(parents=True, exist_ok=True)
    hosts = etc / "hosts"
    before = hosts.read_text() if hosts.exists() else Path("/etc/hosts").read_text()
    hosts.write_text(before + "".join(f"{a} {n}\n" for n, a, _ in found))
    # The host's nameserver is out of reach from the namespace: lookups that miss the
    # hosts file (apt's AAAA queries) must fail at once, not hold the daemon DNS's
    # bounded pool of lookups until it answers SERVFAIL to everything.
    resolv = etc / "resolv.conf"
    made_resolv = not resolv.exists()
    if made_resolv:
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    for addr in addrs:
        netns.ip(ns, "addr", "add", f"{addr}/32", "dev", "lo")
    stop = threading.Event()
    listeners = []
    try:
        for addr, port in endpoints:
            s = _listen_in(ns, addr, port)
            listeners.append(s)
            threading.Thread(target=_serve, args=(s, (addr, port), stop), daemon=True).start()
        yield endpoints
    finally:
        stop.set()
        for s in listeners:
            s.close()
        for addr in addrs:
            netns.run(["ip", "-n", ns, "addr", "del", f"{addr}/32", "dev", "lo"], check=False)
        if made_etc:
            shutil.rmtree(etc, ignore_errors=True)
        else:
            hosts.write_text(before)
            if made_resolv:
                resolv.unlink(missing_ok=True)


if __name__ == "__main__":
    with mirror_relay(sys.argv[1]) as eps:
        print("relaying", ", ".join(f"{a}:{p}" for a, p in eps), "into", sys.argv[1], flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
