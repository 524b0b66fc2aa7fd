"""banger-init: PID 1 for images without an init system (OCI images pulled by banger).

Installed as /sbin/banger-init and started by the kernel with `init=/sbin/banger-init`
(the initramfs honours init=). It runs on the Python banger bundles into the image
(/opt/banger/bin/python3, see banger.artifacts.images.bootable), so it needs nothing
from the image itself: no shell, no `ip`, no mount binary. Standard library only.

What it does, in order:

  1. mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm and /run; makes the
     /dev/virtio-ports/NAME links udev would make (the agent's serial channel)
  2. sets the hostname (systemd.hostname=, else the hostname field of ip=)
  3. configures the network from the kernel's `ip=` parameter (ioctls: address,
     netmask, link up, default route; lo up) and writes /etc/resolv.conf from its
     DNS fields plus `banger.dns_search=`
  4. mounts the VM's work disk (/dev/vdb) on /root, as the golden image's fstab does
  5. starts banger-agent (restarted a second after it exits, forever) and the
     image's entrypoint (Entrypoint + Cmd, with its Env, WorkingDir and User, from
     /opt/banger/image.json); its output goes to the console
  6. reaps every orphan, and on SIGTERM/SIGPWR or the ACPI power button powers off
     (SIGINT, i.e. Ctrl-Alt-Del, reboots, as systemd does): everything is sent
     SIGTERM, then SIGKILL after 5 s, the disks are synced and unmounted.

`banger-init --net-only` does step 3 alone (systemd images without bash or `ip`
use it as their banger-net). BANGER_INIT_CMDLINE names a file to read instead of
/proc/cmdline (tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import json
import os
import pwd
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

CONFIG = "/opt/banger/image.json"
PYTHON = "/opt/banger/bin/python3"
AGENT = "/opt/banger/banger-agent"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WORK_DISK = "/dev/vdb"

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY, MS_REMOUNT = 2, 4, 8, 1, 32
RB_AUTOBOOT, RB_POWER_OFF, RB_DISABLE_CAD = 0x01234567, 0x4321FEDC, 0
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFADDR, SIOCSIFNETMASK, SIOCADDRT = (
    0x8913,
    0x8914,
    0x8916,
    0x891C,
    0x890B,
)
IFF_UP, RTF_UP, RTF_GATEWAY = 0x1, 0x1, 0x2
EV_KEY, KEY_POWER = 1, 116

_libc: Any = None


def log(msg: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"banger-init: {msg}\n".encode())


def libc() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    return _libc


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> bool:
    os.makedirs(target, exist_ok=True)
    rc = libc().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode())
    if rc != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:  # EBUSY: already mounted (the kernel or initramfs did it)
            log(f"mount {fstype} on {target}: {os.strerror(err)}")
        return False
    return True


def cmdline_args() -> list[str]:
    path = os.environ.get("BANGER_INIT_CMDLINE", "/proc/cmdline")
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return []


def param(args: list[str], key: str) -> str | None:
    found = None
    for arg in args:
        if arg.startswith(key + "="):
            found = arg[len(key) + 1 :]  # the last one wins, as in the kernel
    return found


# -- 1. filesystems and devices -------------------------------------------------------


def mount_basics() -> None:
    # The initramfs may have moved its own /proc, /sys and /dev over already.
    if not os.path.ismount("/proc"):
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if not os.path.ismount("/sys"):
        mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if not os.path.ismount("/dev"):
        mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        if not os.path.lexists(f"/dev/{name}"):
            os.symlink(target, f"/dev/{name}")
    if not os.path.isdir("/tmp"):
        os.makedirs("/tmp", exist_ok=True)
        os.chmod("/tmp", 0o1777)
    if os.path.isdir("/run") and not os.path.lexists("/var/run"):
        with contextlib.suppress(OSError):
            os.symlink("/run", "/var/run")


def virtio_port_links() -> int:
    """/dev/virtio-ports/NAME -> ../vportXpY, as udev's rule makes them."""
    base = "/sys/class/virtio-ports"
    made = 0
    try:
        ports = os.listdir(base)
    except OSError:
        return 0
    os.makedirs("/dev/virtio-ports", exist_ok=True)
    for port in ports:
        try:
            with open(f"{base}/{port}/name") as f:
                name = f.read().strip()
        except OSError:
            continue
        link = f"/dev/virtio-ports/{name}"
        if name and "/" not in name and not os.path.lexists(link):
            os.symlink(f"../{port}", link)
            made += 1
    return made


# -- 2/3. hostname and network ---------------------------------------------------------


def _ifreq(name: str, payload: bytes) -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def _sockaddr(addr: str) -> bytes:
    return struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(addr))


def _prefix_to_mask(mask: str) -> str:
    if "." in mask:
        return mask
    bits = int(mask or "32")
    return socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF))


def _link_up(sock: socket.socket, name: str) -> None:
    flags = struct.unpack_from("16sh", fcntl_ioctl(sock, SIOCGIFFLAGS, _ifreq(name, b"")))[1]
    fcntl_ioctl(sock, SIOCSIFFLAGS, _ifreq(name, struct.pack("h", flags | IFF_UP)))


def fcntl_ioctl(sock: socket.socket, request: int, arg: bytes) -> bytes:
    import fcntl

    return fcntl.ioctl(sock.fileno(), request, arg)


def _pick_dev(wanted: str) -> str | None:
    for _ in range(50):
        if wanted and os.path.exists(f"/sys/class/net/{wanted}"):
            return wanted
        try:
            names = sorted(os.listdir("/sys/class/net"))
        except OSError:
            names = []
        for n in names:
            try:
                with open(f"/sys/class/net/{n}/type") as f:
                    if f.read().strip() == "1" and n != "lo":
                        return n
            except OSError:
                continue
        time.sleep(0.1)
    return None


def configure_network(args: list[str]) -> bool:
    """Apply ip=<client>::<gw>:<mask>:<host>:<dev>:<autoconf>:<dns0>:<dns1> (static only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            _link_up(sock, "lo")
        except OSError as exc:
            log(f"lo: {exc}")
        spec = param(args, "ip")
        if not spec:
            log("no ip= on the kernel command line; no network")
            return False
        fields = (spec.split(":") + [""] * 9)[:9]
        client, _server, gw, mask, _host, dev, autoconf, dns0, dns1 = fields
        if autoconf not in ("", "off", "none") or client in ("", "dhcp", "on", "any", "off"):
            log(f"ip={spec} is not a static configuration; left alone")
            return False
        ifname = _pick_dev(dev)
        if ifname is None:
            log(f"no network interface {dev}; no network")
            return False
        try:
            fcntl_ioctl(sock, SIOCSIFADDR, _ifreq(ifname, _sockaddr(client)))
            fcntl_ioctl(sock, SIOCSIFNETMASK, _ifreq(ifname, _sockaddr(_prefix_to_mask(mask))))
            _link_up(sock, ifname)
            if gw:
                zero = _sockaddr("0.0.0.0")
                # struct rtentry: pad, dst, gateway, genmask, flags, ..., dev (NULL: by gw)
                rt = struct.pack(
                    "L16s16s16sHhLPhPLLH", 0, zero, _sockaddr(gw), zero, RTF_UP | RTF_GATEWAY,
                    0, 0, 0, 0, 0, 0, 0, 0,
                )  # fmt: skip
                with contextlib.suppress(FileExistsError):
                    fcntl_ioctl(sock, SIOCADDRT, rt.ljust(120, b"\0"))
        except OSError as exc:
            log(f"{ifname}: {exc}")
            return False
    servers = [s for s in (dns0, dns1) if s]
    if servers:
        write_resolv(servers, param(args, "banger.dns_search"))
    log(f"{ifname}: {client}/{mask}" + (f" via {gw}" if gw else ""))
    return True


def write_resolv(servers: list[str], search: str | None) -> None:
    lines = ["# written by banger-init from the kernel ip= parameter"]
    lines += [f"nameserver {s}" for s in servers]
    if search:
        lines.append(f"search {search}")
    try:
        tmp = "/etc/.resolv.conf.banger"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, "/etc/resolv.conf")  # replaces a symlink, never writes through it
    except OSError as exc:
        log(f"/etc/resolv.conf: {exc}")


def set_hostname(args: list[str]) -> None:
    name = param(args, "systemd.hostname")
    if not name:
        spec = param(args, "ip") or ""
        name = (spec.split(":") + [""] * 5)[4]
    if name:
        try:
            with open("/proc/sys/kernel/hostname", "w") as f:
                f.write(name)
        except OSError as exc:
            log(f"hostname: {exc}")
    if not os.path.exists("/etc/hosts"):
        try:
            with open("/etc/hosts", "w") as f:
                f.write(f"127.0.0.1\tlocalhost\n127.0.1.1\t{name or 'localhost'}\n")
        except OSError:
            pass


# -- 4. work disk ---------------------------------------------------------------------


def mount_work_disk() -> None:
    for _ in range(30):
        if os.path.exists(WORK_DISK):
            break
        time.sleep(0.1)
    else:
        return  # no work disk: /root stays the directory on the rootfs
    if not mount(WORK_DISK, "/root", "ext4", 0, ""):
        log(f"could not mount {WORK_DISK} on /root")


# -- 5. agent and entrypoint ----------------------------------------------------------


def load_config() -> dict[str, Any]:
    try:
        with open(CONFIG) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError) as exc:
        log(f"{CONFIG}: {exc}")
        return {}


def spawn_agent() -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
            os.execve(PYTHON, [PYTHON, "-I", "-S", AGENT], env)
        finally:
            os._exit(127)
    return pid


def _resolve_user(user: str) -> tuple[int, int, list[int], str]:
    """uid, gid, groups and home of an OCI User (name, uid, name:group, uid:gid)."""
    name, _, group = user.partition(":")
    uid, gid, home, login = 0, 0, "/", ""
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        uid, gid, home, login = pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_name
    except (KeyError, ValueError):
        if not name.isdigit():
            raise
        uid = int(name)
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    groups = os.getgrouplist(login, gid) if login else [gid]
    return uid, gid, groups, home


def spawn_entrypoint(config: dict[str, Any]) -> int | None:
    argv = [str(a) for a in (config.get("entrypoint") or []) + (config.get("cmd") or [])]
    if not argv:
        log("the image has no Entrypoint or Cmd; only the agent runs")
        return None
    env = {"PATH": DEFAULT_PATH}
    for item in config.get("env") or []:
        key, sep, value = str(item).partition("=")
        if sep:
            env[key] = value
    user = str(config.get("user") or "")
    workdir = str(config.get("workdir") or "/")
    log(f"starting {' '.join(argv)}" + (f" as {user}" if user else "") + f" in {workdir}")
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fd = os.open("/dev/null", os.O_RDONLY)
            os.dup2(fd, 0)
            if user:
                uid, gid, groups, home = _resolve_user(user)
                env.setdefault("HOME", home)
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
            env.setdefault("HOME", "/root")
            os.chdir(workdir)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:
            log(f"cannot start {argv[0]}: {exc}")
        os._exit(127)
    return pid


# -- 6. shutdown ----------------------------------------------------------------------


class Shutdown(Exception):
    def __init__(self, how: int) -> None:
        self.how = how


_requested: list[int] = []


def _on_signal(signum: int, _frame: object) -> None:
    _requested.append(RB_AUTOBOOT if signum == signal.SIGINT else RB_POWER_OFF)


def watch_power_button() -> None:
    """Read the ACPI power button's input device, as systemd-logind does."""
    base = "/sys/class/input"
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith("event"):
            continue
        try:
            with open(f"{base}/{entry}/device/name") as f:
                if f.read().strip() != "Power Button":
                    continue
        except OSError:
            continue

        def reader(dev: str = f"/dev/input/{entry}") -> None:
            try:
                fd = os.open(dev, os.O_RDONLY)
            except OSError:
                return
            size = struct.calcsize("llHHi")
            while True:
                data = os.read(fd, size)
                if len(data) < size:
                    return
                _s, _us, etype, code, value = struct.unpack("llHHi", data)
                if etype == EV_KEY and code == KEY_POWER and value == 1:
                    _requested.append(RB_POWER_OFF)

        threading.Thread(target=reader, daemon=True).start()


def shutdown(how: int) -> None:
    log("power off" if how == RB_POWER_OFF else "reboot")
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(OSError):
            os.kill(-1, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    time.sleep(0.05)
            except ChildProcessError:
                break
    os.sync()
    libc().umount2(b"/root", 0)
    libc().mount(b"none", b"/", b"", MS_REMOUNT | MS_RDONLY, b"")
    os.sync()
    libc().reboot(how)
    os._exit(0)


def main(argv: list[str]) -> int:
    if "--net-only" in argv:
        return 0 if configure_network(cmdline_args()) else 1
    if os.getpid() != 1:
        print("banger-init must run as PID 1 (the kernel's init=)", file=sys.stderr)
        return 2
    os.umask(0o022)
    mount_basics()
    try:
        os.dup2(os.open("/dev/console", os.O_RDWR), 1)
        os.dup2(1, 2)
    except OSError:
        pass
    libc().reboot(RB_DISABLE_CAD)  # Ctrl-Alt-Del becomes SIGINT to us
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPWR):
        signal.signal(sig, _on_signal)
    args = cmdline_args()
    # PID 1 must never exit (the kernel panics): a step that fails is logged and the
    # rest still run, so the agent is reachable to look at what went wrong.
    steps = (
        lambda: log(f"{virtio_port_links()} virtio port link(s)"),
        lambda: set_hostname(args),
        lambda: configure_network(args),
        mount_work_disk,
        watch_power_button,
    )
    for step in steps:
        try:
            step()
        except Exception as exc:
            log(f"boot step failed: {exc!r}")
    agent = spawn_agent()
    entry = None
    try:
        entry = spawn_entrypoint(load_config())
    except Exception as exc:
        log(f"cannot start the entrypoint: {exc!r}")
    agent_restart = 0.0
    while True:  # PID 1: reap every orphan; a poll, so signals never wait for a child
        if _requested:
            shutdown(_requested[0])
        if agent == 0 and time.monotonic() >= agent_restart:
            agent = spawn_agent()
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == 0:
            time.sleep(0.2)
        elif pid == agent:
            log(f"banger-agent exited ({status:#x}); restarting it in 1 s")
            agent, agent_restart = 0, time.monotonic() + 1
        elif pid == entry:
            code = os.waitstatus_to_exitcode(status)
            log(f"the entrypoint exited with {code}; the VM keeps running (`banger vm stop`)")
            entry = None


def _last_resort() -> None:
    """PID 1 crashed: say why, then only reap (an exiting PID 1 panics the kernel)."""
    import traceback

    log("crashed:\n" + traceback.format_exc())
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(1)
        except BaseException:
            time.sleep(1)


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except BaseException:
        if os.getpid() != 1:
            raise
        _last_resort()
    sys.exit(code)
