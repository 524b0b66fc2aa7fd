"""The shipped kernel catalog and its validation."""

from __future__ import annotations

import pytest

from banger.artifacts.kernels.catalog import _parse, catalog, default_kernel, get_spec
from banger.errors import BangerError, NotFound


def test_shipped_catalog() -> None:
    spec = get_spec("debian-6.1")
    assert spec is default_kernel()
    assert spec.package == "linux-image-cloud-amd64"
    for needed in (
        "virtio",
        "virtio_ring",
        "virtio_mmio",
        "virtio_blk",
        "virtio_net",
        "vsock",
        "vmw_vsock_virtio_transport_common",
        "vmw_vsock_virtio_transport",
        "virtio_console",
    ):
        assert needed in spec.modules
    assert "ext4" not in spec.modules  # built into Debian's cloud kernel
    assert spec.description
    assert set(catalog()) == {"debian-6.1"}


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(NotFound) as info:
        get_spec("nope")
    assert "debian-6.1" in info.value.hint


def test_invalid_entries_are_rejected() -> None:
    good = 'description = "d"\npackage = "p1"\npackage_pattern = "^p"\nmodules = []\n'
    assert _parse(f"[kernels.a]\ndefault = true\n{good}")["a"].package == "p1"
    with pytest.raises(BangerError, match="exactly one"):
        _parse(f"[kernels.a]\n{good}")
    with pytest.raises(BangerError, match="'a' is invalid"):
        _parse(f"[kernels.a]\ndefault = true\n{good}surprise = 1\n")
    with pytest.raises(BangerError, match="'a' is invalid"):
        _parse(f"[kernels.a]\ndefault = true\n{good.replace('p1', 'Bad Name')}")
    with pytest.raises(BangerError, match="not a valid regex"):
        _parse(f"[kernels.a]\ndefault = true\n{good.replace('^p', '(')}")
