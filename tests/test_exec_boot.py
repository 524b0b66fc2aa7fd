"""exec, cp, the Python API and the MCP server against one real booted guest (QEMU,
virtio-serial agent channel), through the real daemon and CLI inside a test-made
network namespace. One VM is shared by the module; the MCP test makes (and deletes)
its own, as a coding agent would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import netns
from tests.vmkit import NsBanger, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsBanger]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    with private_home() as nb:
        nb.run("vm", "create", "--name", "a", "--memory", "512M", timeout=600)
        yield nb


def CLI(b: NsBanger) -> list[str]:
    return ["ip", "netns", "exec", b.ns, sys.executable, "-m", "banger.cli"]


def _api(b: NsBanger):  # type: ignore[no-untyped-def]
    return b.client()


def test_exec_streams_exit_codes_stdin_and_tty(b: NsBanger) -> None:
    r = b.run("vm", "exec", "a", "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = b.run("vm", "exec", "a", "--", "uname", "-a")
    assert r.stdout.startswith("Linux a ")
    r = b.run("vm", "exec", "a", "--", "sh", "-c", "kill -KILL $$", check=False)
    assert r.returncode == 128 + 9
    r = b.run("vm", "exec", "--timeout", "1", "a", "--", "sleep", "30", check=False)
    assert r.returncode == 124 and "timed out" in r.stderr
    r = b.run("vm", "exec", "-t", "a", "--", "tty")
    assert r.stdout.strip().startswith("/dev/pts/")
    r = b.run(
        "vm", "exec", "-u", "nobody", "-w", "/tmp", "-e", "X=1", "a", "--",
        "sh", "-c", 'echo "$(id -un) $(pwd) $X"',
    )  # fmt: skip
    assert r.stdout == "nobody /tmp 1\n"
    data = os.urandom(2 << 20)
    p = subprocess.run(
        [*CLI(b), "vm", "exec", "-i", "a", "--", "sha256sum"],
        input=data,
        env=b.env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    import hashlib

    assert p.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_sixteen_concurrent_execs_and_no_sshd_needed(b: NsBanger) -> None:
    c = _api(b)

    def one(n: int) -> tuple[int, str]:
        r = c.exec("a", f"seq {n * 100}; exit {n}")
        return r.exit_code, r.output

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for n, (code, out) in enumerate(results):
        assert code == n and out.split() == [str(i) for i in range(1, n * 100 + 1)]

    c.exec("a", "systemctl stop ssh.socket ssh.service; pkill -x sshd; sleep 0.5")
    try:
        assert c.exec("a", "pgrep -x sshd").exit_code == 1  # no sshd at all
        assert b.run("vm", "exec", "a", "--", "hostname").stdout == "a\n"
    finally:
        c.exec("a", "systemctl start ssh.service")


def test_killing_the_cli_kills_the_guest_process(b: NsBanger) -> None:
    cli = subprocess.Popen(
        [*CLI(b), "vm", "exec", "a", "--", "sleep", "4242"],
        env=b.env,
    )
    c = _api(b)
    deadline = time.monotonic() + 60
    while c.exec("a", "pgrep -x -f 'sleep 4242'").exit_code != 0:
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.2)
    cli.send_signal(signal.SIGKILL)
    cli.wait(timeout=10)
    deadline = time.monotonic() + 30
    while c.exec("a", "pgrep -x -f 'sleep 4242'").exit_code == 0:
        assert time.monotonic() < deadline, "the guest process outlived the CLI"
        time.sleep(0.2)


def test_cp_in_and_out(b: NsBanger, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('hi')\n")
    (proj / "run.sh").write_text("#!/bin/sh\necho run\n")
    (proj / "run.sh").chmod(0o755)
    (proj / "latest").symlink_to("src/main.py")
    os.utime(proj / "src" / "main.py", (1_600_000_000, 1_600_000_000))
    b.run("vm", "cp", str(proj), "a:/root/proj")
    ls = b.run("vm", "exec", "a", "--", "ls", "/root/proj").stdout.split()
    assert ls == ["latest", "run.sh", "src"]
    r = b.run("vm", "exec", "a", "--", "sh", "-c", "/root/proj/run.sh; readlink /root/proj/latest")
    assert r.stdout == "run\nsrc/main.py\n"
    r = b.run("vm", "exec", "a", "--", "stat", "-c", "%Y", "/root/proj/src/main.py")
    assert r.stdout.strip() == "1600000000"

    out = tmp_path / "out"
    out.mkdir()
    b.run("vm", "cp", "a:/etc/os-release", str(out))  # a symlink in Debian: followed
    assert "VERSION_CODENAME=bookworm" in (out / "os-release").read_text()
    b.run("vm", "cp", "a:/root/proj", str(out / "proj-back"))
    assert (out / "proj-back" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert os.readlink(out / "proj-back" / "latest") == "src/main.py"

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(32 << 20))
    b.run("vm", "cp", str(big), "a:/root/big.bin")
    b.run("vm", "cp", "a:/root/big.bin", str(out / "big.back"))
    assert (out / "big.back").read_bytes() == big.read_bytes()


def test_python_example_runs(b: NsBanger) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "agent_api.py"), "a"],
        env=b.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "kernel: Linux 6.1" in r.stdout
    assert "upper: HELLO FROM THE HOST" in r.stdout
    assert "read back: b'hi\\n'" in r.stdout
    assert "ran: built in the VM" in r.stdout
    assert "tick 3" in r.stdout and "stream exit: 0" in r.stdout


async def test_mcp_client_creates_runs_writes_reads_deletes(b: NsBanger) -> None:
    from mcp.client import Client as McpClient
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(
        command="ip",
        args=["netns", "exec", b.ns, sys.executable, "-m", "banger.cli", "mcp"],
        env=b.env,
    )
    async with McpClient(params) as mcp:
        r = await mcp.call_tool("vm_create", {"name": "m"}, read_timeout_seconds=600)
        assert not r.is_error, r.content
        assert r.structured_content is not None and r.structured_content["state"] == "running"
        try:
            r = await mcp.call_tool("vm_exec", {"name": "m", "command": "uname -a"})
            assert r.structured_content is not None
            assert r.structured_content["exit_code"] == 0
            assert r.structured_content["stdout"].startswith("Linux m ")
            r = await mcp.call_tool(
                "vm_write_file", {"name": "m", "path": "notes/todo.md", "content": "- ship\n"}
            )
            assert not r.is_error
            r = await mcp.call_tool("vm_read_file", {"name": "m", "path": "/root/notes/todo.md"})
            assert r.content[0].text == "- ship\n"  # type: ignore[union-attr]
            r = await mcp.call_tool("vm_list", {})
            assert "m" in str(r.structured_content)
        finally:
            r = await mcp.call_tool("vm_delete", {"name": "m"}, read_timeout_seconds=300)
        assert not r.is_error
    assert "m" not in b.run("vm", "list").stdout.split()
