"""Module dependency ordering from `.modinfo`, on synthetic module trees."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest
import zstandard

from banger.artifacts.kernels.modules import ModuleError, ModuleTree, depends, load_order, modinfo


def fake_ko(name: str, deps: list[str], big_endian: bool = False) -> bytes:
    """An ELF64 relocatable with just .modinfo and .shstrtab, like a tiny .ko."""
    e = ">" if big_endian else "<"
    info = b"\0".join(
        s.encode() for s in ("license=GPL", f"depends={','.join(deps)}", f"name={name}", "")
    )
    shstr = b"\0.modinfo\0.shstrtab\0"
    info_off = 64
    shstr_off = info_off + len(info)
    shoff = (shstr_off + len(shstr) + 7) & ~7
    ident = b"\x7fELF" + bytes([2, 2 if big_endian else 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack(e + "HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = ehdr + info + shstr
    body += bytes(shoff - len(body))
    sh = bytes(64)  # SHN_UNDEF
    sh += struct.pack(e + "IIQQQQIIQQ", 1, 1, 2, 0, info_off, len(info), 0, 0, 1, 0)
    sh += struct.pack(e + "IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    return body + sh


def make_tree(root: Path, mods: dict[str, list[str]], builtin: tuple[str, ...] = ()) -> Path:
    rel = root / "lib/modules/6.1.0-test"
    for i, (name, deps) in enumerate(mods.items()):
        sub = rel / "kernel" / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{name}.ko").write_bytes(fake_ko(name, deps))
    (rel / "modules.builtin").write_text("".join(f"kernel/x/{b}.ko\n" for b in builtin))
    return rel


def test_modinfo_roundtrip_both_endians() -> None:
    for big in (False, True):
        elf = fake_ko("virtio_blk", ["virtio", "virtio_ring"], big_endian=big)
        assert modinfo(elf)["name"] == ["virtio_blk"]
        assert depends(elf) == ["virtio", "virtio_ring"]
    assert depends(fake_ko("virtio_ring", [])) == []


def test_order_puts_dependencies_first_and_keeps_request_order(tmp_path: Path) -> None:
    rel = make_tree(
        tmp_path,
        {
            "virtio_blk": ["virtio", "virtio_ring"],
            "virtio": ["virtio_ring"],
            "virtio_ring": [],
            "virtio_mmio": ["virtio", "virtio_ring"],
            "virtio_net": ["virtio_ring", "virtio", "net_failover"],
            "net_failover": ["failover"],
            "failover": [],
            "unused": [],
        },
    )
    order = ModuleTree.scan(rel).load_order(["virtio_mmio", "virtio_blk", "virtio_net"])
    assert order == [
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "virtio_blk",
        "failover",
        "net_failover",
        "virtio_net",
    ]


def test_builtin_modules_are_skipped(tmp_path: Path) -> None:
    rel = make_tree(
        tmp_path, {"jbd2_user": ["jbd2", "crc32c_generic"]}, ("ext4", "jbd2", "crc32c_generic")
    )
    assert ModuleTree.scan(rel).load_order(["ext4", "jbd2_user"]) == ["jbd2_user"]


def test_hyphenated_file_names_and_compressed_modules(tmp_path: Path) -> None:
    rel = tmp_path / "lib/modules/6.1.0-test/kernel"
    rel.mkdir(parents=True)
    (rel / "virtio-rng.ko.xz").write_bytes(lzma.compress(fake_ko("virtio_rng", ["virtio"])))
    (rel / "virtio.ko.zst").write_bytes(
        zstandard.ZstdCompressor().compress(fake_ko("virtio", ["virtio_ring"]))
    )
    (rel / "virtio_ring.ko").write_bytes(fake_ko("virtio_ring", []))
    tree = ModuleTree.scan(rel.parent)
    assert tree.load_order(["virtio-rng"]) == ["virtio_ring", "virtio", "virtio_rng"]


def test_unknown_module_names_the_catalog(tmp_path: Path) -> None:
    rel = make_tree(tmp_path, {"a": ["missing_dep"]})
    with pytest.raises(ModuleError, match="missing_dep") as info:
        ModuleTree.scan(rel).load_order(["a"])
    assert "kernels.toml" in info.value.hint


def test_cycle_is_reported() -> None:
    with pytest.raises(ModuleError, match="a -> b -> a"):
        load_order(["a"], {"a": ["b"], "b": ["a"]})


def test_pure_ordering_is_stable() -> None:
    graph = {"x": ["z", "y"], "y": ["z"], "z": []}
    assert load_order(["x"], graph) == ["z", "y", "x"]
    assert load_order(["y", "x", "y"], graph) == ["z", "y", "x"]
    assert load_order(["x"], graph, builtin=["z"]) == ["y", "x"]


def test_damaged_module_is_a_clear_error(tmp_path: Path) -> None:
    rel = make_tree(tmp_path, {"a": []})
    next(rel.rglob("a.ko")).write_bytes(b"\x7fELF garbage")
    with pytest.raises(ModuleError, match=r"cannot read the dependencies of a\.ko"):
        ModuleTree.scan(rel).load_order(["a"])


def test_missing_tree(tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match="does not exist"):
        ModuleTree.scan(tmp_path / "nope")
