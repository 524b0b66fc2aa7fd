"""Published ports as a capability: parsing, conflicts (owner named), the host
listener check, lifecycle and crash reclaim, against a real store and real nft."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.capabilities.base import PrepareContext
from banger.capabilities.publish import PublishCapability, parse_spec
from banger.errors import Conflict, InvalidInput, NotFound
from banger.net import nat
from banger.net.nat import PortRule
from banger.store import Store
from banger.system import find_tool
from banger.vm import VMRepository
from tests import netns
from tests.records import vm_record


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ("8080:80", PortRule("tcp", "0.0.0.0", 8080, 80)),
        ("127.0.0.1:5353:53/udp", PortRule("udp", "127.0.0.1", 5353, 53)),
        ("2222:22/TCP", PortRule("tcp", "0.0.0.0", 2222, 22)),
    ],
)
def test_parse(spec: str, rule: PortRule) -> None:
    assert parse_spec(spec) == rule
    assert parse_spec(str(rule)) == rule  # round-trips as shown


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("80", "not a port mapping"),
        ("0:80", "out of range"),
        ("8080:70000", "out of range"),
        ("8080:80/sctp", "tcp or udp"),
        ("::1:8080:80", "IPv4"),
        ("300.1.1.1:80:80", "not an IPv4 address"),
    ],
)
def test_parse_errors_name_the_problem_and_the_fix(spec: str, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_spec(spec)
    assert words in err.value.message and "HOST_PORT:GUEST_PORT" in (err.value.hint or SPEC)


SPEC = "[ADDR:]HOST_PORT:GUEST_PORT"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "banger.db")
    yield s
    s.close()


def _ctx(tmp_path: Path, publish: list[str]) -> PrepareContext:
    return PrepareContext(tmp_path, tmp_path, None, lambda *a, **k: None, {"publish": publish})


pytestmark_nft = pytest.mark.skipif(find_tool("nft") is None, reason="needs nft")


@pytest.mark.netns
@netns.skip_unless_netns()
@pytestmark_nft
async def test_lifecycle_conflicts_and_reclaim(store: Store, tmp_path: Path) -> None:
    with netns.namespace() as ns:
        cap = PublishCapability(store, "banger0", "172.30.0.0/24", netns=ns)
        web, db = vm_record("web", "172.30.0.2"), vm_record("db", "172.30.0.3")
        for v in (web, db):
            VMRepository(store).save(v)
        await cap.prepare(web, _ctx(tmp_path, ["8080:80", "127.0.0.1:5353:53/udp"]))
        await cap.attach(web, None)  # type: ignore[arg-type]
        assert {e.rule for e in nat.list_published(netns=ns)} == set(cap.rules_for(web.id))

        # Same port on an overlapping address: refused, owner named, nothing stored.
        with pytest.raises(Conflict) as err:
            cap.validate({"publish": ["127.0.0.1:8080:80"]})
        assert "VM `web`" in err.value.message and "unpublish web" in err.value.hint
        with pytest.raises(Conflict):
            await cap.publish(db, ["9000:90", "8080:81"])
        assert cap.rules_for(db.id) == []
        # Another protocol or address is fine; duplicates within one request are not.
        cap.validate({"publish": ["8080:80/udp", "127.0.0.2:5353:53/udp"]})
        with pytest.raises(InvalidInput):
            cap.validate({"publish": ["9000:90", "127.0.0.1:9000:91"]})

        # A program on the host listening on the port: refused too.
        holder = netns_socket(ns, ("127.0.0.1", 0))
        try:
            port = holder.getsockname()[1]
            with pytest.raises(Conflict) as err:
                cap.validate({"publish": [f"{port}:80"]})
            assert "program on the host" in err.value.message
        finally:
            holder.close()

        # Live unpublish by host port; unknown ones are named with what there is.
        await cap.unpublish(web, ["5353/udp"])
        assert [str(r) for r in cap.rules_for(web.id)] == ["8080:80"]
        with pytest.raises(NotFound) as nf:
            await cap.unpublish(web, ["1234"])
        assert "8080:80" in nf.value.hint

        # A crash: the daemon is gone, web died, db runs. Reclaim squares the table.
        nat.set_published("172.30.0.9", [PortRule("tcp", "0.0.0.0", 7000, 70)], netns=ns)
        report = await cap.reclaim_running({"172.30.0.3": db.id})
        assert report["removed"] == ["172.30.0.2", "172.30.0.9"]
        assert nat.list_published(netns=ns) == []
        report = await cap.reclaim_running({"172.30.0.2": web.id})  # web runs again: restored
        assert report["restored"] == ["172.30.0.2"]
        assert [e.rule for e in nat.list_published(netns=ns)] == cap.rules_for(web.id)

        await cap.detach(web)
        assert nat.list_published(netns=ns) == []
        await cap.destroy(web)
        assert cap.rules_for(web.id) == [] and store.all("published_ports") == []


def netns_socket(ns: str, bind: tuple[str, int]) -> socket.socket:
    from banger.net._ns import call_in_netns

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(bind)
        s.listen(1)
        return s

    return call_in_netns(ns, make)
