"""get_engine: auto picks Firecracker only where it can run, explicit names explain."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.engines import FirecrackerEngine, QemuEngine, get_engine
from banger.engines.base import Availability
from banger.errors import BangerError, InvalidInput, ToolMissing


def _avail(monkeypatch: pytest.MonkeyPatch, cls: type, ok: bool, detail: str) -> None:
    monkeypatch.setattr(cls, "availability", lambda self: Availability(ok, detail))


def test_auto_prefers_firecracker_when_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    _avail(monkeypatch, FirecrackerEngine, True, "firecracker v1.16.1, accel=kvm")
    _avail(monkeypatch, QemuEngine, True, "qemu 7.2, accel=kvm")
    assert get_engine("auto").name == "firecracker"


def test_auto_falls_back_to_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    _avail(monkeypatch, FirecrackerEngine, False, "firecracker v1.16.1 needs KVM: no")
    _avail(monkeypatch, QemuEngine, True, "qemu 7.2, accel=tcg")
    assert get_engine("auto").name == "qemu"


def test_auto_with_nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _avail(monkeypatch, FirecrackerEngine, False, "Firecracker is not installed")
    _avail(monkeypatch, QemuEngine, False, "QEMU is not installed")
    with pytest.raises(ToolMissing, match="no engine can run VMs here"):
        get_engine("auto")


def test_explicit_unavailable_engine_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    _avail(monkeypatch, FirecrackerEngine, False, "firecracker v1.16.1 needs KVM: KVM_RUN failed")
    with pytest.raises(BangerError, match=r"'firecracker' is not usable: .*KVM_RUN failed") as exc:
        get_engine("firecracker")
    assert exc.value.code == "engine_unavailable"
    assert "auto" in exc.value.hint


def test_explicit_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    _avail(monkeypatch, QemuEngine, True, "qemu 7.2, accel=tcg")
    assert get_engine("qemu").name == "qemu"


def test_unknown_engine() -> None:
    with pytest.raises(InvalidInput, match="unknown engine 'vbox'") as exc:
        get_engine("vbox")
    assert exc.value.hint == 'use "auto", "qemu" or "firecracker" for `engine`'


def test_engine_names_are_named_once(tmp_path: Path) -> None:
    """Config, the CLI's choices, the API and the registry accept exactly the engines
    there are (and "auto"): one list, `banger.engine_names`."""
    from banger.api.models import CreateVM
    from banger.cli.vm_cmds import ENGINES as CLI_CHOICES
    from banger.config import Config
    from banger.engine_names import ENGINE_CHOICES, ENGINES
    from banger.engines.registry import EngineRegistry

    assert (QemuEngine.name, FirecrackerEngine.name) == ENGINES
    assert ("auto", *ENGINES) == ENGINE_CHOICES
    assert tuple(CLI_CHOICES.choices) == ENGINE_CHOICES
    for name in ENGINE_CHOICES:
        assert Config(engine=name).engine == name  # type: ignore[arg-type]
        assert CreateVM(name="a", engine=name).engine == name  # type: ignore[arg-type]
    registry = EngineRegistry(Config(), cache_dir=tmp_path)
    assert [registry.get(n).name for n in ENGINES] == list(ENGINES)
    with pytest.raises(InvalidInput, match="unknown engine 'vbox'"):
        registry.get("vbox")


def test_real_host(tmp_path: Path) -> None:
    """On this host, whatever it is, auto resolves to something that says why."""
    try:
        engine = get_engine("auto", cache_dir=tmp_path)
    except ToolMissing:
        pytest.skip("no engine installed")
    assert engine.availability().ok
    assert (tmp_path / "kvm-probe.json").exists()
