"""A step of a create is saved without an fsync (`VMRepository.save(durable=False)`):
it must still be there for the next daemon after this one is killed outright, and
the connection's durable commits stay durable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from banger.store import Store
from banger.vm import VMRepository
from tests.records import vm_record

CHILD = """
import os, sys
from pathlib import Path
from banger.store import Store
from banger.vm import VMRepository
from tests.records import vm_record
repo = VMRepository(Store(Path(sys.argv[1])))
vm = vm_record("steps", "172.30.0.9")
repo.save(vm)
vm.tap = "tap-pool-7"
repo.save(vm, durable=False)
os.kill(os.getpid(), 9)  # a daemon killed right after a step of its create
"""


def test_a_step_saved_without_fsync_survives_a_killed_daemon(tmp_path: Path) -> None:
    db = tmp_path / "banger.db"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(db)], capture_output=True, check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    got = VMRepository(Store(db)).get("steps")
    assert got.tap == "tap-pool-7"


def test_durable_commits_stay_fsynced_after_one_that_is_not(tmp_path: Path) -> None:
    store = Store(tmp_path / "banger.db")
    before = store._db.execute("PRAGMA synchronous").fetchone()[0]
    repo = VMRepository(store)
    vm = vm_record("a", "172.30.0.10")
    repo.save(vm, durable=False)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == before
    assert before >= 2  # FULL (or EXTRA): the default of every other commit
