#!/usr/bin/python3
"""banger-agent: the guest agent, installed in images as /usr/local/bin/banger-agent.

Standard library only (the guest has Debian's python3 and nothing else), and no
imports from banger. Python 3.11 (Debian bookworm).

One protocol on every transport: **frames** over a byte stream, so many exec, file
and request streams share the one channel (a virtio-serial port carries a single
byte stream; HTTP over it could not carry concurrent requests).

  frame   = header(12) payload
  header  = magic "bG" | type u8 | flags u8 | stream u32 | length u32   (big endian)

  HELLO    host → guest {"session", "version"}: starts a session; the guest kills
           every stream of the previous one and echoes the session id back with its
           own {"agent_version", "window", "max_frame"}. Until a HELLO the guest
           hunts for one byte by byte, so leftovers of an earlier host client (or a
           half-sent frame) are skipped; the host likewise skips everything before
           the HELLO that carries its session id.
  REQUEST  {"path": "/healthz"} → RESPONSE {"status", "body"}: the request/response
           table `HANDLERS` (/healthz, /ports, /info; add entries there). With a
           "body" ({"path": "/identity", "body": {...}}) it runs an action of
           `ACTIONS` instead (/identity, /clock; add entries there).
  OPEN     {"kind": "exec"|"tar-in"|"tar-out", ...} → OPENED {"pid"|"total"}, then
           data frames, then EXIT {"code", "signal", "error"} as the last frame.
  STDIN    host → guest data (empty = end of input); STDOUT, STDERR guest → host.
  WINDOW   u32 credit: flow control per stream and direction. Each side may send
           WINDOW_INITIAL bytes of data per stream, then only what the receiver has
           granted back after consuming it.
  RESIZE   {"rows", "cols"} (PTY), SIGNAL {"signal": N} (to the process group),
  CLOSE    host → guest: abandon the stream (the process group is killed).

A host that disconnects ends its session: every process it started is killed.

For older hosts the agent still answers plain HTTP/1.1 GETs of the same paths when
a request line arrives where a frame could start (one request at a time).

Transports, whichever the VM has (both are served when both exist):

  virtio-serial  /dev/virtio-ports/banger.agent: one byte stream shared by every
                 host client in turn; reads return end-of-file while none is
                 connected, which ends the session.
  vsock          AF_VSOCK port 1024 (QEMU vhost-vsock, Firecracker hybrid vsock):
                 ordinary connections, one session each.

The agent waits for either channel to appear (the virtio_console module may load
after the service starts), so the unit can simply be `Restart=always`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import grp
import json
import os
import pwd
import queue
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import termios
import threading
import time
from collections.abc import Callable
from typing import IO, Any, cast

try:  # loaded at start: after a restore, an import costs (every path translated anew)
    import ctypes

    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except (ImportError, OSError):  # a Python without ctypes: mount(8) instead
    _LIBC = None

AGENT_VERSION = "3"
PROTOCOL_VERSION = 2
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


# -- identity ------------------------------------------------------------------------

GOLDEN_FLAG = "/run/banger/golden"  # made by the banger-golden generator (banger.golden=1)
IDENTITY_FLAG = "/run/banger/identity"  # this boot has taken an identity


def _sh(*argv: str, stdin: str | None = None) -> None:
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")


def _write(path: str, data: str | bytes, mode: int, *, sync: bool = False) -> None:
    """Replace `path` atomically (with `sync`, on disk before it is used)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = f"{path}.banger-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
        os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _nic(sys_root: str = "/sys") -> str:
    for name in sorted(os.listdir(f"{sys_root}/class/net")):
        if name != "lo" and _read(f"{sys_root}/class/net/{name}/type").strip() == "1":
            return name
    raise RuntimeError("no Ethernet interface")


SSHD_PID = "/run/sshd.pid"


def _listeners(port: int, proc: str = "/proc") -> set[str]:
    """Socket inodes listening on TCP `port` (IPv4 and IPv6)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in _read(f"{proc}/net/{table}").splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(f[9])
    return found


def _sshd_rereads_keys(sshd: str = "/usr/sbin/sshd", proc: str = "/proc") -> bool:
    """Whether each connection's sshd reads the host keys from disk itself (OpenSSH
    before 9.8 re-executes sshd per connection, and that process loads them), so a
    new key needs no reload. From 9.8 the listener loads them and hands them to
    `sshd-session`, whose path is compiled into its binary; `sshd -r` (no re-exec)
    keeps the listener's keys too."""
    try:
        with open(sshd, "rb") as f:
            if b"sshd-session" in f.read():
                return False
        pid = int(_read(SSHD_PID).strip())
        return "-r" not in _read(f"{proc}/{pid}/cmdline").split("\0")
    except (OSError, ValueError):
        return False


def _sshd_reload() -> set[str] | None:
    """Make a running sshd take the new host key: SIGHUP re-executes it, and it reads
    its keys again. Returns its listening sockets from before, to wait for new ones
    (none to wait for when each connection reads the keys anyway, see
    `_sshd_rereads_keys`); None when no sshd runs (systemd starts it)."""
    try:
        pid = int(_read(SSHD_PID).strip())
        before = _listeners(22)
        if not before:
            return None
        if _sshd_rereads_keys():
            return set()
        os.kill(pid, signal.SIGHUP)
        return before
    except (ValueError, OSError):
        return None


def _wait_listening(old: set[str], timeout: float = 30.0) -> bool:
    """Wait until sshd listens on port 22 with a socket not among `old` (the new
    process after a reload); False when it did not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _listeners(22)
        if now and not now & old:  # a reload closes the old sockets before re-executing
            return True
        time.sleep(0.02)
    return False


def _start(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], what: str) -> None:
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: {err.strip() or proc.returncode}")


# What a restored guest does before it answers runs without new processes where it
# can: under emulation every exec is translated afresh after a restore (~0.1-1 s
# each), and at native speed syscalls are still cheaper than `mount`, `ip` and `sh`.

_MOUNT_FLAGS = {
    "ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "dirsync": 128,
    "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24,
    "lazytime": 1 << 25,
}  # fmt: skip
# Options only mount(8) or systemd act on, or that are the kernel's defaults anyway.
_MOUNT_IGNORED = {"defaults", "rw", "auto", "noauto", "nofail", "_netdev", "async", "atime",
                  "diratime", "dev", "suid", "exec", "nouser"}  # fmt: skip


def fstab_mount(target: str, fstab: str = "/etc/fstab") -> tuple[str, str, int, str] | None:
    """The mount(2) arguments of `target`'s /etc/fstab line: (device, type, flags,
    data), or None when only mount(8) can mount it (a UUID=/LABEL= device, user
    options, a loop device, ...)."""
    for line in _read(fstab).splitlines():
        f = line.split()
        if len(f) < 4 or f[0].startswith("#") or f[1] != target:
            continue
        dev, fstype, flags, data = f[0], f[2], 0, []
        if not dev.startswith("/dev/") or fstype in ("auto", "swap", "none"):
            return None
        for opt in f[3].split(","):
            if opt in _MOUNT_FLAGS:
                flags |= _MOUNT_FLAGS[opt]
            elif opt in _MOUNT_IGNORED or opt.startswith(("x-", "comment=")):
                continue
            elif opt in ("user", "users", "owner", "group", "loop") or opt.startswith(
                ("loop=", "offset=", "sizelimit=", "context=", "helper=", "X-")
            ):
                return None
            else:
                data.append(opt)  # the filesystem's own, e.g. errors=remount-ro
        return dev, fstype, flags, ",".join(data)
    return None


def _in_background(
    name: str, fn: Callable[[], None], *, must_finish: bool, within: float = 60.0
) -> Callable[[], None]:
    """Run `fn` on a thread named `name`; returns the function that waits for it (at
    most `within` seconds) and re-raises what `fn` raised. An overrun raises when
    `must_finish`; otherwise the waiter returns and leaves the thread to it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised by the waiter
            errors.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def wait() -> None:
        thread.join(within)
        if must_finish and thread.is_alive():
            raise RuntimeError(f"{name} did not finish within {within:g} s")
        if errors:
            raise errors[0]

    return wait


def _mount(target: str) -> Callable[[], None]:
    """Start mounting `target` as /etc/fstab says (with the mount(2) syscall, on a
    thread, falling back to mount(8)); returns the function that waits for it."""
    args = fstab_mount(target)
    libc = _LIBC
    if args is None or libc is None:
        proc = _start("mount", target)
        return lambda: _finish(proc, f"mount {target}")
    dev, fstype, flags, data = args

    def run() -> None:
        opts = data.encode() if data else None
        if libc.mount(dev.encode(), target.encode(), fstype.encode(), flags, opts) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {dev} on {target}: {os.strerror(err)}")

    return _in_background(f"mount {target}", run, must_finish=True)


# rtnetlink, as far as `ip` would go for a VM's address and default route.
_NLMSG = struct.Struct("=IHHII")
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR, RTM_NEWROUTE = 16, 20, 21, 22, 24
IFA_ADDRESS, IFA_LOCAL, IFLA_ADDRESS, RTA_OIF, RTA_GATEWAY = 1, 2, 1, 4, 5


def _rta(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * (-n % 4)


def _rtas(payload: bytes, offset: int) -> dict[int, bytes]:
    out = {}
    while offset + 4 <= len(payload):
        n, kind = struct.unpack_from("=HH", payload, offset)
        if n < 4:
            break
        out[kind] = payload[offset + 4 : offset + n]
        offset += (n + 3) & ~3
    return out


class Rtnl:
    """A NETLINK_ROUTE socket that sends one request at a time and reads its answer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> list[bytes]:
        """Send a request; the payloads of a dump (NLM_F_DUMP), or [] once acked.
        A refusal raises OSError naming `what`."""
        self.seq += 1
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        flags |= NLM_F_REQUEST | (0 if dump else NLM_F_ACK)
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), kind, flags, self.seq, 0) + body)
        out: list[bytes] = []
        while True:
            data, off = self.sock.recv(1 << 16), 0
            while off + _NLMSG.size <= len(data):
                n, typ, _, seq, _ = _NLMSG.unpack_from(data, off)
                payload, off = data[off + _NLMSG.size : off + n], off + ((n + 3) & ~3)
                if n < _NLMSG.size or seq != self.seq:
                    continue
                if typ == 2:  # NLMSG_ERROR: 0 is the ack
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise OSError(err, f"{what}: {os.strerror(err)}")
                    return out
                if typ == 3:  # NLMSG_DONE
                    return out
                out.append(payload)


def configure_net(dev: str, mac: str, ip: str, prefix: int, gateway: str) -> None:
    """What `ip link set dev DEV address MAC up; ip addr flush dev DEV; ip addr add
    IP/PREFIX dev DEV; ip route replace default via GATEWAY dev DEV onlink` does."""
    index = socket.if_nametoindex(dev)
    addr, gw = socket.inet_aton(ip), socket.inet_aton(gateway)
    with Rtnl() as nl:
        link = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 1, 1)  # IFF_UP
        nl.request(RTM_NEWLINK, 0, link + _rta(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))),
                   f"link set dev {dev} address {mac} up")  # fmt: skip
        ifa = struct.Struct("=BBBBI")
        for old in nl.request(RTM_GETADDR, NLM_F_DUMP, ifa.pack(socket.AF_INET, 0, 0, 0, 0),
                              "addr show"):  # fmt: skip
            family, plen, _, _, at = ifa.unpack_from(old)
            if family != socket.AF_INET or at != index:
                continue
            attrs = _rtas(old, ifa.size)
            body = ifa.pack(family, plen, 0, 0, index) + b"".join(
                _rta(k, attrs[k]) for k in (IFA_LOCAL, IFA_ADDRESS) if k in attrs
            )
            try:
                nl.request(RTM_DELADDR, 0, body, f"addr flush dev {dev}")
            except OSError as exc:  # a secondary address goes with its primary
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
        body = ifa.pack(socket.AF_INET, prefix, 0, 0, index)
        body += _rta(IFA_LOCAL, addr) + _rta(IFA_ADDRESS, addr)
        nl.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body,
                   f"addr add {ip}/{prefix} dev {dev}")  # fmt: skip
        # rtmsg: inet, default (/0), main table, proto boot, scope universe, unicast, onlink
        route = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 4)
        route += _rta(RTA_GATEWAY, gw) + _rta(RTA_OIF, struct.pack("=i", index))
        nl.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, route,
                   f"route replace default via {gateway} dev {dev} onlink")  # fmt: skip


def write_resolv(dns: list[str], search: str | None, root: str = "") -> None:
    """/etc/resolv.conf as banger-resolv (the image's, for boots) writes it, replaced
    atomically."""
    lines = [
        "# written by banger-agent: the banger daemon's DNS (NAME.vm, and the outside",
        "# world for VMs with NAT)",
        *(f"nameserver {ns}" for ns in dns),
        *([f"search {search}"] if search else []),
    ]
    _write(f"{root}/etc/resolv.conf", "\n".join(lines) + "\n", 0o644)


def _fsync_later(path: str) -> Callable[[], None]:
    """fsync `path` and its directory on a thread; returns the function that waits
    (a sync slower than 60 s is left running, not an error)."""

    def run() -> None:
        for p, flags in ((path, os.O_RDONLY), (os.path.dirname(path), os.O_DIRECTORY)):
            fd = os.open(p, flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    return _in_background(f"fsync {path}", run, must_finish=False)


def identity(body: dict[str, Any]) -> dict[str, Any]:
    """Give a restored guest (golden snapshot or fork) its own identity: clock,
    hostname, machine-id, SSH host key (sshd, which a golden boot runs with a
    throwaway key and no network, reloads it unless each connection reads it
    anyway), /root (mounted from the VM's own work disk unless already), authorized
    key; the network last (netlink, and /etc/resolv.conf), so nothing reaches the
    guest before it is this VM. No new process on the way for the usual image (see
    `_mount`, `configure_net`). Answers once sshd listens with the new key and that
    key is on disk, so the host's first SSH attempt is the one that logs in. With
    "hold", what the golden boot held back (multi-user.target: services that need /root) waits for
    `/start-held`, so it does not compete with the first login; without it, it
    starts now. Returns the steps applied and how long each took."""
    steps: dict[str, float] = {}
    t = time.monotonic()

    def done(step: str) -> None:
        nonlocal t
        now = time.monotonic()
        steps[step] = round(now - t, 3)
        t = now

    if "time" in body:  # the host's clock when it sent this request
        time.clock_settime(time.CLOCK_REALTIME, float(body["time"]))
        done("clock")
    work = body.get("work_device")
    mounted = None
    if work and not os.path.ismount("/root"):
        want = int(body.get("work_bytes", 0))
        dev_name = os.path.basename(str(work))
        have = int(_read(f"/sys/block/{dev_name}/size").strip() or 0) * 512
        if want and have < want:
            raise RuntimeError(f"{work} is {have} bytes, expected {want} (not resized)")
        # Drop what the page cache holds of the disk the saved machine had there.
        fd = os.open(str(work), os.O_RDONLY)
        try:
            fcntl.ioctl(fd, 0x1261)  # BLKFLSBUF
        finally:
            os.close(fd)
        mounted = _mount("/root")  # by /etc/fstab; systemd sees root.mount active
    name = str(body["hostname"])
    with open("/proc/sys/kernel/hostname", "w") as f:
        f.write(name)
    _write("/etc/hostname", name + "\n", 0o644)
    _write("/etc/machine-id", str(body["machine_id"]) + "\n", 0o444)
    done("hostname")
    key = "/etc/ssh/ssh_host_ed25519_key"
    # On disk before this answers: banger records this key, and a VM killed later
    # must come back with it, not with the saved machine's (synced meanwhile).
    _write(key + ".pub", str(body["host_key_pub"]) + "\n", 0o644)
    _write(key, str(body["host_key"]), 0o600)
    synced = _fsync_later(key)
    reloading = _sshd_reload()
    done("host-key")
    os.makedirs(os.path.dirname(GOLDEN_FLAG), exist_ok=True)
    with open(IDENTITY_FLAG, "w"):  # the generator never marks this boot golden again
        pass
    with contextlib.suppress(FileNotFoundError):
        os.unlink(GOLDEN_FLAG)  # lets the units the golden boot held back start
    if mounted is not None:
        mounted()
        done("root")
    if body.get("authorized_key"):
        os.makedirs("/root/.ssh", mode=0o700, exist_ok=True)
        _write("/root/.ssh/authorized_keys", str(body["authorized_key"]) + "\n", 0o600)
        done("authorized-key")
    configure_net(_nic(), str(body["mac"]), str(body["ip"]), int(body["prefix"]),
                  str(body["gateway"]))  # fmt: skip
    if body.get("dns"):
        write_resolv([str(d) for d in body["dns"]], body.get("search"))
    done("network")
    synced()
    held = bool(body.get("hold"))
    if reloading is None:  # no sshd yet (an image whose golden boot held it back)
        _sh("systemctl", "--no-block", "restart", "ssh.service")
        reloading = set()
    if not held:
        _sh("systemctl", "--no-block", "start", "multi-user.target")
    if not _wait_listening(reloading):
        raise RuntimeError("sshd did not listen on port 22 again within 30 s")
    done("sshd")
    return {"ok": True, "applied": list(steps), "seconds": steps, "hostname": name, "held": held}


def start_held(body: dict[str, Any]) -> dict[str, Any]:
    """Start what a golden boot held back and `/identity` with "hold" left waiting
    (multi-user.target), without waiting for it."""
    proc = _start("systemctl", "--no-block", "start", "multi-user.target")
    threading.Thread(target=proc.communicate, daemon=True).start()  # reaps it
    return {"ok": True}


# Request/response messages, over frames (REQUEST) and plain HTTP GET alike: a path
# and a function of the /proc root returning a JSON object. Add entries here.
HANDLERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "/healthz": healthz,
    "/ports": ports,
    "/info": info,
}


def set_clock(body: dict[str, Any]) -> dict[str, Any]:
    """Set the realtime clock to the host's (`unix_ns`), e.g. after a resume: the
    guest's clock stood still while its state was saved."""
    target = int(body["unix_ns"])
    before = time.time_ns()
    time.clock_settime_ns(time.CLOCK_REALTIME, target)
    return {"unix_ns": target, "was_off_s": round((before - target) / 1e9, 6)}


# Requests that carry a JSON body (sent as {"path", "body"}) and change something in
# the guest: a path and a function of that body returning a JSON object.
ACTIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "/identity": identity,
    "/start-held": start_held,
    "/clock": set_clock,
}


def act(path: str, body: Any) -> tuple[int, dict[str, Any]]:
    action = ACTIONS.get(path)
    if action is None:
        return 404, {"error": f"no such action {path}", "paths": sorted(ACTIONS)}
    if not isinstance(body, dict):
        return 400, {"error": f"{path} needs a JSON object body"}
    try:
        return 200, action(body)
    except (KeyError, TypeError, ValueError) as exc:
        return 400, {"error": f"bad {path} request: {type(exc).__name__}: {exc}"}
    except Exception as exc:  # report, never die: the agent must keep answering
        return 500, {"error": f"{type(exc).__name__}: {exc}"}


def route(method: str, path: str, proc: str = "/proc") -> tuple[int, dict[str, Any]]:
    handler = HANDLERS.get(path.split("?", 1)[0])
    if handler is None:
        return 404, {"error": f"no such path {path}", "paths": sorted(HANDLERS)}
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


# -- frames ------------------------------------------------------------------------------

MAGIC = b"bG"
HEADER = struct.Struct(">2sBBII")
HELLO, REQUEST, RESPONSE, OPEN, OPENED = 1, 2, 3, 4, 5
STDIN, STDOUT, STDERR, WINDOW, RESIZE, SIGNAL, EXIT, CLOSE = 6, 7, 8, 9, 10, 11, 12, 13
FRAME_NAMES = {
    HELLO: "hello",
    REQUEST: "request",
    RESPONSE: "response",
    OPEN: "open",
    OPENED: "opened",
    STDIN: "stdin",
    STDOUT: "stdout",
    STDERR: "stderr",
    WINDOW: "window",
    RESIZE: "resize",
    SIGNAL: "signal",
    EXIT: "exit",
    CLOSE: "close",
}
MAX_FRAME = 1 << 20  # a longer frame means the stream is out of step
CHUNK = 64 << 10  # data frames carry at most this much
WINDOW_INITIAL = 1 << 20  # per stream and direction
_WINDOW = struct.Struct(">I")
_HELLO_PREFIX = MAGIC + bytes([HELLO])


class FrameError(ValueError):
    """The byte stream is not at a frame boundary (garbage, or out of step)."""


def encode(ftype: int, stream: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, ftype, 0, stream, len(payload)) + payload


def encode_json(ftype: int, stream: int, obj: Any) -> bytes:
    return encode(ftype, stream, json.dumps(obj, separators=(",", ":")).encode())


def decode_json(payload: bytes) -> dict[str, Any]:
    """A frame's JSON object payload; {} for an empty, malformed or non-object one."""
    try:
        obj = json.loads(payload or b"{}")
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def decode_header(head: bytes) -> tuple[int, int, int]:
    """(type, stream, length) of a 12-byte header; FrameError when it is not one."""
    magic, ftype, _flags, stream, length = HEADER.unpack(head)
    if magic != MAGIC or ftype not in FRAME_NAMES or length > MAX_FRAME:
        raise FrameError(f"not a frame header: {head!r}")
    return ftype, stream, length


def window(n: int) -> bytes:
    return _WINDOW.pack(n)


def parse_window(payload: bytes) -> int:
    return int(_WINDOW.unpack(payload[:4])[0]) if len(payload) >= 4 else 0


# -- safe archives (shared with the host side) -------------------------------------------


class UnsafeArchive(ValueError):
    """An archive member would land outside the target directory."""


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _member_parts(name: str) -> list[str]:
    if name.startswith("/"):
        raise UnsafeArchive(f"refusing archive member {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"refusing archive member {name!r}: it climbs out with '..'")
    return parts


def extract_archive(fileobj: IO[bytes], dest: str, exact: bool = False) -> dict[str, int]:
    """Extract a tar stream like `cp -a SRC DEST`: into DEST when it is a directory,
    else as DEST itself (the archive's top-level entry renamed; `exact`: always so,
    and never replacing a directory); missing parents are created. Modes, mtimes and
    symlinks are kept, ownership too when running as root. Members that would land
    outside the target (absolute names, '..', hard links out, writing through a
    symlink) raise UnsafeArchive."""
    dest = os.path.abspath(dest)
    if os.path.isdir(dest) and not exact:
        base, rename = dest, None
    else:
        if os.path.isdir(dest) and not os.path.islink(dest):
            raise IsADirectoryError(f"{dest} is a directory")
        base, rename = os.path.dirname(dest), os.path.basename(dest)
        os.makedirs(base, exist_ok=True)
    base = os.path.realpath(base)
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    files = total = 0
    kw: dict[str, Any] = {"numeric_owner": True}
    if hasattr(tarfile, "fully_trusted_filter"):
        kw["filter"] = "fully_trusted"  # the checks below are ours; keep every attribute
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for m in tar:
            parts = _member_parts(m.name)
            if not parts:
                continue
            if rename:
                parts[0] = rename
            target = os.path.join(base, *parts)
            parent = os.path.realpath(os.path.dirname(target))
            if not _inside(parent, base):
                raise UnsafeArchive(f"refusing archive member {m.name!r}: it leads outside")
            if m.islnk():
                lparts = _member_parts(m.linkname)
                if rename and lparts:
                    lparts[0] = rename
                m.linkname = "/".join(lparts)
            elif m.ischr() or m.isblk() or m.isfifo():
                continue  # device nodes and fifos are not files to copy
            if os.path.lexists(target):
                if m.isdir() and os.path.isdir(target) and not os.path.islink(target):
                    pass
                elif os.path.isdir(target) and not os.path.islink(target):
                    raise IsADirectoryError(f"{target} is a directory; not replacing it")
                else:
                    os.unlink(target)
            m.name = "/".join(parts)
            if m.isdir():
                dirs.append((target, m))
                m_mode = m.mode
                m.mode = m_mode | 0o700  # stay writable until its contents are in
                tar.extract(m, base, set_attrs=True, **kw)
                m.mode = m_mode
                continue
            tar.extract(m, base, set_attrs=True, **kw)
            files += 1
            total += m.size if m.isreg() else 0
    for target, m in reversed(dirs):  # after their contents: mode and mtime stick
        os.chmod(target, m.mode & 0o7777)
        os.utime(target, (m.mtime, m.mtime))
    return {"files": files, "dirs": len(dirs), "bytes": total}


def tree_size(path: str) -> int:
    """Bytes of regular files under path (symlinks not followed)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    total = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, n))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def archive_source(path: str) -> tuple[str, str]:
    """(what to archive, its top-level name): a symlink given as the source is
    followed (as `cp` does), links inside a directory are kept as links."""
    real = os.path.realpath(path) if os.path.islink(path) else path
    os.lstat(real)  # FileNotFoundError names the path
    name = os.path.basename(os.path.normpath(path)) or "root"
    return real, name


# -- guest-side streams ------------------------------------------------------------------

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StreamClosed(Exception):
    pass


class _Stream:
    """One host-opened stream: credit for what we send, a queue of what we receive."""

    def __init__(self, session: Session, sid: int) -> None:
        self.session = session
        self.sid = sid
        self.credit = WINDOW_INITIAL
        self.cv = threading.Condition()
        self.closed = False
        self.inbox: queue.Queue[bytes | None] = queue.Queue()

    # credit for guest → host data
    def grant(self, n: int) -> None:
        with self.cv:
            self.credit += n
            self.cv.notify_all()

    def take(self, want: int) -> int:
        with self.cv:
            while self.credit <= 0 and not self.closed:
                self.cv.wait()
            if self.closed:
                raise StreamClosed()
            n = min(want, self.credit)
            self.credit -= n
            return n

    def send_data(self, ftype: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.take(min(len(view), CHUNK))
            self.session.send(encode(ftype, self.sid, bytes(view[:n])))
            view = view[n:]

    def stdin(self, data: bytes) -> None:
        self.inbox.put(data)

    def ack(self, n: int) -> None:
        """Tell the host we consumed n bytes of its input."""
        if n and not self.closed:
            self.session.send(encode(WINDOW, self.sid, window(n)))

    def finish(self, result: dict[str, Any]) -> None:
        if not self.closed:
            self.session.send(encode_json(EXIT, self.sid, result))
        self.session.forget(self.sid)

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.inbox.put(None)

    def resize(self, rows: int, cols: int) -> None:
        pass

    def signal(self, signum: int) -> None:
        pass

    def start(self) -> None:
        raise NotImplementedError


def _user_env(spec: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], str]:
    """The environment, Popen user arguments and working directory for spec."""
    user = str(spec.get("user") or "root")
    name, _, group = user.partition(":")
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        uid, gid, home, login, shell = pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_name, pw.pw_shell
    except KeyError:
        if not name.isdigit():
            raise
        # A uid the image has no account for (common in OCI images): run as it, in
        # group 0 with home /, as docker does.
        uid, gid, home, login, shell = int(name), 0, "/", "", ""
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    env = {"HOME": home, "SHELL": shell or "/bin/sh", "PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    if login:
        env.update(USER=login, LOGNAME=login)
    if spec.get("tty"):
        env["TERM"] = str(spec.get("term") or "xterm-256color")
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    kw: dict[str, Any] = {}
    if uid != os.geteuid() or gid != os.getegid():
        kw = {
            "user": uid,
            "group": gid,
            "extra_groups": os.getgrouplist(login, gid) if login else [],
        }
    workdir = str(spec.get("workdir") or home or "/")
    if not os.path.isdir(workdir):
        if spec.get("workdir"):
            raise FileNotFoundError(f"working directory {workdir} does not exist")
        workdir = "/"
    return env, kw, workdir


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    if rows > 0 and cols > 0:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_ctty() -> None:  # runs in the child, after setsid: the PTY becomes its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ExecStream(_Stream):
    """A process: pipes (stdout and stderr apart) or a PTY; its process group is
    killed when the stream is closed or the session ends."""

    def __init__(self, session: Session, sid: int, spec: dict[str, Any]) -> None:
        super().__init__(session, sid)
        self.spec = spec
        self.tty = bool(spec.get("tty"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.master = -1
        self.stdin_fd = -1
        self.exited = threading.Event()

    def start(self) -> None:
        argv = [str(a) for a in self.spec.get("argv") or []]
        if not argv:
            raise ValueError("no command given")
        env, user_kw, workdir = _user_env(self.spec)
        if self.tty:
            master, slave = os.openpty()
            _set_winsize(slave, int(self.spec.get("rows") or 0), int(self.spec.get("cols") or 0))
            try:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_take_ctty,
                    **user_kw,
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            self.master = self.stdin_fd = master
            outs = [(master, STDOUT)]
        else:
            stdin = subprocess.PIPE if self.spec.get("stdin") else subprocess.DEVNULL
            self.proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                **user_kw,
            )
            assert self.proc.stdout is not None and self.proc.stderr is not None
            if self.proc.stdin is not None:
                self.stdin_fd = self.proc.stdin.fileno()
            outs = [(self.proc.stdout.fileno(), STDOUT), (self.proc.stderr.fileno(), STDERR)]
        self.session.send(encode_json(OPENED, self.sid, {"pid": self.proc.pid}))
        pumps = [_thread(self._pump, fd, ftype) for fd, ftype in outs]
        if self.stdin_fd >= 0:
            _thread(self._feed)
        _thread(self._wait, pumps)

    def _pump(self, fd: int, ftype: int) -> None:
        drain_until = 0.0
        with contextlib.suppress(StreamClosed):
            while True:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if not ready:
                    if self.closed:
                        return
                    if self.tty and self.exited.is_set():
                        # the PTY may stay open in background children: stop soon after exit
                        drain_until = drain_until or time.monotonic() + 0.3
                        if time.monotonic() > drain_until:
                            return
                    continue
                n = self.take(CHUNK)
                try:
                    data = os.read(fd, n)
                except OSError:  # EIO: the PTY's last holder went away
                    data = b""
                if len(data) < n:
                    self.grant(n - len(data))
                if not data:
                    return
                self.session.send(encode(ftype, self.sid, data))

    def _feed(self) -> None:
        fd = self.stdin_fd
        while (data := self.inbox.get()) is not None:
            if not data:  # end of input
                if self.tty:
                    continue  # a terminal has no end of input; ^D is data
                with contextlib.suppress(OSError):
                    os.close(fd)
                self.stdin_fd = -1
                return
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                pass  # the process stopped reading; keep acknowledging, drop input
            self.ack(len(data))

    def _wait(self, pumps: list[threading.Thread]) -> None:
        assert self.proc is not None
        rc = self.proc.wait()
        self.exited.set()
        for t in pumps:
            t.join()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        self.inbox.put(None)
        self.finish({"code": 128 - rc, "signal": -rc} if rc < 0 else {"code": rc, "signal": None})

    def resize(self, rows: int, cols: int) -> None:
        if self.master >= 0:
            with contextlib.suppress(OSError):
                _set_winsize(self.master, rows, cols)

    def signal(self, signum: int) -> None:
        if self.proc is not None and not self.exited.is_set():
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signum)

    def close(self) -> None:
        super().close()
        self.signal(signal.SIGKILL)


class _InboxReader:
    """A file object over a stream's STDIN frames (for tarfile)."""

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        self.buf = b""
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        while not self.eof and (n < 0 or len(self.buf) < n):
            data = self.stream.inbox.get()
            if data is None:
                raise StreamClosed()
            if not data:
                self.eof = True
                break
            self.stream.ack(len(data))
            self.buf += data
        if n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _DataWriter:
    """A file object that sends what is written as STDOUT frames (for tarfile)."""

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.send_data(STDOUT, bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class TarInStream(_Stream):
    """Receive a tar stream on STDIN and extract it at spec["path"]."""

    def __init__(self, session: Session, sid: int, spec: dict[str, Any]) -> None:
        super().__init__(session, sid)
        self.dest = str(spec.get("path") or "")
        self.exact = bool(spec.get("exact"))

    def start(self) -> None:
        if not self.dest.startswith("/"):
            raise ValueError(f"destination {self.dest!r} is not an absolute path")
        self.session.send(encode_json(OPENED, self.sid, {}))
        _thread(self._run)

    def _run(self) -> None:
        try:
            stats = extract_archive(cast(Any, _InboxReader(self)), self.dest, self.exact)
        except StreamClosed:
            self.finish({"code": 1, "error": "cancelled"})
        except (OSError, tarfile.TarError, UnsafeArchive, KeyError) as exc:
            self.finish({"code": 1, "error": _describe(exc)})
        else:
            self.finish({"code": 0, **stats})


class TarOutStream(_Stream):
    """Send spec["path"] (file or directory) as a tar stream on STDOUT."""

    def __init__(self, session: Session, sid: int, spec: dict[str, Any]) -> None:
        super().__init__(session, sid)
        self.path = str(spec.get("path") or "")

    def start(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"source {self.path!r} is not an absolute path")
        real, name = archive_source(self.path)
        self.session.send(encode_json(OPENED, self.sid, {"total": tree_size(real)}))
        _thread(self._run, real, name)

    def _run(self, real: str, name: str) -> None:
        try:
            with tarfile.open(
                fileobj=cast(Any, _DataWriter(self)),
                mode="w|",
                format=tarfile.PAX_FORMAT,
                bufsize=CHUNK,
            ) as tar:
                tar.add(real, arcname=name, recursive=True)
        except StreamClosed:
            self.finish({"code": 1, "error": "cancelled"})
        except (OSError, tarfile.TarError) as exc:
            self.finish({"code": 1, "error": _describe(exc)})
        else:
            self.finish({"code": 0})


KINDS: dict[str, Callable[[Session, int, dict[str, Any]], _Stream]] = {
    "exec": ExecStream,
    "tar-in": TarInStream,
    "tar-out": TarOutStream,
}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def _thread(target: Callable[..., None], *args: Any) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


class Session:
    """The streams one host client opened; all of them end with the session."""

    def __init__(self, out: Stream, proc: str, session_id: str) -> None:
        self.out = out
        self.proc = proc
        self.id = session_id
        self.wlock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.lock = threading.Lock()
        self.dead = False

    def send(self, frame: bytes) -> None:
        with self.wlock:
            if self.dead:
                raise StreamClosed()
            try:
                self.out.write(frame)
            except OSError:
                self.dead = True
                raise StreamClosed() from None

    def forget(self, sid: int) -> None:
        with self.lock:
            self.streams.pop(sid, None)

    def end(self) -> None:
        with self.lock:
            streams, self.streams = list(self.streams.values()), {}
        for s in streams:
            s.close()

    def handle(self, ftype: int, sid: int, payload: bytes) -> None:
        if ftype == REQUEST:
            _thread(self._request, sid, payload)
            return
        if ftype == OPEN:
            self._open(sid, payload)
            return
        with self.lock:
            stream = self.streams.get(sid)
        if stream is None:
            return  # a stream that already ended: late input is dropped
        if ftype == STDIN:
            stream.stdin(payload)
        elif ftype == WINDOW:
            stream.grant(parse_window(payload))
        elif ftype == RESIZE:
            size = decode_json(payload)
            stream.resize(int(size.get("rows", 0)), int(size.get("cols", 0)))
        elif ftype == SIGNAL:
            stream.signal(int(decode_json(payload).get("signal", signal.SIGTERM)))
        elif ftype == CLOSE:
            self.forget(sid)
            stream.close()

    def _request(self, sid: int, payload: bytes) -> None:
        req = decode_json(payload)
        if "body" in req:
            status, body = act(str(req.get("path", "")), req["body"])
        else:
            status, body = route("GET", str(req.get("path", "")), self.proc)
        with contextlib.suppress(StreamClosed):
            self.send(encode_json(RESPONSE, sid, {"status": status, "body": body}))

    def _open(self, sid: int, payload: bytes) -> None:
        spec = decode_json(payload)
        kind = KINDS.get(str(spec.get("kind")))
        try:
            if kind is None:
                raise ValueError(f"unknown stream kind {spec.get('kind')!r}; have {sorted(KINDS)}")
            with self.lock:
                if sid in self.streams:
                    raise ValueError(f"stream {sid} is already open")
            stream = kind(self, sid, spec)
            with self.lock:
                self.streams[sid] = stream
            stream.start()
        except StreamClosed:
            return
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            self.forget(sid)
            code = 1  # like a shell: 127 command not found, 126 cannot run it
            if spec.get("kind") == "exec":
                code = 127 if isinstance(exc, FileNotFoundError) else 126
            if isinstance(exc, KeyError):
                exc = ValueError(f"no such user or group {exc.args[0] if exc.args else ''}")
            with contextlib.suppress(StreamClosed):
                self.send(encode_json(EXIT, sid, {"code": code, "error": _describe(exc)}))


def serve_channel(stream: Stream, proc: str = "/proc", *, connection: bool = True) -> None:
    """Serve one byte stream until it ends: frame sessions (HELLO ... ) and, between
    them, plain HTTP requests from older hosts. The session ends with the stream."""
    session: Session | None = None
    try:
        while True:
            if session is None:
                found = _hunt(stream, proc, connection)
                if found is None:
                    return
                session = found
                continue
            head = stream.read(HEADER.size)
            if len(head) < HEADER.size:
                return
            try:
                ftype, sid, length = decode_header(head)
            except FrameError:
                log("out of step with the host; waiting for a new session")
                stream.buf = head[1:] + stream.buf
                session.end()
                session = None
                continue
            payload = stream.read(length)
            if len(payload) < length:
                return
            if ftype == HELLO:
                session.end()
                session = _hello(stream, proc, payload)
                continue
            session.handle(ftype, sid, payload)
    finally:
        if session is not None:
            session.end()


def _hello(stream: Stream, proc: str, payload: bytes) -> Session | None:
    hello = decode_json(payload)
    session = Session(stream, proc, str(hello.get("session", "")))
    reply = {
        "session": session.id,
        "version": PROTOCOL_VERSION,
        "agent_version": AGENT_VERSION,
        "window": WINDOW_INITIAL,
        "max_frame": CHUNK,
        "kinds": sorted(KINDS),
        "requests": sorted(HANDLERS),
        "actions": sorted(ACTIONS),
    }
    try:
        session.send(encode_json(HELLO, 0, reply))
    except StreamClosed:
        return None
    return session


def _hunt(stream: Stream, proc: str, connection: bool) -> Session | None:
    """Skip bytes until a HELLO frame (→ a new session) or an HTTP request line
    (answered here); None at end of stream."""
    while True:
        if not stream.buf and not stream._fill():
            return None
        i = stream.buf.find(_HELLO_PREFIX)
        nl = stream.buf.find(b"\n")
        if i == 0:
            head = stream.read(HEADER.size)
            if len(head) < HEADER.size:
                return None
            try:
                _, _, length = decode_header(head)
            except FrameError:
                stream.buf = head[1:] + stream.buf
                continue
            if length > 4096:
                stream.buf = head[1:] + stream.buf
                continue
            payload = stream.read(length)
            if len(payload) < length:
                return None
            return _hello(stream, proc, payload)
        if nl >= 0 and (i < 0 or nl < i):
            line = stream.buf[: nl + 1]
            if _REQUEST_LINE.match(line):
                more = serve_one(stream, proc)
                if more is None or (connection and not more):
                    return None
            else:
                stream.buf = stream.buf[nl + 1 :]
            continue
        if i > 0:
            stream.buf = stream.buf[i:]
            continue
        # neither yet: keep a possible partial HELLO prefix or line, read more
        if len(stream.buf) > MAX_LINE:
            stream.buf = stream.buf[-(len(_HELLO_PREFIX) - 1) :]
        if not stream._fill():
            return None


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
                serve_channel(stream, proc, connection=False)
                stream.eof = False
                time.sleep(0.05)  # host side not connected
        except OSError as exc:
            log(f"{path}: {exc}; reopening")
            time.sleep(0.5)
        finally:
            os.close(fd)


def _serve_conn(conn: socket.socket, proc: str) -> None:
    with conn, contextlib.suppress(OSError):
        serve_channel(Stream(conn.fileno()), proc)


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


# Job-control signals a command expects at their defaults. An ignored disposition
# survives exec, so an agent started with them ignored (a background job, nohup, some
# init systems) would hand that on and a terminal's Ctrl-C would do nothing. A handled
# signal is reset to its default at exec, so the agent handles them as no-ops instead.
_INHERITED_SIGNALS = (
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


def _ignore(signum: int, frame: object) -> None:
    pass


def _unignore_signals() -> None:
    for sig in _INHERITED_SIGNALS:
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, _ignore)


def main(argv: list[str] | None = None) -> int:
    _unignore_signals()
    ap = argparse.ArgumentParser(prog="banger-agent", description=__doc__.split("\n")[0])
    ap.add_argument("--serial", default=SERIAL_PATH, help="virtio-serial port to serve")
    ap.add_argument("--vsock-port", type=int, default=VSOCK_PORT)
    ap.add_argument("--no-serial", action="store_true")
    ap.add_argument("--no-vsock", action="store_true")
    ap.add_argument("--fd", type=int, help="serve this inherited stream until it ends (tests)")
    ap.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fd is not None:
        serve_channel(Stream(args.fd), args.proc, connection=False)  # like the serial port
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
