"""The managed SSH key, banger's known_hosts, and waiting for a guest's sshd.

The key is generated with asyncssh (no ssh-keygen shell-out). known_hosts is
banger's own file: each VM's host key is recorded on first contact (trust on
first use, when we just created the VM ourselves) and removed on delete so a
reused address never trips a host-key warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import asyncssh

from banger.errors import BangerError, InvalidInput
from banger.paths import Paths

log = logging.getLogger("banger.ssh")


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
    key = asyncssh.generate_private_key("ssh-ed25519", comment="banger")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(key.export_private_key())
    os.chmod(tmp, 0o600)
    Path(f"{path}.pub").write_bytes(key.export_public_key())
    os.rename(tmp, path)
    log.info("created the managed SSH key %s", path)
    return path


def public_key(private: Path) -> str:
    pub = Path(f"{private}.pub")
    if pub.exists():
        return pub.read_text().strip()
    key = asyncssh.read_private_key(private)
    return key.export_public_key().decode().strip()


def forget_host(known_hosts: Path, hosts: list[str]) -> None:
    if not known_hosts.exists():
        return
    keep = []
    for line in known_hosts.read_text().splitlines():
        names = line.split(" ", 1)[0].split(",")
        if not any(h in names for h in hosts):
            keep.append(line)
    known_hosts.write_text("".join(f"{line}\n" for line in keep))


def remember_host(known_hosts: Path, hosts: list[str], host_key: asyncssh.SSHKey) -> None:
    forget_host(known_hosts, hosts)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    entry = host_key.export_public_key().decode().strip()
    with known_hosts.open("a") as f:
        f.write(f"{','.join(hosts)} {entry}\n")


async def wait_for_ssh(
    host: str,
    key: Path,
    known_hosts: Path,
    names: list[str],
    timeout: float,
    is_alive: object = None,
) -> float:
    """Poll until sshd accepts our key and runs a command; record the host key.

    Returns the seconds waited. `is_alive`, when given, is a zero-arg callable that
    returns False once the VM process has died, which ends the wait early.
    """
    start = time.monotonic()
    deadline = start + timeout
    last: Exception | None = None
    client_key = asyncssh.read_private_key(key)
    while time.monotonic() < deadline:
        if callable(is_alive) and not is_alive():
            raise BangerError(
                "the VM process exited while waiting for SSH",
                hint="see `banger vm logs` for the console output",
            )
        try:
            async with asyncssh.connect(
                host,
                username="root",
                client_keys=[client_key],
                known_hosts=None,
                connect_timeout=2,
                login_timeout=5,
            ) as conn:
                await conn.run("true", check=True, timeout=5)
                server_key = conn.get_server_host_key()
                if server_key is not None:
                    remember_host(known_hosts, [host, *names], server_key)
                return time.monotonic() - start
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.1)
    raise BangerError(
        f"SSH on {host} did not accept the key within {timeout:.0f}s ({last})",
        hint="see `banger vm logs` for the console; under TCG emulation boots are slow",
    )
