"""`banger tui` driven with Textual's pilot against a real daemon on a real socket.

VMs here are records (made the way a daemon stores them, before it starts), so
nothing boots: lists, marks, fan-out delete, errors, operations with progress and
cancel, the daemon going away and coming back, and auto-start. What needs a booted
guest (stop/start, a CLI create showing up) is in test_tui_boot.py.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static

from banger.client import Client
from banger.paths import Paths
from banger.store import Store
from banger.tui.app import BangerApp, OpsTable, VMTable
from banger.tui.screens import Confirm, CreateForm
from banger.vm import VMRecord, VMRepository
from tests.conftest import RunningDaemon, cli, start_daemon

SIZE = (100, 30)


def plain(widget: Any) -> str:
    content = widget.content if isinstance(widget, Static) else widget
    return Text.from_markup(str(content)).plain


async def until(pilot: Pilot[Any], cond: Callable[[], Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def open_create_form(pilot: Pilot[Any], app: BangerApp) -> CreateForm:
    """`n`, then the form once its fields are mounted (late on a loaded host)."""
    await pilot.press("n")

    def mounted() -> bool:
        return isinstance(app.screen, CreateForm) and bool(
            app.screen.query("#f-image SelectOverlay")
        )

    await until(pilot, mounted, "the create form")
    assert isinstance(app.screen, CreateForm)
    return app.screen


def record_vms(paths: Paths, n: int, image: str = "no-such-image") -> list[str]:
    """VM records as the daemon stores them, written before the daemon starts."""
    store = Store(paths.database)
    repo = VMRepository(store)
    names = []
    try:
        for i in range(n):
            name = f"rec-{i:03d}"
            vm = VMRecord(
                id=f"{i:012x}",
                name=name,
                state="stopped",
                image=image,
                kernel="debian-6.1",
                engine="qemu",
                vcpus=1 + i % 4,
                memory_mib=256 * (1 + i % 3),
                disk_bytes=1 << 30,
                work_bytes=1 << 28,
                mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                ip=f"172.30.{i // 250}.{2 + i % 250}",
                created_at=1_700_000_000 + i,
            )
            repo.save(vm)
            names.append(name)
    finally:
        store.close()
    return names


@pytest.fixture
def daemon100(banger_home: Paths) -> Iterator[RunningDaemon]:
    record_vms(banger_home, 100)
    d = start_daemon(banger_home)
    try:
        yield d
    finally:
        d.stop()


def vm_rows(app: BangerApp) -> dict[str, list[Any]]:
    table = app.query_one("#vm-table", VMTable)
    rows = {}
    for row_key in table.rows:
        cells = table.get_row(row_key)
        rows[str(cells[1])] = [str(c) for c in cells]
    return rows


async def test_lists_100_recorded_vms_filters_marks_and_deletes_marked(
    daemon100: RunningDaemon,
) -> None:
    app = BangerApp(daemon100.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(vm_rows(app)) == 100, "100 rows")
        assert "100 VMs (0 running)" in plain(app.query_one("#topbar"))
        row = vm_rows(app)["rec-007"]
        assert row[2:7] == ["stopped", "172.30.0.9", "4", "512M", "-"]

        # Keys stay responsive while the table refreshes: the cursor moves and stays.
        await pilot.press("down", "down", "down")
        assert app.highlighted_vm() is not None and app.highlighted_vm().name == "rec-003"  # type: ignore[union-attr]
        await pilot.pause(0.8)  # two refreshes later
        assert app.highlighted_vm().name == "rec-003"  # type: ignore[union-attr]

        await pilot.press("slash", *"rec-01", "enter")
        await until(pilot, lambda: len(vm_rows(app)) == 10, "the filter")
        await pilot.press("space", "space", "space")  # marks and moves down
        marked = sorted(app.vms[k].name for k in app.marked)
        assert marked == ["rec-010", "rec-011", "rec-012"]
        assert "3 marked" in plain(app.query_one("#topbar"))

        await pilot.press("x")
        assert isinstance(app.screen, Confirm)
        body = plain(app.screen.query_one(".body"))
        assert "rec-010, rec-011, rec-012" in body
        await pilot.press("y")
        with Client(daemon100.paths) as c:
            await until(pilot, lambda: len(c.vms()) == 97, "the daemon to delete three VMs")
            left = {v.name for v in c.vms()}
        assert not left & set(marked)
        await until(pilot, lambda: len(vm_rows(app)) == 7, "the rows to go")
        await until(pilot, lambda: "✓" in plain(app.query_one("#msg")), "the result")

        # escape clears the filter: everything left is back
        await pilot.press("slash", "escape")
        await until(pilot, lambda: len(vm_rows(app)) == 97, "all rows")


async def test_failed_start_shows_the_clis_error_and_hint(daemon100: RunningDaemon) -> None:
    expected = cli("vm", "start", "rec-005", env={"BANGER_HOME": os.environ["BANGER_HOME"]})
    assert expected.returncode != 0
    lines = [ln for ln in expected.stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert len(lines) == 2, expected.stderr
    message = lines[0].removeprefix("error: ")
    hint = lines[1].removeprefix("hint: ")

    app = BangerApp(daemon100.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(vm_rows(app)) == 100, "rows")
        await pilot.press(*["down"] * 5, "u")
        msg = app.query_one("#msg")
        await until(pilot, lambda: "error:" in plain(msg), "the error")
        text = plain(msg)
        assert message in text and f"hint: {hint}" in text
        assert "rec-005" in text
        # a stopped VM cannot be stopped: said in one line with a hint, no request made
        await pilot.press("s")
        await until(pilot, lambda: "is stopped" in plain(msg), "the refusal")


async def test_operation_progress_and_cancel(daemon: RunningDaemon) -> None:
    app = BangerApp(daemon.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.online, "the daemon")
        with Client(daemon.paths) as c:
            op = c._op("POST", "/v1/debug/ticker", params={"ticks": 200, "interval": 0.1})
        ops = app.query_one("#ops", OpsTable)

        def progress() -> str:
            return " ".join(str(c) for c in ops.get_row(op.id)) if op.id in ops.rows else ""

        await until(pilot, lambda: re.search(r"tick: \d+/200", progress()), "progress events")
        assert "%" in progress() and "running" in progress()
        assert "1 op running" in plain(app.query_one("#topbar"))
        await pilot.press("c")
        with Client(daemon.paths) as c:
            await until(pilot, lambda: c.operation(op.id).state == "cancelled", "cancel")
        await until(pilot, lambda: "cancelled" in progress(), "the panel to say so")
        last = progress()
        await pilot.pause(0.5)
        assert progress().split()[:3] == last.split()[:3]  # no ticks after cancel


async def test_create_form_shows_the_daemons_validation(daemon: RunningDaemon) -> None:
    app = BangerApp(daemon.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.online and app.config_values, "the daemon")
        form = await open_create_form(pilot, app)
        assert (
            form.query_one("#f-memory", Input).placeholder == "1G (default)"
        )  # the daemon's default
        form.query_one("#f-name", Input).value = "ok-name"
        form.query_one("#f-memory", Input).value = "12Q"
        await pilot.press("ctrl+s")
        error = form.query_one("#form-error", Static)
        await until(pilot, lambda: "error:" in plain(error), "the form's error")
        assert "`12Q` is not a size" in plain(error) and "hint: use a number" in plain(error)
        form.query_one("#f-memory", Input).value = ""
        form.query_one("#f-name", Input).value = "Bad_Name"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "not a valid VM name" in plain(error), "the name error")
        assert app.screen is form  # still open, nothing created
        await pilot.press("escape")
        assert not isinstance(app.screen, CreateForm)
    with Client(daemon.paths) as c:
        assert c.vms() == []


async def test_daemon_going_away_and_coming_back(banger_home: Paths) -> None:
    d = start_daemon(banger_home)
    app = BangerApp(banger_home, interval=0.3)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.online, "the daemon")
            first_pid = app.status.pid if app.status else 0
            d.stop()
            banner = app.query_one("#banner")
            await until(pilot, lambda: "is not answering" in plain(banner), "offline banner")
            assert "press D to start it" in plain(banner)
            assert "daemon offline" in plain(app.query_one("#topbar"))
            await pilot.press("s")  # an action while offline: one line, no crash
            assert "not answering" in plain(app.query_one("#msg"))

            d = start_daemon(banger_home)
            await until(pilot, lambda: app.online, "the daemon to be back", timeout=10)
            assert not banner.has_class("offline")
            assert app.status is not None and app.status.pid not in (0, first_pid)
            assert f"daemon pid {app.status.pid}" in plain(app.query_one("#topbar"))
    finally:
        d.stop()


def _stop_pid(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


async def test_starts_the_daemon_when_none_runs_and_says_so(banger_home: Paths) -> None:
    assert not banger_home.socket.exists()
    app = BangerApp(banger_home, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one("#banner")
        await until(pilot, lambda: "started the banger daemon" in plain(banner), "the banner")
        pid = app.started_pid
        assert pid is not None
        assert f"started the banger daemon (pid {pid})" in plain(banner)
        assert int(banger_home.pid_file.read_text()) == pid
    _stop_pid(pid)


def numbers(text: str) -> str:
    return re.sub(r"\d+(?:\.\d+)?", "#", text)


async def test_doctor_view_has_the_clis_checks_grouped_with_fixes(daemon: RunningDaemon) -> None:
    with Client(daemon.paths) as c:
        report = c.doctor()
    app = BangerApp(daemon.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.online, "the daemon")
        await pilot.press("4")
        body = app.query_one("#doctor-body")
        await until(pilot, lambda: not isinstance(body.content, str), "doctor", 60)
        console = Console(width=400, record=True, file=io.StringIO())
        console.print(body.content)
        text = "\n".join(ln.rstrip() for ln in console.export_text().splitlines())
        # The view runs its own checks a moment after ours: figures such as free disk
        # space may differ in the last digit, so numbers are compared as placeholders.
        text = numbers(text)
        for check in report.checks:
            assert numbers(f"{check.name}: {check.detail}") in text
            if check.fix and check.status != "ok":
                assert numbers(f"fix: {check.fix}") in text
        groups = {c.group for c in report.checks}
        lines = text.splitlines()
        assert all(any(ln.startswith(g + " ") for ln in lines) for g in groups)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_banger_tui_in_a_real_terminal_starts_the_daemon(banger_home: Paths) -> None:
    """`banger tui` in tmux (80x24) with no daemon: it starts one, says so, and quits on q."""
    sock = f"bgt-tui-{os.getpid()}"
    env = {**os.environ, "TERM": "xterm-256color"}
    cmd = f"{sys.executable} -m banger.cli tui"
    tm = ["tmux", "-L", sock]
    subprocess.run(
        [*tm, "new-session", "-d", "-s", "t", "-x", "80", "-y", "24", cmd], env=env, check=True
    )
    try:
        screen = wait_screen(tm, lambda s: "started the banger daemon (pid" in s)
        assert "VMs" in screen and "Doctor" in screen and "Quit" in screen
        subprocess.run([*tm, "send-keys", "-t", "t", "q"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _session_alive(tm):
            time.sleep(0.1)
        assert not _session_alive(tm), "q did not quit"
    finally:
        subprocess.run([*tm, "kill-server"], check=False, capture_output=True)
        if banger_home.pid_file.exists():
            _stop_pid(int(banger_home.pid_file.read_text()))


def _session_alive(tm: list[str]) -> bool:
    return subprocess.run([*tm, "has-session", "-t", "t"], capture_output=True).returncode == 0


def wait_screen(tm: list[str], cond: Callable[[str], bool], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        res = subprocess.run(
            [*tm, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True, check=False
        )
        screen = res.stdout
        if cond(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"the screen never matched:\n{screen}")


def test_tui_is_imported_only_by_the_tui_command() -> None:
    """Other commands stay fast: nothing else imports textual."""
    code = (
        "import sys; from banger.cli import main, vm_cmds, image_cmds, kernel_cmds; "
        "assert 'textual' not in sys.modules, 'textual imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    src = Path(__file__).resolve().parent.parent / "src" / "banger"
    users = sorted(
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if "textual" in p.read_text() and not p.is_relative_to(src / "tui")
    )
    assert users == [], users


async def test_optional_actions_follow_the_daemons_features(daemon: RunningDaemon) -> None:
    with Client(daemon.paths) as c:
        features = set(c.status().features)
    app = BangerApp(daemon.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.online, "the daemon")
        assert app.vm_features == features
        table = app.w_vms
        assert table.check_action("vm", ("stop",)) is True
        assert table.check_action("vm", ("suspend",)) is ("suspend" in features)
        app.vm_features = frozenset({"suspend"})  # what a daemon with suspend reports
        assert table.check_action("vm", ("suspend",)) is True


async def test_create_form_starts_a_create_and_reports_its_failure(daemon: RunningDaemon) -> None:
    """A valid form becomes a real create operation; its failure (here: an image that
    does not exist) comes back as the CLI's error + hint, and nothing is left."""
    app = BangerApp(daemon.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.online and app.config_values, "the daemon")
        form = await open_create_form(pilot, app)
        form.query_one("#f-name", Input).value = "fresh"
        form.query_one("#f-memory", Input).value = "256M"
        form.query_one("#f-image", Select).set_options([("ghost-image", "ghost-image")])
        form.query_one("#f-image", Select).value = "ghost-image"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, CreateForm), "the form to close")
        msg = app.w_msg
        await until(pilot, lambda: "error:" in plain(msg), "the create's failure")
        assert "error: create fresh: " in plain(msg) and "ghost-image" in plain(msg)
        assert "\nhint: " in plain(msg)
        ops = {str(app.w_ops.get_row(k)[0]): str(app.w_ops.get_row(k)[3]) for k in app.w_ops.rows}
        assert ops.get("vm.create fresh") == "failed"
    with Client(daemon.paths) as c:
        assert c.vms() == []


async def test_toggling_nat_on_marked_vms_changes_the_daemons_records(
    daemon100: RunningDaemon,
) -> None:
    app = BangerApp(daemon100.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(vm_rows(app)) == 100, "rows")
        await pilot.press("space", "space", "t")
        with Client(daemon100.paths) as c:
            await until(
                pilot,
                lambda: [v.nat for v in c.vms()[:3]] == [True, True, False],
                "NAT on for the two marked VMs",
            )
        await until(pilot, lambda: vm_rows(app)["rec-001"][9] == "yes", "the NAT column")
        assert vm_rows(app)["rec-002"][9] == "no"


async def test_images_tab_shows_and_removes_a_registered_image(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    from banger.api.models import RegisterImage
    from banger.artifacts import ext4

    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    rootfs = tmp_path / "mine.ext4"
    ext4.mkfs_from_dir(src, rootfs, 32 << 20, "root")
    with Client(daemon.paths) as c:
        c.register_image(RegisterImage(name="mine", rootfs=str(rootfs), kernel="debian-6.1"))
    app = BangerApp(daemon.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.online, "the daemon")
        await pilot.press("2")
        images = app.w_images
        await until(pilot, lambda: "mine" in images.rows, "the image row")
        assert [str(x) for x in images.get_row("mine")][:4] == [
            "mine",
            "no",
            "debian-6.1",
            "no (slow path)",
        ]
        await pilot.press("i")
        await until(pilot, lambda: app.screen.query("#details-body"), "the details")
        assert str(rootfs) in plain(app.screen.query_one("#details-body"))
        await pilot.press("escape", "x")
        assert isinstance(app.screen, Confirm)
        await pilot.press("y")
        with Client(daemon.paths) as c:
            await until(pilot, lambda: c.images() == [], "the removal")
        await until(pilot, lambda: "mine" not in images.rows, "the row to go")
    assert rootfs.exists()  # a registered image's files stay where the user keeps them


async def test_clicking_a_header_sorts_and_keeps_the_highlighted_vm(
    daemon100: RunningDaemon,
) -> None:
    app = BangerApp(daemon100.paths, interval=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(vm_rows(app)) == 100, "rows")
        table = app.w_vms
        await pilot.press("down", "down")  # rec-002 (3 vCPUs)
        x = 0
        for col in table.ordered_columns:
            if str(col.key.value) == "vcpus":
                break
            x += col.get_render_width(table)
        await pilot.click("#vm-table", offset=(x + 1, 0))

        def order() -> list[int]:
            return [app.vms[str(r.key.value)].vcpus for r in table.ordered_rows]

        await until(pilot, lambda: order() == sorted(order()), "ascending vCPUs")
        assert order()[0] == 1 and order()[-1] == 4
        assert app.highlighted_vm() is not None and app.highlighted_vm().name == "rec-002"  # type: ignore[union-attr]
        await pilot.click("#vm-table", offset=(x + 1, 0))
        await until(pilot, lambda: order() == sorted(order(), reverse=True), "descending")
        await pilot.pause(0.8)  # refreshes keep the order
        assert order() == sorted(order(), reverse=True)
        assert app.highlighted_vm().name == "rec-002"  # type: ignore[union-attr]
