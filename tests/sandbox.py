"""The one sandbox of boot tests, benchmarks and scripts/verify.sh: a private banger
daemon with a private BANGER_HOME inside a network namespace of its own.

    with sandbox(home, data_dir=CACHE / "data") as box:
        box.run("vm", "create", "--name", "a")      # the CLI, as a user in the namespace
        box.client().vm("a")                        # the Python client (over the socket)

Pulled artifacts are shared through BANGER_DATA_DIR: the tests' cache is
$BANGER_TEST_CACHE (default ~/.cache/banger-test), so only the first run on a machine
builds the image. The namespace has no route out (tests add one with tests/uplink.py),
so `pull()` fetches what is missing first, in the host namespace, with a daemon that
never runs a VM and therefore touches no network configuration there.

Teardown is idempotent and by PID: it stops the daemon, kills every process it saw or
that is still marked as the sandbox's (a command line naming a file under the home, or
the daemon's BANGER_HOME in its environment) and everything left in the namespace,
deletes the namespace and then asserts that none of it survived.

`python -m tests.sandbox up|leaks|down` serves shell scripts (scripts/verify.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from banger.paths import Paths, home_paths
from tests import netns

if TYPE_CHECKING:
    from banger.client import Client

CACHE = Path(os.environ.get("BANGER_TEST_CACHE") or Path.home() / ".cache" / "banger-test")
POOL_TAP = "tap-pool-"  # the warm pool's TAPs are the daemon's, not a VM's leftovers
ENGINES = (b"qemu-system", b"firecracker")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and b") Z " not in stat


def terminate(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever still runs after `grace` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def netns_pids(ns: str) -> list[int]:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(x) for x in res.stdout.split() if x.isdigit()]


@dataclass
class Sandbox:
    """A private daemon's home, its namespace (None: the host's) and its CLI."""

    home: Path
    ns: str | None
    data_dir: Path
    env: dict[str, str]
    owns_home: bool = False  # made by create(): removed by teardown
    pids: set[int] = field(default_factory=set)  # every daemon and VM process seen
    _down: bool = False

    @classmethod
    def create(
        cls,
        home: Path | None = None,
        *,
        data_dir: Path | None = None,
        own_netns: bool = True,
        prefix: str = netns.PREFIX,
        config: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Sandbox:
        """A home (a short new /tmp dir when None: VM sockets live below it) and, with
        `own_netns`, a fresh namespace. `env` adds variables for the CLI and the daemon."""
        owns = home is None
        home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")) if home is None else home
        home = home.absolute()
        base = {k: v for k, v in os.environ.items() if not k.startswith("BANGER_")}
        data = (data_dir or home / "data").absolute()
        box_env = {**base, "BANGER_HOME": str(home), "BANGER_DATA_DIR": str(data), **(env or {})}
        box = cls(home, None, data, box_env, owns)
        try:
            if config is not None:
                box.paths.config_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(config, box.paths.config_file)
            if own_netns:
                box.ns = netns.add(prefix)
        except BaseException:
            box.teardown()
            raise
        return box

    @property
    def paths(self) -> Paths:
        return home_paths(self.home, self.data_dir)

    @property
    def prefix(self) -> list[str]:
        """What runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.ns] if self.ns else []

    # -- the CLI and the client -------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "banger.cli", *args]

    def run(
        self,
        *args: str,
        timeout: float = 300,
        check: bool = True,
        netns: bool = True,
        show: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """`banger ARGS` as a user in the namespace runs it (`netns=False`: outside).
        Its output is captured, or with `show` goes to our stderr (progress)."""
        argv = self.argv(*args) if netns else self.argv(*args)[len(self.prefix) :]
        out: Any = sys.stderr if show else subprocess.PIPE
        res = subprocess.run(
            argv,
            env=self.env,
            stdout=out,
            stderr=None if show else subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"banger {' '.join(args)} failed ({res.returncode}):\n{res.stderr}"
            )
        return res

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start the CLI without waiting (stdout and stderr piped)."""
        return subprocess.Popen(
            self.argv(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def client(self, timeout: float = 60.0) -> Client:
        """The Python client of this sandbox's daemon (the socket works from anywhere)."""
        from banger.client import Client

        return Client(self.paths, timeout=timeout)

    def in_ns(self, *argv: str) -> str:
        return subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, check=True
        ).stdout

    # -- the daemon -------------------------------------------------------------------

    def start_daemon(self) -> int:
        """Start the daemon in the namespace (as any CLI command would) and track it."""
        self.run("daemon", "start", timeout=60)
        pid = self.daemon_pid()
        assert pid is not None, f"the daemon wrote no {self.paths.pid_file}"
        return pid

    def stop_daemon(self) -> None:
        """`banger daemon stop`, then SIGTERM/SIGKILL the pid-file PID if it is ours."""
        pid = self.daemon_pid()
        if self.paths.socket.exists():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.run("daemon", "stop", check=False, timeout=30, netns=False)
        if pid is not None and self._marked(pid):
            terminate([pid])

    def daemon_pid(self) -> int | None:
        text = _read(str(self.paths.pid_file)).decode().strip()
        if not text.isdigit():
            return None
        self.pids.add(int(text))
        return int(text)

    def _marked(self, pid: int) -> bool:
        """Ours: a command line naming a file under the home, or the home in the
        environment (the daemon). A recycled PID carries neither."""
        home = str(self.home).encode()
        cmd = _read(f"/proc/{pid}/cmdline")
        env = _read(f"/proc/{pid}/environ").split(b"\0")
        return home + b"/" in cmd or b"BANGER_HOME=" + home in env

    def processes(self) -> list[int]:
        """Every live process of this sandbox (daemon, VMs, raw boots; not us)."""
        found = {int(e) for e in os.listdir("/proc") if e.isdigit() and self._marked(int(e))}
        if self.ns and os.path.exists(f"/run/netns/{self.ns}"):
            found.update(netns_pids(self.ns))
        found.discard(os.getpid())
        self.pids |= found
        return sorted(p for p in found if alive(p))

    def vm_pids(self, engines: Sequence[bytes] = ENGINES) -> list[int]:
        """Hypervisor processes (QEMU, Firecracker) of this sandbox."""
        procs = self.processes()
        return [p for p in procs if any(e in _read(f"/proc/{p}/cmdline") for e in engines)]

    def qemu_pids(self) -> list[int]:
        return self.vm_pids([b"qemu-system"])

    def taps(self) -> list[str]:
        """TAP devices in the namespace (none without one: the host's are not ours)."""
        if self.ns is None:
            return []
        out = self.in_ns("ip", "-o", "link", "show", "type", "tun")
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line]

    # -- artifacts ---------------------------------------------------------------------

    def pull(self, image: str | None = None, kernel: str | None = None, show: bool = False) -> None:
        """Make the image (and the kernel it boots) intact and current in the data dir,
        in the host namespace: the sandbox's has no way out. `banger image pull` and
        `kernel pull` apply the project's own rules (missing, damaged or built from an
        older recipe) and return at once when there is nothing to do. The daemon they
        start is stopped again; it never ran a VM, so it made no network devices.
        `show` puts their progress on stderr (a first image build takes minutes)."""
        from banger.config import load_config

        cfg = load_config(self.paths).config  # the defaults the daemon will use
        image = image or cfg.default_image
        outside: dict[str, Any] = {"timeout": 3600, "netns": False}
        try:
            self.run("image", "pull", image, show=show, **outside)
            img = json.loads(self.run("image", "show", image, "--json", **outside).stdout)
            if kernel or not img.get("vmlinux"):
                name = kernel or img.get("kernel") or cfg.default_kernel
                self.run("kernel", "pull", name, show=show, **outside)
        finally:
            self.stop_daemon()

    # -- what a sandbox leaves behind -------------------------------------------------

    def leftovers(self) -> list[str]:
        """What deleted VMs left behind while the daemon runs: hypervisor processes,
        TAPs other than the warm pool's, lease and VM rows, per-VM nftables rules and
        VM directories. Empty when every VM was cleaned up."""
        found = [
            f"process {p} ({_read(f'/proc/{p}/comm').decode().strip()})" for p in self.vm_pids()
        ]
        found += [f"TAP {t}" for t in self.taps() if not t.startswith(POOL_TAP)]
        if self.paths.database.exists():
            db = sqlite3.connect(f"file:{self.paths.database}?mode=ro", uri=True)
            with contextlib.closing(db):
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                for table in ("leases", "vms"):
                    if table in tables:
                        found += [f"{table} row {r}" for r in db.execute(f"SELECT * FROM {table}")]
        found += [f"nftables rule {r}" for r in self.nat_rules()]
        if self.paths.vms_dir.is_dir():
            found += [f"VM directory {d}" for d in sorted(self.paths.vms_dir.iterdir())]
        return found

    def nat_rules(self) -> list[str]:
        """`banger:<ip>` comments of the per-VM rules in the namespace's banger table."""
        if self.ns is None:
            return []  # the host's rules are not the sandbox's
        res = subprocess.run(
            [*self.prefix, "nft", "-j", "list", "table", "ip", "banger"],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0 or not res.stdout.strip():
            return []  # no table: no rules
        comments = (
            i.get("rule", {}).get("comment", "") for i in json.loads(res.stdout)["nftables"]
        )
        return [c for c in comments if c.startswith("banger:") and c != "banger:base"]

    # -- teardown -----------------------------------------------------------------------

    def teardown(self) -> None:
        """Stop the daemon, kill every process of the sandbox by PID, delete the
        namespace (and the home if create() made it), then assert that nothing
        survived. Every step runs even when an earlier one failed; a second call does
        nothing."""
        if self._down:
            return
        self._down = True
        errors: list[str] = []
        try:
            self.stop_daemon()
        except Exception as exc:
            errors.append(f"stopping the daemon: {exc}")
        for _ in range(3):  # a process may still be starting while the first kill runs
            if not (pids := self.processes()):
                break
            terminate(pids)
        if self.ns:
            with contextlib.suppress(Exception):
                netns.delete(self.ns)
            shutil.rmtree(Path("/etc/netns") / self.ns, ignore_errors=True)
            if self.ns in netns.names():
                errors.append(f"namespace {self.ns} survived its deletion")
        if survivors := [p for p in self.pids if alive(p) and self._marked(p)]:
            errors.append(f"processes {survivors} survived the teardown")
        if self.owns_home:
            shutil.rmtree(self.home, ignore_errors=True)
        assert not errors, f"sandbox {self.home}: " + "; ".join(errors)


@contextlib.contextmanager
def sandbox(home: Path | None = None, **kw: Any) -> Iterator[Sandbox]:
    """Sandbox.create(...), always torn down on the way out."""
    box = Sandbox.create(home, **kw)
    try:
        yield box
    finally:
        box.teardown()


def test_env() -> dict[str, str]:
    """What boot tests run with: fault-injection hooks on, a small TAP pool, and no
    golden snapshots (a build after each first create would cost a second boot; the
    warm-create tests turn them on)."""
    return {"BANGER_TEST_HOOKS": "1", "BANGER_TAP_POOL_SIZE": "2", "BANGER_WARM_CREATE": "0"}


# -- for shell scripts: python -m tests.sandbox up|leaks|down ---------------------------


def _attach(args: argparse.Namespace) -> Sandbox:
    """The sandbox `up` made, from its home and namespace (and BANGER_DATA_DIR)."""
    home = Path(args.home)
    env = {**os.environ, "BANGER_HOME": str(home)}
    data = Path(env.get("BANGER_DATA_DIR") or home / "data")
    return Sandbox(home, args.ns, data, env, owns_home=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sandbox")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="make a sandbox, pull what it lacks, print its shell vars")
    up.add_argument("--prefix", default=netns.PREFIX)
    up.add_argument("--data-dir", type=Path, default=CACHE / "data")
    up.add_argument("--image")
    helps = {
        "leaks": "print what deleted VMs left behind, one per line",
        "nat-rules": "print the per-VM nftables rules (banger:<ip>)",
        "down": "tear the sandbox down; exit 1 if anything survives",
    }
    for name, help in helps.items():
        s = sub.add_parser(name, help=help)
        s.add_argument("--home", required=True)
        s.add_argument("--ns", required=True)
    args = p.parse_args(argv)
    if args.cmd == "up":
        box = Sandbox.create(data_dir=args.data_dir, prefix=args.prefix)
        try:
            box.pull(args.image, show=True)
        except BaseException:
            box.teardown()
            raise
        for key, val in (
            ("NS", box.ns),
            ("BANGER_HOME", box.home),
            ("BANGER_DATA_DIR", box.data_dir),
        ):
            print(f"export {key}={shlex.quote(str(val))}")
        return 0
    box = _attach(args)
    if args.cmd in ("leaks", "nat-rules"):
        for line in box.leftovers() if args.cmd == "leaks" else box.nat_rules():
            print(line)
        return 0
    try:
        box.teardown()
    except AssertionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
