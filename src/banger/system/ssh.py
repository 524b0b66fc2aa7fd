"""How banger invokes the host's OpenSSH client: the managed key and known_hosts."""

from __future__ import annotations

from pathlib import Path


def ssh_options(key: Path, known_hosts: Path) -> list[str]:
    return [
        "-i", str(key),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "HashKnownHosts=no",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
