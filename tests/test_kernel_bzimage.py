"""bzImage -> vmlinux: synthetic images for every codec, and the real Debian kernel."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from collections.abc import Callable
from pathlib import Path

import lz4.block
import pytest
import zstandard

from banger.artifacts.kernels import apt
from banger.artifacts.kernels.bzimage import (
    KernelImageError,
    extract_vmlinux,
    extract_vmlinux_file,
    parse_boot_header,
)
from banger.artifacts.kernels.catalog import get_spec
from banger.artifacts.kernels.codecs import LZ4_LEGACY_MAGIC
from banger.artifacts.kernels.elf import EM_X86_64, parse_header
from banger.errors import BangerError
from banger.system import find_tool


def fake_vmlinux(body_size: int = 200_000) -> bytes:
    """A minimal but complete ELF64 x86-64 executable: one PT_LOAD covering the file."""
    pattern = bytes((i * 7 + i // 251) % 256 for i in range(4096))
    body = (pattern * (body_size // len(pattern) + 1))[:body_size]
    ehdr_size, phdr_size = 64, 56
    total = ehdr_size + phdr_size + len(body)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, EM_X86_64, 1, 0x1000000, 64, 0, 0, 64, phdr_size, 1, 64, 0, 0
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x1000000, 0x1000000, total, total, 0x200000)
    return ehdr + phdr + body


def lz4_legacy(data: bytes) -> bytes:
    """What `lz4 -l` (the kernel's Makefile) writes: magic, then <size><block>..."""
    out = [struct.pack("<I", LZ4_LEGACY_MAGIC)]
    block = 8 << 20
    for i in range(0, len(data), block):
        c = lz4.block.compress(data[i : i + block], store_size=False)
        out.append(struct.pack("<I", len(c)) + c)
    return b"".join(out)


def lzma_alone(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_ALONE)


def xz_kernel(data: bytes) -> bytes:
    # Like the kernel's `xz --check=crc32 --x86 --lzma2`, BCJ filter included.
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)


CODECS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "xz": xz_kernel,
    "lzma": lzma_alone,
    "bzip2": bz2.compress,
    "lz4": lz4_legacy,
    "zstd": lambda d: zstandard.ZstdCompressor(level=19).compress(d),
}


def fake_bzimage(payload: bytes, *, setup_sects: int = 3, fields: bool = True) -> bytes:
    """Real-mode setup + a protected-mode part holding a stub, then the payload.

    The kernel build appends the uncompressed size after non-gzip payloads; we
    append 4 bytes for every codec so decoders must cope with trailing data.
    """
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    stub = b"\x90" * 700  # stands in for the decompressor code before the payload
    payload = payload + struct.pack("<I", 12345)
    if fields:
        struct.pack_into("<II", setup, 0x248, len(stub), len(payload))
    return bytes(setup) + stub + payload + b"\0" * 300


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_header_path_each_codec(codec: str) -> None:
    elf = fake_vmlinux()
    found = extract_vmlinux(fake_bzimage(CODECS[codec](elf)))
    assert found.vmlinux == elf
    assert (found.codec, found.method) == (codec, "header")


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_scan_fallback_when_payload_fields_are_missing(codec: str) -> None:
    elf = fake_vmlinux()
    found = extract_vmlinux(fake_bzimage(CODECS[codec](elf), fields=False))
    assert found.vmlinux == elf
    assert (found.codec, found.method) == (codec, "scan")


def test_lz4_legacy_multi_block_and_setup_sects_zero() -> None:
    # Legacy frames use fixed 8 MiB blocks, only the last one short: go past one.
    elf = fake_vmlinux(9 << 20)
    # setup_sects == 0 means 4 (boot protocol compatibility rule).
    image = fake_bzimage(lz4_legacy(elf), setup_sects=0)
    assert parse_boot_header(image).protected_mode_start == 5 * 512
    found = extract_vmlinux(image)
    assert (found.vmlinux, found.method) == (elf, "header")


def test_header_pointing_elsewhere_falls_back_to_scan() -> None:
    elf = fake_vmlinux()
    image = bytearray(fake_bzimage(gzip.compress(elf)))
    struct.pack_into("<I", image, 0x248, 3)  # payload_offset off by a few bytes
    found = extract_vmlinux(bytes(image))
    assert (found.vmlinux, found.method) == (elf, "scan")


def test_decoy_magic_before_the_real_payload_is_skipped() -> None:
    elf = fake_vmlinux()
    decoy = b"\x1f\x8b\x08" + b"not really gzip" * 10
    image = fake_bzimage(decoy + gzip.compress(elf), fields=False)
    assert extract_vmlinux(image).vmlinux == elf


def test_truncated_payload_is_rejected() -> None:
    elf = fake_vmlinux()
    # A payload that decodes fine but to only half the ELF: must not be accepted.
    payload = zstandard.ZstdCompressor().compress(elf[: len(elf) // 2])
    with pytest.raises(KernelImageError, match="could not find a compressed vmlinux"):
        extract_vmlinux(fake_bzimage(payload))


def test_not_a_kernel() -> None:
    with pytest.raises(KernelImageError) as info:
        extract_vmlinux(b"\0" * 4096)
    assert "HdrS" in info.value.message
    assert info.value.hint


def test_lzo_is_reported_with_a_hint() -> None:
    with pytest.raises(KernelImageError) as info:
        extract_vmlinux(fake_bzimage(b"\x89LZO\0\r\n\x1a\n" + b"x" * 100))
    assert "LZO" in info.value.hint


def test_elf_input_passes_through(tmp_path: Path) -> None:
    elf = fake_vmlinux()
    (tmp_path / "vmlinux").write_bytes(elf)
    found = extract_vmlinux_file(tmp_path / "vmlinux", tmp_path / "out")
    assert (found.codec, found.method) == ("none", "elf")
    assert (tmp_path / "out").read_bytes() == elf


@pytest.fixture(scope="module")
def debian_vmlinuz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bzImage from Debian's cloud kernel package, fetched with the host's apt."""
    if find_tool("apt-get") is None or find_tool("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb are not installed")
    try:
        pkg = apt.resolve(get_spec("debian-6.1"))
    except BangerError as exc:
        pytest.skip(f"apt cannot resolve the Debian kernel package: {exc.message}")
    root = apt.unpack(pkg, tmp_path_factory.mktemp("deb"))
    (image,) = (root / "boot").glob("vmlinuz-*")
    return image


def test_real_debian_kernel(debian_vmlinuz: Path, tmp_path: Path) -> None:
    image = debian_vmlinuz.read_bytes()
    hdr = parse_boot_header(image)
    assert hdr.version >= 0x0208 and hdr.payload_length > 0
    found = extract_vmlinux_file(debian_vmlinuz, tmp_path / "vmlinux")
    assert found.method == "header"
    assert found.codec == "lz4"  # bookworm's CONFIG_KERNEL_LZ4=y
    elf = parse_header(found.vmlinux)
    assert elf.is64 and elf.machine == EM_X86_64 and elf.etype == 2
    # The scan (the path for images with broken headers) finds the same kernel.
    blanked = bytearray(image)
    blanked[0x248:0x250] = bytes(8)
    assert extract_vmlinux(bytes(blanked)).vmlinux == found.vmlinux
