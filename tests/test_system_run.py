"""Host programs started through `banger.system.run` never outlive a crashed daemon:
a killed bangerd must not leave an unpack or build writing into a tree the next
daemon start sweeps away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_CHILD = """
import sys, threading
from banger.system import run, arun
import asyncio
kind = sys.argv[1]
if kind == "run":
    threading.Thread(target=run, args=(["sleep", "300"],), daemon=True).start()
else:
    threading.Thread(target=lambda: asyncio.run(arun(["sleep", "300"])), daemon=True).start()
print("started", flush=True)
threading.Event().wait()
"""


def _sleepers_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        argv = cmd.split(b"\0")
        if ppid == pid and Path(os.fsdecode(argv[0])).name == "sleep" and argv[1:2] == [b"300"]:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("kind", ["run", "arun"])
def test_a_program_dies_with_the_process_that_ran_it(kind: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _CHILD, kind], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 10
        while not (children := _sleepers_of(parent.pid)):
            assert time.monotonic() < deadline, "the program never started"
            time.sleep(0.05)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{c}").exists() for c in children):
            if time.monotonic() > deadline:
                for c in children:
                    os.kill(c, signal.SIGKILL)
                raise AssertionError(f"`sleep` (pid {children}) outlived its killed parent")
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_child_whose_parent_died_before_it_armed_the_signal_exits() -> None:
    """The hook arms PR_SET_PDEATHSIG in the child; a parent already gone by then would
    never send it, so the child exits instead of running on (here: the hook made in this
    process runs in a grandchild, whose parent is not this process)."""
    from banger.system.run import die_with_parent

    hook = die_with_parent()
    assert hook is not None

    def in_child(grandchild: bool) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's exit code is the result
            code = 0
            try:
                if grandchild:
                    inner = os.fork()
                    if inner == 0:
                        hook()
                        os._exit(0)
                    code = os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1])
                else:
                    hook()
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert in_child(grandchild=False) == 0  # its parent is the one that made the hook
    assert in_child(grandchild=True) == 1
