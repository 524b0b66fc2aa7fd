"""The KVM probe: real checks, human reasons, a cache that knows when to expire."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from banger.engines import kvm
from banger.engines.kvm import probe_kvm


def test_missing_device(tmp_path: Path) -> None:
    status = probe_kvm(tmp_path / "cache.json", device=str(tmp_path / "kvm"))
    assert not status.usable
    assert "does not exist" in status.reason


def test_not_a_kvm_device_fails_in_the_ioctl_probe(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    status = probe_kvm(None, device=str(fake))
    assert not status.usable
    assert "KVM ioctl failed" in status.reason, status.reason


def test_cache_hit_and_invalidation(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    cache = tmp_path / "cache" / "kvm.json"
    first = probe_kvm(cache, device=str(fake))
    assert not first.cached
    assert json.loads(cache.read_text())["usable"] is False
    again = probe_kvm(cache, device=str(fake))
    assert again.cached and again.reason == first.reason
    # A reloaded module / new device node changes inode or ctime: probe again.
    time.sleep(0.01)
    os.chmod(fake, 0o600)
    assert not probe_kvm(cache, device=str(fake)).cached
    assert not probe_kvm(cache, device=str(fake), refresh=True).cached
    cache.write_text("{not json")
    assert not probe_kvm(cache, device=str(fake)).cached


def test_qemu_probe_reports_qemus_own_words(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text(
        "#!/bin/sh\ncat >/dev/null\n"
        'echo "$0: error: failed to set MSR 0x10a to 0x69" >&2\nexit 134\n'
    )
    fake.chmod(0o755)
    status = kvm._qemu_probe(str(fake))
    assert not status.usable
    assert status.reason.startswith(
        "qemu -accel kvm -cpu host failed: error: failed to set MSR 0x10a to 0x69"
    )


def test_qemu_probe_success(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\ncat >/dev/null\nexit 0\n")
    fake.chmod(0o755)
    assert kvm._qemu_probe(str(fake)).usable


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this host")
def test_real_probe_is_cached_and_instant(tmp_path: Path) -> None:
    cache = tmp_path / "kvm.json"
    qemu = "/usr/bin/qemu-system-x86_64" if os.path.exists("/usr/bin/qemu-system-x86_64") else None
    status = probe_kvm(cache, qemu_bin=qemu)
    assert status.reason
    assert status.usable == (status.reason == "KVM works")
    start = time.monotonic()
    again = probe_kvm(cache, qemu_bin=qemu)
    assert again.cached and again.usable == status.usable
    assert time.monotonic() - start < 0.05


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm")
def test_ioctl_probe_runs_a_guest_instruction() -> None:
    """On a host where KVM can create a vCPU the child probe runs real guest code."""
    status = kvm._child_probe("/dev/kvm")
    assert status.usable or "KVM" in status.reason, status.reason
