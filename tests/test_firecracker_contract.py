"""The Firecracker engine speaks the published Firecracker API, and only that.

Every request the engine builds is validated against the v1.16.1 spec, the
validator is shown to reject bad requests (so these tests can fail), and the
engine runs end to end against a fake `firecracker` that validates each request
it receives the same way and answers 400 to anything invalid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import banger.engines.firecracker as fcmod
from banger.engines import process
from banger.engines.base import Drive, GuestConfig, NetIface
from banger.engines.firecracker import ApiRequest, FirecrackerEngine, build_requests
from banger.engines.guest_config import build_guest_config
from banger.errors import CommandFailed
from tests.fake_firecracker import SERIAL_BOOT_LINE, SERIAL_CAD_LINE
from tests.fc_validator import CONTRACT, FirecrackerSpec, SpecViolation, default_spec

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec() -> FirecrackerSpec:
    return default_spec()


def _files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("vmlinux", "initrd.img", "rootfs.ext4", "work.ext4"):
        (tmp_path / name).write_bytes(b"\0" * 512)
        out[name] = tmp_path / name
    return out


def _config(tmp_path: Path, **kw: Any) -> GuestConfig:
    f = _files(tmp_path)
    args: dict[str, Any] = dict(
        vm_id="0123abcd",
        name="devbox",
        kernel=f["vmlinux"],
        initrd=f["initrd.img"],
        rootfs=f["rootfs.ext4"],
        work_disk=f["work.ext4"],
        vcpus=2,
        memory_mib=512,
        run_dir=tmp_path / "run",
        ip="172.30.0.5",
        gateway="172.30.0.1",
        dns="172.30.0.1",
        tap="tap-pool-0",
        vsock_cid=42,
    )
    args.update(kw)
    return build_guest_config(**args)


# -- every request the engine builds conforms -------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"initrd": None, "work_disk": None},
        {"ip": None, "gateway": None, "tap": None, "dns": None, "vsock_cid": None},
        {"vcpus": 32, "memory_mib": 128},
    ],
)
def test_built_requests_validate(
    tmp_path: Path, spec: FirecrackerSpec, variant: dict[str, Any]
) -> None:
    config = _config(tmp_path, **variant)
    reqs = build_requests(config, log_path=tmp_path / "fc.log")
    for req in reqs:
        spec.validate(req.method, req.path, req.body)
    assert reqs[-1] == ApiRequest("PUT", "/actions", {"action_type": "InstanceStart"})


def test_read_only_drive_and_stop_action_validate(tmp_path: Path, spec: FirecrackerSpec) -> None:
    base = _config(tmp_path)
    ro = GuestConfig(**{**base.__dict__, "drives": (Drive("seed", base.drives[0].path, True),)})
    for req in build_requests(ro):
        spec.validate(req.method, req.path, req.body)
    spec.validate("PUT", "/actions", {"action_type": "SendCtrlAltDel"})


# -- the validator rejects what Firecracker rejects --------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "needle"),
    [
        ("PUT", "/machine-config", {"vcpu_count": "2", "mem_size_mib": 512}, "not of type"),
        ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": True}, "not of type"),
        ("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 512}, "minimum"),
        ("PUT", "/machine-config", {"vcpu_count": 2}, "'mem_size_mib' is a required"),
        ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/x"}, "is_root_device"),
        (
            "PUT",
            "/drives/rootfs",
            {"drive_id": "work", "path_on_host": "/x", "is_root_device": False},
            "path drive_id",
        ),
        ("PUT", "/boot-source", {"kernel_image_path": "/k", "bootargs": "x"}, "bootargs"),
        ("PUT", "/boot-source", {"boot_args": "console=ttyS0"}, "kernel_image_path"),
        ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0"}, "host_dev_name"),
        ("PUT", "/vsock", {"guest_cid": 2, "uds_path": "/v.sock"}, "minimum"),
        ("PUT", "/actions", {"action_type": "Reboot"}, "is not one of"),
        ("PUT", "/actions", None, "required"),
        ("PUT", "/drive/rootfs", {"drive_id": "rootfs"}, "no such path"),
        ("DELETE", "/drives/rootfs", None, "method not allowed"),
        ("GET", "/machine-config", {"vcpu_count": 1}, "no body"),
    ],
)
def test_validator_rejects(
    spec: FirecrackerSpec, method: str, path: str, body: Any, needle: str
) -> None:
    with pytest.raises(SpecViolation) as exc:
        spec.validate(method, path, body)
    assert needle in str(exc.value)


def test_validator_accepts_optional_fields(spec: FirecrackerSpec) -> None:
    spec.validate("PUT", "/logger", {"log_path": "/l", "level": "Debug", "show_level": True})
    spec.validate("GET", "/", None)
    spec.validate(
        "PUT", "/drives/x", {"drive_id": "x", "is_root_device": False, "io_engine": "Sync"}
    )


# -- end to end against a fake firecracker ----------------------------------------


STANDIN_DIR = REPO_ROOT / "tests" / "standin"


@pytest.fixture
def fake_fc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in `firecracker` first on PATH, booting no guest (the files here
    are dummies); return the file it records every request into."""
    record = tmp_path / "requests.jsonl"
    monkeypatch.setenv("PATH", f"{STANDIN_DIR}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_FC_RECORD", str(record))
    monkeypatch.setenv("FAKE_FC_GUEST", "none")
    return record


def _recorded(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


async def test_start_and_stop_against_fake_firecracker(fake_fc: Path, tmp_path: Path) -> None:
    config = _config(tmp_path)
    engine = FirecrackerEngine()
    # Found on PATH and its version read; ok only where KVM can run guests.
    assert engine.availability().detail.startswith("firecracker v1.16.1")
    handle = await engine.start(config)
    try:
        assert engine.is_running(handle)
        assert os.getsid(handle.pid) != os.getsid(0)  # detached from our session
        seen = _recorded(fake_fc)
        assert [(r["method"], r["path"]) for r in seen] == [
            ("PUT", "/logger"),
            ("PUT", "/machine-config"),
            ("PUT", "/boot-source"),
            ("PUT", "/drives/rootfs"),
            ("PUT", "/drives/work"),
            ("PUT", "/network-interfaces/eth0"),
            ("PUT", "/vsock"),
            ("PUT", "/actions"),
        ]
        assert all(r["status"] == 204 for r in seen)
        assert seen[1]["body"] == {"vcpu_count": 2, "mem_size_mib": 512, "smt": False}
        assert seen[2]["body"]["boot_args"] == config.cmdline
        assert seen[3]["body"]["is_root_device"] is True
        assert seen[5]["body"]["guest_mac"] == config.nics[0].mac
        assert seen[-1]["body"] == {"action_type": "InstanceStart"}
        assert handle.extra["agent"] == {
            "transport": "hybrid-vsock",
            "path": str(config.run_dir / "vsock.sock"),
            "cid": 42,
        }
        # The guest serial console (firecracker's stdout) lands in the console log.
        assert SERIAL_BOOT_LINE in config.console_log.read_text()
        assert "logger configured" in (config.run_dir / "firecracker.log").read_text()

        await engine.stop(handle, timeout=5)
        assert not engine.is_running(handle)
        last = _recorded(fake_fc)[-1]
        assert (last["path"], last["body"], last["status"]) == (
            "/actions",
            {"action_type": "SendCtrlAltDel"},
            204,
        )
        assert SERIAL_CAD_LINE in config.console_log.read_text()
    finally:
        process.kill(handle.pid, handle.start_time)


async def test_stop_kills_a_guest_ignoring_ctrl_alt_del(
    fake_fc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FC_IGNORE_CTRL_ALT_DEL", "1")
    engine = FirecrackerEngine()
    handle = await engine.start(_config(tmp_path))
    try:
        await engine.stop(handle, timeout=0.3)
        assert not engine.is_running(handle)
        assert _recorded(fake_fc)[-1]["body"] == {"action_type": "SendCtrlAltDel"}
    finally:
        process.kill(handle.pid, handle.start_time)


async def test_invalid_request_fails_start_and_leaves_nothing(
    fake_fc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the engine ever sent a non-conforming body, the fake (like Firecracker)
    answers 400: start fails with the fault message and kills the process."""
    real = fcmod.build_requests

    def broken(config: GuestConfig, **kw: Any) -> list[ApiRequest]:
        reqs = real(config, **kw)
        return [
            ApiRequest(r.method, r.path, {**r.body, "vcpu_count": "two"})
            if r.path == "/machine-config"
            else r
            for r in reqs
        ]

    monkeypatch.setattr(fcmod, "build_requests", broken)
    with pytest.raises(CommandFailed, match=r"PUT /machine-config \(400\).*not of type"):
        await FirecrackerEngine().start(_config(tmp_path))
    seen = _recorded(fake_fc)
    assert seen[-1]["status"] == 400
    assert not any(r["path"] == "/actions" for r in seen)
    _assert_no_fake_left(tmp_path)


async def test_missing_kernel_is_refused_like_firecracker(fake_fc: Path, tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.kernel.unlink()
    with pytest.raises(CommandFailed, match="kernel_image_path"):
        await FirecrackerEngine().start(config)
    _assert_no_fake_left(tmp_path)


async def test_early_exit_is_reported_with_its_log(
    fake_fc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FC_CRASH", "1")
    with pytest.raises(
        CommandFailed, match=r"exited (during start|immediately): .*KVM not accessible"
    ):
        await FirecrackerEngine().start(_config(tmp_path))
    assert _recorded(fake_fc) == []


def _assert_no_fake_left(tmp_path: Path) -> None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(tmp_path).encode() in cmd and process.pid_start_time(int(proc.name)):
                pytest.fail(f"fake firecracker still running: {cmd!r}")


def test_nic_request_shape(tmp_path: Path) -> None:
    config = _config(tmp_path)
    nic = NetIface("eth0", "tap-pool-0", config.nics[0].mac)
    req = next(r for r in build_requests(config) if r.path.startswith("/network"))
    assert req.body == {"iface_id": nic.iface_id, "host_dev_name": nic.tap, "guest_mac": nic.mac}


# -- the contract lives in the repository ------------------------------------------


def test_contract_is_in_the_repository_with_provenance(spec: FirecrackerSpec) -> None:
    prov = spec.doc["provenance"]
    assert spec.version == prov["firecracker_version"] == "1.16.1"
    assert prov["upstream_path"] == "src/firecracker/swagger/firecracker.yaml"
    assert prov["licence"].startswith("Apache")
    assert len(spec.doc["paths"]) >= 20 and "Vsock" in spec.doc["definitions"]
    # Facts only: no upstream prose in the operations or schemas.
    text = json.dumps({"paths": spec.doc["paths"], "definitions": spec.doc["definitions"]})
    assert '"description"' not in text and '"summary"' not in text


def test_contract_check_reports_drift() -> None:
    from scripts.fc_contract import _diff

    current = json.loads(CONTRACT.read_text())
    drifted = json.loads(CONTRACT.read_text())
    drifted["definitions"]["Vsock"]["required"].append("vsock_id")
    del drifted["paths"]["/vsock"]
    assert _diff(current, current) == []
    assert _diff(current, drifted) == [
        "differs: /definitions/Vsock/required: ['guest_cid', 'uds_path'] != "
        "['guest_cid', 'uds_path', 'vsock_id']",
        "only in the contract: /paths//vsock",
    ]


@pytest.mark.skipif(
    not os.environ.get("BANGER_FC_SPEC"), reason="BANGER_FC_SPEC names no upstream spec"
)
def test_contract_agrees_with_the_upstream_spec() -> None:
    from scripts.fc_contract import main

    assert main(["--check"]) == 0


def test_no_project_file_reads_beside_the_repository() -> None:
    """A fresh clone alone must pass: nothing may reach for the folder beside it."""
    beside = "shared"  # the folder next to the clone that a fresh machine lacks
    needles = (f"../{beside}", f'.parent / "{beside}"')
    offenders = []
    for top in ("src", "tests", "scripts", "Makefile", "pyproject.toml"):
        base = REPO_ROOT / top
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        for f in files:
            if f.suffix in (".pyc", ".ext4", ".img") or "__pycache__" in f.parts:
                continue
            try:
                text = f.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            if any(needle in text for needle in needles):
                offenders.append(str(f.relative_to(REPO_ROOT)))
    assert offenders == []
