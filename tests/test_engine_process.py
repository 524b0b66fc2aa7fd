"""Detached hypervisor processes: spawn, identity by pid + start time, kill."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.engines import process
from banger.errors import CommandFailed


@pytest.fixture
def spawned() -> Iterator[list[process.Spawned]]:
    procs: list[process.Spawned] = []
    yield procs
    for p in procs:  # never leave anything running
        process.kill(p.pid, p.start_time)


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


async def test_spawn_is_detached_and_tracked(
    tmp_path: Path, spawned: list[process.Spawned]
) -> None:
    p = process.spawn(["sleep", "30"], log=tmp_path / "log")
    spawned.append(p)
    assert process.is_alive(p.pid, p.start_time)
    # Not our child (re-parented once the launcher shell exited) and not in our
    # session: it survives the daemon and its terminal.
    assert _ppid(p.pid) != os.getpid()
    assert os.getsid(p.pid) != os.getsid(0)
    assert process.pid_start_time(p.pid) == p.start_time

    assert process.kill(p.pid, p.start_time)
    assert await process.wait_gone(p.pid, p.start_time, 5)
    assert not process.is_alive(p.pid, p.start_time)
    assert not process.kill(p.pid, p.start_time)  # nothing left to signal


async def test_output_goes_to_files_and_stdin_is_devnull(
    tmp_path: Path, spawned: list[process.Spawned]
) -> None:
    # (sleep first: spawn rightly reports a process that is gone before it is recorded)
    script = "sleep 0.3; cat; echo out-line; echo err-line >&2"
    p = process.spawn(["sh", "-c", script], log=tmp_path / "err.log", stdout=tmp_path / "out.log")
    spawned.append(p)
    assert await process.wait_gone(p.pid, p.start_time, 5)  # `cat` saw EOF at once
    assert (tmp_path / "out.log").read_text() == "out-line\n"
    assert (tmp_path / "err.log").read_text() == "err-line\n"
    # Appends, so a restarted VM keeps its earlier console history.
    p2 = process.spawn(
        ["sh", "-c", "sleep 0.3; echo again"], log=tmp_path / "err.log", stdout=tmp_path / "out.log"
    )
    spawned.append(p2)
    assert await process.wait_gone(p2.pid, p2.start_time, 5)
    assert (tmp_path / "out.log").read_text() == "out-line\nagain\n"


async def test_recycled_pid_is_not_ours(tmp_path: Path, spawned: list[process.Spawned]) -> None:
    p = process.spawn(["sleep", "30"], log=tmp_path / "log")
    spawned.append(p)
    other_start = p.start_time + 1  # what a different process with this pid would have
    assert not process.is_alive(p.pid, other_start)
    assert not process.kill(p.pid, other_start)
    await process.terminate(p.pid, other_start)  # a no-op on a process that is not ours
    assert process.is_alive(p.pid, p.start_time)


async def test_terminate_escalates_to_sigkill(
    tmp_path: Path, spawned: list[process.Spawned]
) -> None:
    p = process.spawn(["sh", "-c", "trap '' TERM; exec sleep 30"], log=tmp_path / "log")
    spawned.append(p)
    start = time.monotonic()
    await process.terminate(p.pid, p.start_time, grace=0.3)
    assert not process.is_alive(p.pid, p.start_time)
    assert time.monotonic() - start < 3


async def test_wait_gone_times_out(tmp_path: Path, spawned: list[process.Spawned]) -> None:
    p = process.spawn(["sleep", "30"], log=tmp_path / "log")
    spawned.append(p)
    assert not await process.wait_gone(p.pid, p.start_time, 0.1)


async def test_missing_program_is_reported(tmp_path: Path, spawned: list[process.Spawned]) -> None:
    log = tmp_path / "log"
    try:
        p = process.spawn([str(tmp_path / "no-such-hypervisor")], log=log)
    except CommandFailed as exc:
        assert "exited immediately" in exc.message
    else:
        spawned.append(p)
        assert await process.wait_gone(p.pid, p.start_time, 5)
    assert "not found" in log.read_text()


async def test_start_time_parsing_survives_odd_process_names(
    tmp_path: Path, spawned: list[process.Spawned]
) -> None:
    odd = tmp_path / "a b) (c"
    odd.symlink_to("/bin/sleep")
    p = process.spawn([str(odd), "30"], log=tmp_path / "log")
    spawned.append(p)
    assert process.pid_start_time(p.pid) == p.start_time
    assert process.is_alive(p.pid, p.start_time)


def test_unknown_pid() -> None:
    assert process.pid_start_time(2**22 + 12345) is None
    assert not process.is_alive(0, 0)
    assert not process.kill(-1)


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "\n  \n")
    assert process.log_tail(log, lines=2) == "line 98 | line 99"
    assert process.log_tail(tmp_path / "missing") == ""
