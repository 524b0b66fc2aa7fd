"""Running netlink work inside a named network namespace, and naming its errors.

`setns(CLONE_NEWNET)` only moves the calling *thread*, so work for another namespace
runs on a short-lived thread that enters it and exits afterwards. That costs about a
millisecond, against ~10 ms for pyroute2's own `netns=` support, which forks a helper
process per socket. The thread is never reused: a thread parked in a namespace would
keep it alive after `ip netns del`, together with every device in it.

pyroute2's synchronous `IPRoute` drives a private event loop, which cannot run on a
thread whose loop is already running; the same thread hop covers that case, so the
daemon may call this layer from a coroutine (though `asyncio.to_thread` is kinder).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from banger.errors import (
    BangerError,
    CommandFailed,
    Conflict,
    InvalidInput,
    NotFound,
    PrivilegeError,
)

if TYPE_CHECKING:
    from pyroute2.netlink.exceptions import NetlinkError

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
IFNAMSIZ = 15  # usable characters; the kernel's 16 includes the NUL

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NSNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_libc = ctypes.CDLL(None, use_errno=True)

PRIVILEGE_HINT = (
    "run bangerd as root, or allow passwordless sudo for "
    "`python -m banger.net.privileged` and `nft` (see README: Privileges)"
)


def check_ifname(name: str, what: str = "interface") -> str:
    """Reject names the kernel would refuse (or that could smuggle nft syntax)."""
    if not (0 < len(name) <= IFNAMSIZ) or not _IFNAME.fullmatch(name):
        raise InvalidInput(
            f"invalid {what} name {name!r}",
            hint=f"use 1-{IFNAMSIZ} characters from A-Z a-z 0-9 _ . -",
        )
    return name


def netns_path(netns: str) -> str:
    """Map a namespace name (as in `ip netns`) or an nsfs path to a path."""
    if netns.startswith("/"):
        path = netns
    elif _NSNAME.fullmatch(netns):
        path = os.path.join(NETNS_RUN_DIR, netns)
    else:
        raise InvalidInput(f"invalid network namespace name {netns!r}")
    if not os.path.exists(path):
        raise NotFound(
            f"network namespace {netns!r} does not exist",
            hint=f"create it with `ip netns add {netns}` or omit the namespace",
        )
    return path


def _enter(netns: str) -> None:
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise PrivilegeError(
                f"cannot enter network namespace {netns!r}: {os.strerror(err)}",
                hint=PRIVILEGE_HINT,
            )
    finally:
        os.close(fd)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def call_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run `fn` in `netns` (None: the current namespace) and return its result."""
    if netns is None and not _loop_running():
        return fn()
    if netns is not None:
        netns_path(netns)  # fail with a clear message before spawning anything
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            if netns is not None:
                _enter(netns)
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns:{netns or '-'}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def translate(exc: NetlinkError, doing: str) -> BangerError:
    """Turn a netlink errno into the error vocabulary the CLI knows how to show."""
    code = exc.code
    msg = f"{doing}: {os.strerror(code) if code else exc}"
    if code in (errno.EPERM, errno.EACCES):
        return PrivilegeError(msg, hint=PRIVILEGE_HINT)
    if code == errno.EEXIST:
        return Conflict(msg, hint="the device already exists; delete it or pick another name")
    if code in (errno.ENODEV, errno.ENOENT):
        return NotFound(msg, hint="check the device name with `ip link`")
    return CommandFailed(msg, hint="see the daemon log; `ip -d link` shows the device state")


@contextmanager
def netlink(doing: str) -> Iterator[Any]:
    """An `IPRoute` for the current thread's namespace; netlink errors become ours.

    pyroute2 is imported here, on the first netlink work, not with the daemon: its
    package imports every netlink family it knows (~8 MB resident), which a daemon
    that has not set up its network yet does without."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise translate(exc, doing) from exc
    except PermissionError as exc:  # /dev/net/tun without CAP_NET_ADMIN
        raise PrivilegeError(f"{doing}: {exc.strerror}", hint=PRIVILEGE_HINT) from exc


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def get_link(ipr: Any, name: str) -> Any | None:
    """The RTM_NEWLINK message for `name`, or None when there is no such link."""
    idx = link_index(ipr, name)
    if idx is None:
        return None
    from pyroute2.netlink.exceptions import NetlinkError  # loaded by netlink() already

    try:
        return ipr.link("get", index=idx)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:  # deleted between lookup and get
            return None
        raise


def link_kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_KIND")
