"""TAP devices with real netlink, inside a throwaway namespace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from banger import system
from banger.errors import Conflict, InvalidInput, NotFound
from banger.net import privileged
from banger.net.bridge import ensure_bridge
from banger.net.tap import attach_tap, create_tap, delete_tap, list_taps, tap_exists
from tests import netns

pytestmark = [pytest.mark.netns, netns.skip_unless_netns()]


@pytest.fixture
def ns() -> Iterator[str]:
    with netns.namespace() as name:
        ensure_bridge("banger0", netns=name)
        yield name


def _link(ns: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(netns.ip(ns, "-j", "-d", "link", "show", "dev", name).out)[0]
    return out


def test_create_tap_attached_up_owned(ns: str) -> None:
    info = create_tap("tap-t0", "banger0", owner_uid=1234, netns=ns)
    assert (info.name, info.master, info.owner, info.up, info.multi_queue) == (
        "tap-t0",
        "banger0",
        1234,
        True,
        False,
    )
    link = _link(ns, "tap-t0")
    bridge = _link(ns, "banger0")
    assert link["master"] == "banger0"
    assert "UP" in link["flags"]
    data = link["linkinfo"]["info_data"]
    assert data["type"] == "tap"
    assert data["pi"] is False
    assert data["multi_queue"] is False
    assert data["persist"] is True
    assert data["user"] == 1234
    assert info.index == link["ifindex"] != bridge["ifindex"]
    # hairpin: a VM reaching its own published port gets its frames back
    assert link["linkinfo"]["info_slave_data"]["hairpin"] is True


def test_root_default_owner_is_none(ns: str) -> None:
    assert create_tap("tap-t1", "banger0", netns=ns).owner is None


def test_list_exists_delete(ns: str) -> None:
    create_tap("tap-a", "banger0", netns=ns)
    create_tap("tap-b", "banger0", netns=ns)
    create_tap("other", "banger0", netns=ns)
    # Matches the prefix but is not a TAP.
    netns.ip(ns, "link", "add", "tap-veth", "type", "veth", "peer", "name", "peer0")
    assert [t.name for t in list_taps("tap-", netns=ns)] == ["tap-a", "tap-b"]
    assert len(list_taps(netns=ns)) == 3
    assert tap_exists("tap-a", netns=ns) and not tap_exists("tap-zzz", netns=ns)
    assert not tap_exists("tap-veth", netns=ns)
    assert delete_tap("tap-a", netns=ns) is True
    assert delete_tap("tap-a", netns=ns) is False
    with pytest.raises(Conflict):
        delete_tap("tap-veth", netns=ns)  # never deletes what is not a TAP
    assert [t.name for t in list_taps("tap-", netns=ns)] == ["tap-b"]


def test_create_conflicts_and_missing_bridge_leave_nothing(ns: str) -> None:
    create_tap("tap-c", "banger0", netns=ns)
    with pytest.raises(Conflict):
        create_tap("tap-c", "banger0", netns=ns)
    with pytest.raises(NotFound) as err:
        create_tap("tap-d", "nobridge", netns=ns)
    assert "bangerd" in err.value.hint
    assert not tap_exists("tap-d", netns=ns)
    with pytest.raises(InvalidInput):
        create_tap("tap-with-a-long-name", "banger0", netns=ns)


def test_attach_repairs_a_detached_tap(ns: str) -> None:
    create_tap("tap-e", "banger0", netns=ns)
    netns.ip(ns, "link", "set", "tap-e", "nomaster", "down")
    info = attach_tap("tap-e", "banger0", netns=ns)
    assert info.master == "banger0" and info.up
    assert _link(ns, "tap-e")["linkinfo"]["info_slave_data"]["hairpin"] is True
    with pytest.raises(NotFound):
        attach_tap("tap-none", "banger0", netns=ns)


def test_sudo_path_runs_the_same_operations(ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend not to be root: ops go through `python -m banger.net.privileged`."""
    calls: list[str] = []
    real_run = system.run

    def spy(argv: list[str], **kw: Any) -> Any:
        calls.append(argv[3])
        return real_run(argv, **kw)

    monkeypatch.setattr(privileged, "is_root", lambda: False)
    monkeypatch.setattr(privileged, "sudo_ready", lambda: True)
    monkeypatch.setattr(privileged, "run", spy)
    info = create_tap("tap-s", "banger0", owner_uid=4321, netns=ns)
    assert info.master == "banger0" and info.owner == 4321
    assert [t.name for t in list_taps("tap-s", netns=ns)] == ["tap-s"]
    with pytest.raises(Conflict) as err:  # errors keep their type and hint across the hop
        create_tap("tap-s", "banger0", owner_uid=4321, netns=ns)
    assert "ip link del tap-s" in err.value.hint
    assert delete_tap("tap-s", netns=ns)
    assert calls == ["create_tap", "list_taps", "create_tap", "delete_tap"]


def test_privileged_without_sudo_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from banger.errors import PrivilegeError

    monkeypatch.setattr(privileged, "is_root", lambda: False)
    monkeypatch.setattr(privileged, "sudo_ready", lambda: False)
    with pytest.raises(PrivilegeError) as err:
        create_tap("tap-x", "banger0", owner_uid=1, netns="bgt-unused")
    assert "sudo" in err.value.hint and "banger.net.privileged" in err.value.hint


def test_privileged_entry_point_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert privileged.main(["rm_rf", "{}"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "invalid_input"
    assert privileged.main(["delete_tap", '{"name": "x", "evil": 1}']) == 1
    assert "bad arguments" in json.loads(capsys.readouterr().out)["error"]["message"]
    assert privileged.main(["delete_tap", "not json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert privileged.main(["delete_tap", '{"name": "a b", "netns": null}']) == 1
    assert "invalid TAP name" in json.loads(capsys.readouterr().out)["error"]["message"]
    assert privileged.main([]) == 2


def test_the_table_is_every_privileged_operation() -> None:
    """`OPERATIONS` is the whole list of what the sudo child runs: each public body in
    `net/ops.py` under its own name, and nothing else."""
    import inspect

    from banger.net import ops

    bodies = {
        name: fn
        for name, fn in inspect.getmembers(ops, inspect.isfunction)
        if fn.__module__ == ops.__name__ and not name.startswith("_")
    }
    assert {name: op.fn for name, op in privileged.OPERATIONS.items()} == bodies
    reads = {name for name, op in privileged.OPERATIONS.items() if op.read_only}
    assert reads == {"get_bridge", "list_taps", "tap_exists"}
