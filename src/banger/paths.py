"""Where banger keeps things (XDG), never inside the source checkout.

Every path is derived from the environment at call time so tests can point
XDG_* (or BANGER_HOME) at a temporary directory.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    data_dir: Path
    runtime_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "bangerd.sock"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "bangerd.pid"

    @property
    def database(self) -> Path:
        return self.state_dir / "banger.db"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def daemon_log(self) -> Path:
        return self.log_dir / "bangerd.log"

    @property
    def failed_logs_dir(self) -> Path:
        """Console and engine logs of failed creates (whose VM directory is gone)."""
        return self.log_dir / "failed"

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"

    @property
    def kernels_dir(self) -> Path:
        return self.data_dir / "kernels"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def kernel_build_cache(self) -> Path:
        """`banger kernel build`'s source trees and objects, one per source version."""
        return self.data_dir / "cache" / "kernel-build"

    @property
    def tmp_dir(self) -> Path:
        """Scratch space for in-flight artifact builds; swept at daemon start."""
        return self.data_dir / "tmp"

    @property
    def ssh_dir(self) -> Path:
        return self.config_dir / "ssh"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    def vm_dir(self, vm_id: str) -> Path:
        return self.vms_dir / vm_id


def _runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "banger"
    # Fallback when there is no login session (cron, su, CI): a per-user directory
    # under /tmp, created 0700 by ensure_dirs and checked for ownership.
    return Path(f"/tmp/banger-{os.getuid()}")


def home_paths(
    home: os.PathLike[str] | str, data_dir: os.PathLike[str] | str | None = None
) -> Paths:
    """The layout under one BANGER_HOME root (tests, benchmarks); `data_dir`
    (BANGER_DATA_DIR) lets several such roots share the pulled artifacts."""
    root = Path(home).absolute()  # the daemon runs from /
    data = Path(data_dir or root / "data").absolute()
    return Paths(root / "config", root / "state", data, root / "run")


def _xdg(var: str, fallback: str) -> Path:
    """An XDG base directory: `$var` when set and not blank, else `~/fallback`."""
    value = os.environ.get(var, "").strip()
    return Path(value) if value else Path.home() / fallback


def default_paths() -> Paths:
    home = os.environ.get("BANGER_HOME")
    if home:
        return home_paths(home, os.environ.get("BANGER_DATA_DIR"))
    return Paths(
        config_dir=_xdg("XDG_CONFIG_HOME", ".config") / "banger",
        state_dir=_xdg("XDG_STATE_HOME", ".local/state") / "banger",
        data_dir=_xdg("XDG_DATA_HOME", ".local/share") / "banger",
        runtime_dir=_runtime_dir(),
    )


PRIVATE_DIR = 0o700


def ensure_dirs(paths: Paths) -> None:
    """Create banger's directories, private to this user (0700)."""
    for d in (paths.config_dir, paths.state_dir, paths.data_dir, paths.log_dir, paths.vms_dir):
        d.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    for d in (paths.config_dir, paths.state_dir, paths.data_dir):
        if stat.S_IMODE(d.stat().st_mode) & 0o077:
            os.chmod(d, PRIVATE_DIR)
    paths.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = paths.runtime_dir.stat()
    if st.st_uid != os.getuid():
        from banger.errors import PrivilegeError

        raise PrivilegeError(
            f"runtime directory {paths.runtime_dir} is owned by uid {st.st_uid}, not you",
            hint="remove it or set XDG_RUNTIME_DIR to a directory you own",
        )
    os.chmod(paths.runtime_dir, 0o700)


def tighten(paths: Paths) -> int:
    """Make everything under banger's config, state and data directories private to
    this user (no group/other bits), as files from earlier versions were not. Symlinks
    and files owned by others are left alone, and so are mounts (a build's /proc) and
    work directories another live process holds (their flock, see
    `artifacts.publish.work_dir`): the walk does not enter them. A file that cannot be
    changed is logged, never fatal. Returns how many modes changed."""
    changed = 0
    uid = os.getuid()
    mounts = _mount_points()
    for top in (paths.config_dir, paths.state_dir, paths.data_dir):
        if not top.is_dir():
            continue
        try:
            dev = top.stat().st_dev
        except OSError:
            continue
        for root, dirs, files in os.walk(top):
            for name in list(dirs):
                path = os.path.join(root, name)
                if _off_limits(path, dev, mounts):
                    dirs.remove(name)
                else:
                    changed += _private(path, uid)
            for name in files:
                changed += _private(os.path.join(root, name), uid)
        changed += _private(str(top), uid)
    return changed


def _mount_points(mountinfo: str = "/proc/self/mountinfo") -> set[str]:
    points: set[str] = set()
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:  # octal escapes: \040 is a space
                    points.add(re.sub(r"\\([0-7]{3})", _unescape, fields[4]))
    except OSError:
        pass
    return points


def _unescape(m: re.Match[str]) -> str:
    return chr(int(m.group(1), 8))


def _off_limits(path: str, dev: int, mounts: set[str]) -> bool:
    """A directory tighten must not enter: a mount, or one another process holds."""
    import fcntl

    try:
        st = os.lstat(path)
    except OSError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        return False  # a symlink: os.walk does not follow it
    if st.st_dev != dev or path in mounts:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True  # held (LOCK_EX) by a live build
    finally:
        os.close(fd)  # drops our lock too
    return False


def _private(path: str, uid: int) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if stat.S_ISLNK(st.st_mode) or st.st_uid != uid or not st.st_mode & 0o077:
        return 0
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return 0  # sockets, fifos: not ours to change
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
    except OSError as exc:
        import logging

        logging.getLogger("banger.paths").warning("cannot make %s private: %s", path, exc)
        return 0
    return 1
