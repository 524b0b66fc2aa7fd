"""The network capability on a daemon's first network use: bridge, and TAPs an earlier
daemon left warm adopted (up to the pool size) instead of colliding with new ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import netns

pytestmark = netns.skip_unless_netns()

SCRIPT = """
import json, sys
from pathlib import Path
from banger.capabilities.network import NetworkCapability
from banger.net.pool import TapPool
from banger.net.tap import create_tap, list_taps
from banger.net.bridge import ensure_bridge
from banger.store import Store
from banger.vm import VMRepository

ensure_bridge("bgtbr0", "172.30.9.0/24")
for i in range(6):  # what an earlier daemon left behind
    create_tap(f"tap-pool-{i}", "bgtbr0")
store = Store(Path(sys.argv[1]) / "banger.db")
pool = TapPool("bgtbr0", size=2)
cap = NetworkCapability(VMRepository(store), pool, "bgtbr0", "172.30.9.0/24")
cap.ensure_ready()
idle = sorted(pool.idle)
lease = pool.lease()
print(json.dumps({
    "idle": idle,
    "lease_cold": lease.cold,
    "left": sorted(t.name for t in list_taps("tap-pool-")),
}))
"""


def test_first_use_adopts_leftover_taps_and_deletes_extras(tmp_path: Path) -> None:
    with netns.namespace() as ns:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out["idle"]) == 2  # adopted up to the pool size
    assert out["lease_cold"] is False  # the next create takes a warm one
    assert len(out["left"]) == 2  # the four extras were deleted
