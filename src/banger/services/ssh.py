"""The managed SSH key, banger's known_hosts, and waiting for a guest's sshd.

Readiness means what a user needs: OpenSSH itself logs in with the managed key and
runs a command. The first contact records the VM's host key in banger's own
known_hosts (trust on first use, right after we created the VM ourselves); later
boots must present the same key. Entries are removed on delete so a reused
address never trips a host-key warning. Using the system `ssh` here, instead of
an SSH library in the daemon, keeps the daemon small and checks exactly the path
`banger vm ssh` takes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from banger.errors import BangerError, InvalidInput
from banger.paths import Paths
from banger.system import arun, run
from banger.system.ssh import ssh_options

log = logging.getLogger("banger.ssh")

# How long sshd may refuse the key before readiness gives up early.
KEY_REFUSED_GRACE = 30.0
# Key exchanges the readiness login offers, cheapest for the guest first: under TCG
# the guest's half of the default post-quantum exchange (sntrup761) costs ~0.4 s of
# a ~2 s first login. The probe only runs `true`; `vm ssh` keeps OpenSSH's defaults.
PROBE_KEX = "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256"


def key_path(paths: Paths, configured: str | None) -> Path:
    return Path(os.path.expanduser(configured)) if configured else paths.ssh_dir / "id_ed25519"


def ensure_key(paths: Paths, configured: str | None) -> Path:
    """Return the private key path, creating the managed key on first use."""
    path = key_path(paths, configured)
    if path.exists():
        return path
    if configured:
        raise InvalidInput(
            f"ssh_key_path {path} does not exist",
            hint="point ssh_key_path at an existing private key, or remove it to use the "
            "managed key",
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    for leftover in (tmp, Path(f"{tmp}.pub")):
        leftover.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f", str(tmp)])
    os.rename(f"{tmp}.pub", f"{path}.pub")
    os.rename(tmp, path)  # last: a present private key means a complete pair
    log.info("created the managed SSH key %s", path)
    return path


def public_key(private: Path) -> str:
    pub = Path(f"{private}.pub")
    if pub.exists():
        return pub.read_text().strip()
    return run(["ssh-keygen", "-y", "-f", str(private)]).out.strip()


async def generate_host_key() -> tuple[str, str]:
    """A fresh ed25519 SSH host key made here, for a guest that must not reuse the one
    of the machine it was restored from: (private key, public line)."""
    with tempfile.TemporaryDirectory(prefix="banger-hostkey-") as tmp:
        path = Path(tmp) / "key"
        await arun(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)])
        return path.read_text(), Path(f"{path}.pub").read_text().strip()


def record_host_key(known_hosts: Path, hosts: list[str], public: str) -> None:
    """Trust `public` (an `ssh-ed25519 AAAA...` line) for `hosts`, replacing what was
    recorded for them: the host made this key and gave it to the guest itself."""
    forget_host(known_hosts, hosts)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    key = " ".join(public.split()[:2])
    with known_hosts.open("a") as f:
        f.write(f"{','.join(hosts)} {key}\n")


def _entries(known_hosts: Path) -> list[str]:
    return known_hosts.read_text().splitlines() if known_hosts.exists() else []


def forget_host(known_hosts: Path, hosts: list[str]) -> None:
    keep = [
        line
        for line in _entries(known_hosts)
        if not any(h in line.split(" ", 1)[0].split(",") for h in hosts)
    ]
    if known_hosts.exists():
        known_hosts.write_text("".join(f"{line}\n" for line in keep))


def _alias(known_hosts: Path, host: str, names: list[str]) -> None:
    """Give the host key ssh recorded for `host` the VM's names too."""
    lines = _entries(known_hosts)
    key = next((ln.split(" ", 1)[1] for ln in lines if ln.split(" ", 1)[0] == host), None)
    if key is None or not names:
        return
    forget_host(known_hosts, names)
    with known_hosts.open("a") as f:
        f.write(f"{','.join(names)} {key}\n")


# How long a probe waits for the banner on a connection sshd accepted. Generous: each
# connection costs the guest a new sshd process (OpenSSH re-executes sshd for it), so
# giving up early and connecting again piles up sshd processes that all compete for a
# guest whose every code path is still being translated (a just-restored TCG guest).
BANNER_WAIT = 30.0


async def _sshd_banner(host: str, port: int = 22) -> bool:
    """A cheap probe before a full login: sshd answers with its version banner. Once
    the connection is accepted it waits for that banner (`BANNER_WAIT`) rather than
    connecting again."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        return (await asyncio.wait_for(reader.readline(), BANNER_WAIT)).startswith(b"SSH-")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def wait_for_ssh(
    host: str,
    key: Path,
    known_hosts: Path,
    names: list[str],
    timeout: float,
    is_alive: Callable[[], bool] | None = None,
    check: Callable[[], None] | None = None,
    *,
    login: bool = True,
    probe: bool = True,
) -> float:
    """Poll until OpenSSH logs in with `key` and runs `true`; returns seconds waited.
    Without `login`, until sshd answers with its banner: enough for a guest whose
    sshd, host key and authorized key already took a login (a resumed VM); a first
    login spends seconds in the guest (session, user manager) under TCG.

    Each login attempt waits for sshd's banner first (cheap while a booting guest has
    no sshd yet). Without `probe` it logs in at once: for a guest known to listen
    (a restored one's agent said so), where the probe would only cost the guest a
    whole sshd process (OpenSSH re-executes sshd for each connection).

    `is_alive` returns False once the VM process has died, which ends the wait early;
    `check` raises to end it (a dead or hung guest, see `readiness.BootWatch`).
    """
    start = time.monotonic()
    deadline = start + timeout
    last = "sshd never answered"
    denied_since: float | None = None
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    while time.monotonic() < deadline:
        if check is not None:
            check()
        if is_alive is not None and not is_alive():
            raise BangerError(
                "the VM process exited while waiting for SSH",
                hint="see `banger vm logs` for the console output",
            )
        if (login and not probe) or await _sshd_banner(host):
            if not login:
                return time.monotonic() - start
            res = await arun(
                ["ssh", *ssh_options(key, known_hosts), "-o", "ConnectTimeout=5",
                 "-o", f"KexAlgorithms={PROBE_KEX}", f"root@{host}", "true"],
                check=False,
                timeout=30,
            )  # fmt: skip
            if res.returncode == 0:
                _alias(known_hosts, host, names)
                return time.monotonic() - start
            last = res.stderr.decode(errors="replace").strip() or f"ssh exited {res.returncode}"
            if "Permission denied" in last:
                # sshd runs but refuses the key. Once /root (the work disk holding
                # authorized_keys) is mounted that does not change, so don't wait out
                # the whole timeout.
                denied_since = denied_since or time.monotonic()
                if time.monotonic() - denied_since > KEY_REFUSED_GRACE:
                    raise BangerError(
                        f"sshd on {host} keeps refusing the managed key ({last})",
                        hint="the guest's /root (work disk) may not have mounted; "
                        "see `banger vm logs` for the console",
                    )
            if "REMOTE HOST IDENTIFICATION HAS CHANGED" in last:
                raise BangerError(
                    f"the VM at {host} presented a different SSH host key than recorded",
                    hint=f"if that is expected, remove {host} from {known_hosts}",
                )
        await asyncio.sleep(0.1)
    raise BangerError(
        f"SSH on {host} did not accept the key within {timeout:.0f}s ({last})",
        hint="see `banger vm logs` for the console; under TCG emulation boots are slow",
    )
