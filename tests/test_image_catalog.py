"""The shipped image catalog and its parser."""

from __future__ import annotations

import pytest

from banger.artifacts.images.catalog import (
    catalog,
    default_image,
    get_spec,
    parse_catalog,
)
from banger.artifacts.images.recipe import RECIPES_DIR
from banger.artifacts.kernels import catalog as kernel_catalog
from banger.errors import BangerError, NotFound


def test_default_is_debian_bookworm() -> None:
    spec = default_image()
    assert spec.name == "debian-bookworm"
    assert spec.kernel == "debian-6.1"
    assert spec.suite == "bookworm"
    assert spec.rootfs_size_mib >= 1024
    assert (RECIPES_DIR / spec.recipe / "recipe.toml").is_file()


def test_every_entry_references_real_kernels_and_recipes() -> None:
    for spec in catalog().values():
        assert spec.kernel in kernel_catalog()
        assert (RECIPES_DIR / spec.recipe / "recipe.toml").is_file()


def test_unknown_image() -> None:
    with pytest.raises(NotFound) as err:
        get_spec("nope")
    assert "debian-bookworm" in err.value.hint


ENTRY = (
    'description="x"\nkernel="k"\nrecipe="r"\nsuite="s"\nmin_memory_mib = 256\n'
    'min_memory_reason = "why"\n'
)


@pytest.mark.parametrize(
    "text",
    [
        f"[images.a]\n{ENTRY}rootfs_size_mib = 1024\n",  # no default
        f"[images.a]\ndefault = true\n{ENTRY}rootfs_size_mib = 1024\n"
        f"[images.b]\ndefault = true\n{ENTRY}rootfs_size_mib = 1024\n",  # two defaults
        f"[images.a]\ndefault = true\n{ENTRY}rootfs_size_mib = 1\n",  # too small
        f"[images.a]\ndefault = true\n{ENTRY}rootfs_size_mib = 1024\nextra = 1\n",
        # a minimum memory under what any VM gets, or none at all
        f"[images.a]\ndefault = true\n{ENTRY.replace('= 256', '= 16')}rootfs_size_mib = 1024\n",
        '[images.a]\ndefault = true\ndescription="x"\nkernel="k"\nrecipe="r"\nsuite="s"\n'
        "rootfs_size_mib = 1024\n",
    ],
)
def test_bad_catalogs_are_refused(text: str) -> None:
    with pytest.raises(BangerError):
        parse_catalog(text)


def test_good_catalog_parses() -> None:
    specs = parse_catalog(f"[images.a]\ndefault = true\n{ENTRY}rootfs_size_mib = 1024\n")
    assert specs["a"].default and specs["a"].rootfs_size_mib == 1024
