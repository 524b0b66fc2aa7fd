"""Each image's minimum memory: where it comes from (the catalog, image.json, or the
kind of image for one made before it was recorded), the refusal and its wording,
and that `vm create` / `vm set` refuse a smaller VM before making anything."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from banger.api.models import SetVM
from banger.artifacts.images import ImageManifest, OciInfo, default_image, memory_floor
from banger.artifacts.images.info import BuildRecord
from banger.config import Config
from banger.errors import InvalidInput
from banger.sizing import INIT_MIN_MEMORY_MIB, MIN_MEMORY_MIB, MemoryFloor, check_memory
from banger.units import parse_size
from tests import netns
from tests.fakes import Harness
from tests.sandbox import sandbox

GOLDEN = default_image()
DEBIAN = MemoryFloor("debian-bookworm", 256, "sshd, the agent and opencode's server run in it")


def manifest(**kw: Any) -> ImageManifest:
    base: dict[str, Any] = {
        "name": "img",
        "files": {},
        "created": datetime.now(UTC),
        "banger_version": "0",
        "source": "registered",
    }
    return ImageManifest(**{**base, **kw})


# -- the rule and its message ----------------------------------------------------------------


def test_under_the_image_minimum_is_refused_naming_the_image_why_and_the_fix() -> None:
    with pytest.raises(InvalidInput) as err:
        check_memory("192M", floor=DEBIAN)
    assert err.value.message == (
        "image debian-bookworm needs at least 256 MiB of memory "
        "(sshd, the agent and opencode's server run in it)"
    )
    assert err.value.hint == "pass --memory 256M or more"
    assert check_memory("256M", floor=DEBIAN) == 256  # the minimum itself is fine


def test_below_the_floor_of_every_vm_the_image_still_names_its_own_minimum() -> None:
    with pytest.raises(InvalidInput, match="image debian-bookworm needs at least 256 MiB"):
        check_memory("32M", floor=DEBIAN)


def test_a_default_from_the_config_names_the_config_as_the_fix() -> None:
    with pytest.raises(InvalidInput) as err:
        check_memory("128M", floor=DEBIAN, configured=True)
    assert "default_memory" in err.value.hint and "--memory 256M" in err.value.hint


def test_the_shipped_defaults_fit_the_default_image() -> None:
    cfg = Config()
    assert cfg.default_image == GOLDEN.name
    assert parse_size(cfg.default_memory) >= GOLDEN.min_memory_mib * 1024**2
    assert GOLDEN.min_memory_mib >= MIN_MEMORY_MIB and GOLDEN.min_memory_reason


# -- where an image's minimum comes from -------------------------------------------------------


def test_an_image_of_a_recipe_gets_the_catalogs_value_recorded_or_not() -> None:
    """The machine caches hold images built before image.json recorded it."""
    for recorded in ({}, {"min_memory_mib": 999, "min_memory_reason": "old"}):
        m = manifest(name="debian-bookworm", source=f"recipe:{GOLDEN.recipe}", **recorded)
        assert memory_floor(m) == MemoryFloor(
            "debian-bookworm", GOLDEN.min_memory_mib, GOLDEN.min_memory_reason
        )


def test_an_image_built_on_a_recipe_image_needs_what_its_base_did() -> None:
    build = BuildRecord(base="debian-bookworm", base_source=f"recipe:{GOLDEN.recipe}")
    assert memory_floor(manifest(source="build:debian-bookworm", build=build)).mib == (
        GOLDEN.min_memory_mib
    )
    recorded = manifest(source="build:debian-bookworm", build=build, min_memory_mib=512)
    assert memory_floor(recorded).mib == 512


def test_oci_images_need_little_on_banger_init_and_the_golden_minimum_on_systemd() -> None:
    oci = OciInfo(reference="r", digest="d", platform="linux/amd64")
    small = memory_floor(manifest(source="oci:r", oci=oci, init="banger-init", ssh=False))
    assert small.mib == INIT_MIN_MEMORY_MIB < GOLDEN.min_memory_mib
    assert "banger-init" in small.reason
    assert memory_floor(manifest(source="oci:r", oci=oci)).mib == GOLDEN.min_memory_mib


def test_an_image_banger_knows_nothing_about_gets_the_floor_of_every_vm() -> None:
    assert memory_floor(manifest(source="promoted")) == MemoryFloor("img", MIN_MEMORY_MIB)


# -- vm create and vm set, on the real VM service ---------------------------------------------


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = Harness(monkeypatch)
    harness.artifacts.floors["debian-bookworm"] = DEBIAN
    try:
        yield harness
    finally:
        harness.close()


async def test_create_under_the_minimum_makes_nothing(h: Harness) -> None:
    with pytest.raises(InvalidInput, match="needs at least 256 MiB"):
        await h.create("small", image="debian-bookworm", memory="128M")
    assert h.events == [] and h.store.all("vms") == []
    assert not h.paths.vms_dir.exists() or not any(h.paths.vms_dir.iterdir())
    vm = await h.create("big", image="debian-bookworm", memory="256M")
    assert vm.memory_mib == 256
    small = await h.create("other", image="tiny", memory="128M")  # its own minimum
    assert small.memory_mib == 128


async def test_a_configured_default_under_the_minimum_is_refused_naming_the_config(
    h: Harness,
) -> None:
    h.vms.config = Config(default_memory="128M")
    with pytest.raises(InvalidInput) as err:
        await h.create("small", image="debian-bookworm")
    assert "default_memory" in err.value.hint
    assert h.store.all("vms") == []


async def test_set_memory_under_the_images_minimum_is_refused_and_keeps_the_size(
    h: Harness,
) -> None:
    await h.create("devbox", image="debian-bookworm", memory="512M")
    await h.stop("devbox")
    with pytest.raises(InvalidInput, match="image debian-bookworm needs at least 256 MiB"):
        await h.vms.update("devbox", SetVM(memory="192M"))
    assert h.vms.get("devbox").memory_mib == 512
    await h.vms.update("devbox", SetVM(memory="256M"))
    assert h.vms.get("devbox").memory_mib == 256


# -- through the CLI, as a new user ------------------------------------------------------------


@pytest.mark.netns
@netns.skip_unless_netns()
def test_a_refused_create_leaves_nothing_behind(tmp_path: Path) -> None:
    """A fresh home, nothing pulled: the default image's minimum is known before it is
    pulled, so the refusal comes before any pull, disk, address or TAP. (Were it not
    refused, the create would try to pull the image, which fails in a namespace with
    no way out, and this test with it.)"""
    with sandbox(tmp_path / "home", prefix="bgt-mem-") as box:
        box.start_daemon()
        res = box.run("vm", "create", "--name", "small", "--memory", "128M", check=False)
        assert res.returncode != 0
        assert res.stderr.strip().splitlines() == [
            f"error: image {GOLDEN.name} needs at least {GOLDEN.min_memory_mib} MiB of memory "
            f"({GOLDEN.min_memory_reason})",
            f"hint: pass --memory {GOLDEN.min_memory_mib}M or more",
        ]
        assert box.json("vm", "list") == []
        assert box.leftovers() == [] and box.taps() == []
        assert not box.paths.images_dir.exists() or not any(box.paths.images_dir.iterdir())
