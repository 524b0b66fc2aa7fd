"""`banger tui` against a daemon with a real guest (QEMU, TCG here) in a test-made
network namespace. One VM is booted by the CLI and shared by every test in this
module, in order: the TUI sees the CLI's create, stops and starts it; `banger tui`
in a real terminal (tmux) shows it, opens an SSH session and stops it with `s`; the
TUI deletes it and nothing is left.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from banger.client import Client
from banger.paths import Paths
from banger.tui.app import BangerApp, OpsTable
from banger.tui.screens import Confirm
from tests import netns
from tests.test_tui import plain, until, vm_rows, wait_screen
from tests.vmkit import NsBanger, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]
BOOT_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsBanger]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    with private_home() as b:
        b.run("daemon", "start")
        yield b


def paths_of(b: NsBanger) -> Paths:
    return b.paths


def settled(c: Client, name: str, state: str) -> bool:
    """The VM is in `state` and no operation on it is still running."""
    busy = any(op.state == "running" and op.target == name for op in c.operations())
    return not busy and c.vm(name).state == state


async def test_cli_create_shows_up_and_tui_stops_and_starts_it(b: NsBanger) -> None:
    app = BangerApp(paths_of(b), interval=0.5)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.online, "the daemon")
        assert vm_rows(app) == {}
        failure: list[BaseException] = []

        def create() -> None:
            try:
                b.run("vm", "create", "--name", "web", "--memory", "512M")
            except BaseException as exc:
                failure.append(exc)

        creating = threading.Thread(target=create)
        creating.start()
        ops = app.query_one("#ops", OpsTable)

        def op_rows() -> str:
            return "\n".join(" ".join(str(c) for c in ops.get_row(k)) for k in ops.rows)

        # The CLI's create appears with its live stages, then the VM as running.
        await until(pilot, lambda: "vm.create web" in op_rows(), "the CLI's operation", 60)
        await until(pilot, lambda: "web" in vm_rows(app), "the CLI's VM", 60)
        stages = set()

        def ready() -> bool:
            stages.add(op_rows())
            return not creating.is_alive()

        await until(pilot, ready, "the create to finish", BOOT_TIMEOUT)
        assert not failure, failure
        assert any("ssh: 172.30.0." in s for s in stages), stages
        await until(pilot, lambda: vm_rows(app)["web"][2] == "running", "running")
        # guest load and memory from the agent
        await until(pilot, lambda: "/" in vm_rows(app)["web"][8], "guest memory", 30)
        assert vm_rows(app)["web"][7] != "-"

        with Client(paths_of(b)) as c:
            app.w_vms.focus()
            await pilot.press("s")
            await until(pilot, lambda: settled(c, "web", "stopped"), "the stop", 60)
            await until(pilot, lambda: vm_rows(app)["web"][2] == "stopped", "stopped row")
            assert vm_rows(app)["web"][6] == "-"  # no uptime
            await pilot.press("u")
            await until(pilot, lambda: settled(c, "web", "running"), "the start", BOOT_TIMEOUT)
            await until(pilot, lambda: vm_rows(app)["web"][2] == "running", "running row")
            await until(pilot, lambda: "web started" in plain(app.w_msg), "the result")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_real_terminal_shows_the_vm_ssh_works_and_s_stops_it(b: NsBanger) -> None:
    if b.json("vm", "show", "web")["state"] != "running":
        b.run("vm", "start", "web")
    sock = f"bgt-tui-{os.getpid()}"
    tm = ["tmux", "-L", sock]
    env = {**b.env, "TERM": "xterm-256color"}
    cmd = shlex.join(["ip", "netns", "exec", b.ns, sys.executable, "-m", "banger.cli", "tui"])
    subprocess.run(
        [*tm, "new-session", "-d", "-s", "t", "-x", "80", "-y", "24", cmd], env=env, check=True
    )
    try:
        wait_screen(tm, lambda s: any("web" in ln and "running" in ln for ln in s.splitlines()))
        # enter: the real `banger vm ssh web` in this terminal, then back to the TUI
        subprocess.run([*tm, "send-keys", "-t", "t", "Enter"], check=True)
        wait_screen(tm, lambda s: "root@web" in s, timeout=60)
        subprocess.run([*tm, "send-keys", "-t", "t", "exit", "Enter"], check=True)
        wait_screen(tm, lambda s: "back from web" in s and "uptime" in s, timeout=30)

        subprocess.run([*tm, "send-keys", "-t", "t", "s"], check=True)
        screen = wait_screen(
            tm,
            lambda s: any("web" in ln and "stopped" in ln for ln in s.splitlines()),
            timeout=60,
        )
        assert "✓ web stopped" in screen or "stopped" in screen
        deadline = time.monotonic() + 30  # the screen may say so a moment before `vm show`
        while b.json("vm", "show", "web")["state"] != "stopped":
            assert time.monotonic() < deadline, "the daemon never recorded web as stopped"
            time.sleep(0.5)
        assert b.qemu_pids() == []
    finally:
        subprocess.run([*tm, "kill-server"], check=False, capture_output=True)


async def test_tui_deletes_with_confirmation(b: NsBanger) -> None:
    if b.json("vm", "show", "web")["state"] != "running":
        b.run("vm", "start", "web")  # deleting a running VM is what needs the dialog most
    app = BangerApp(paths_of(b), interval=0.5)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: "web" in vm_rows(app), "the VM")
        await pilot.press("x")
        assert isinstance(app.screen, Confirm)
        assert "web running: will be killed first" in plain(app.screen.query_one(".body"))
        await pilot.press("n")  # no: nothing happens
        await pilot.pause(1.0)
        assert b.json("vm", "show", "web")["state"] == "running"
        await pilot.press("x", "y")
        with Client(paths_of(b)) as c:
            await until(pilot, lambda: c.vms() == [], "the delete", 60)
        await until(pilot, lambda: vm_rows(app) == {}, "the row to go")
    deadline = time.monotonic() + 5
    while b.qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b.qemu_pids() == []
    assert [t for t in b.taps() if not t.startswith("tap-pool-")] == []
