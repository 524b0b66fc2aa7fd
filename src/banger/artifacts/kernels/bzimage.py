"""Extract the ELF `vmlinux` from an x86 bzImage.

Firecracker only boots ELF kernels, and Debian ships bzImages. The x86 boot
protocol (>= 2.08) records where the compressed payload sits, so the normal path
is exact: read `setup_sects`, `payload_offset` and `payload_length`, detect the
codec by magic and decode it. If the header is missing or lies, we fall back to
what the kernel's own `scripts/extract-vmlinux` does: scan for every known magic
and keep the first candidate that decodes to a complete ELF file.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import lz4.block
import zstandard

from banger.artifacts.kernels.codecs import CODECS, Codec, CodecError, detect
from banger.artifacts.kernels.elf import EM_X86_64, ElfError, check_complete, parse_header
from banger.errors import BangerError

_HDR_MAGIC = b"HdrS"
_OFF_SETUP_SECTS = 0x1F1
_OFF_HDR_MAGIC = 0x202
_OFF_VERSION = 0x206
_OFF_PAYLOAD = 0x248  # payload_offset, then payload_length (both u32, protocol 2.08+)
_MIN_PAYLOAD_VERSION = 0x0208
# Upper bound on candidates tried per magic in the scan, so a hostile or odd file
# cannot make us attempt thousands of decodes.
_MAX_SCAN_TRIES = 64

# Everything a decoder may raise on data that merely looks like a stream.
_DECODE_ERRORS: tuple[type[Exception], ...] = (
    CodecError,
    lzma.LZMAError,
    zlib.error,
    OSError,
    EOFError,
    ValueError,
    lz4.block.LZ4BlockError,
    zstandard.ZstdError,
)


class KernelImageError(BangerError):
    code = "kernel_image"
    http_status = 422


@dataclass(frozen=True)
class Extracted:
    vmlinux: bytes
    codec: str  # "none" when the input already was an ELF vmlinux
    method: str  # "header", "scan" or "elf"


@dataclass(frozen=True)
class BootHeader:
    setup_sects: int
    version: int
    payload_offset: int
    payload_length: int

    @property
    def protected_mode_start(self) -> int:
        # setup_sects == 0 means 4 for compatibility with ancient boot loaders.
        return ((self.setup_sects or 4) + 1) * 512


def parse_boot_header(image: bytes) -> BootHeader:
    if len(image) < _OFF_PAYLOAD + 8 or image[_OFF_HDR_MAGIC : _OFF_HDR_MAGIC + 4] != _HDR_MAGIC:
        raise KernelImageError(
            "not an x86 bzImage: the boot header magic 'HdrS' is missing",
            hint="pass a bzImage (vmlinuz) built for x86-64",
        )
    (version,) = struct.unpack_from("<H", image, _OFF_VERSION)
    offset, length = struct.unpack_from("<II", image, _OFF_PAYLOAD)
    if version < _MIN_PAYLOAD_VERSION:
        offset = length = 0  # the fields do not exist before 2.08
    return BootHeader(image[_OFF_SETUP_SECTS], version, offset, length)


def _decode_elf(codec: Codec, data: bytes) -> bytes:
    out = codec.decode(data)
    try:
        check_complete(out)
    except ElfError as exc:
        raise CodecError(f"{codec.name} payload did not decode to a complete ELF: {exc}") from exc
    return out


def _from_header(image: bytes) -> tuple[Extracted | None, str]:
    try:
        hdr = parse_boot_header(image)
    except KernelImageError as exc:
        return None, exc.message
    if hdr.payload_length == 0:
        return None, f"boot protocol {hdr.version >> 8}.{hdr.version & 0xFF} has no payload fields"
    start = hdr.protected_mode_start + hdr.payload_offset
    end = start + hdr.payload_length
    if end > len(image):
        return None, "payload fields point past the end of the file"
    payload = image[start:end]
    codec = detect(payload)
    if codec is None:
        return None, f"unknown compression magic {payload[:6].hex()} at the payload offset"
    try:
        return Extracted(_decode_elf(codec, payload), codec.name, "header"), ""
    except _DECODE_ERRORS as exc:
        return None, f"{codec.name} payload failed to decode: {exc}"


def _scan(image: bytes) -> tuple[Extracted | None, list[str]]:
    tried: list[str] = []
    for codec in CODECS:
        pos, tries = image.find(codec.magic), 0
        while pos >= 0 and tries < _MAX_SCAN_TRIES:
            tries += 1
            try:
                return Extracted(_decode_elf(codec, image[pos:]), codec.name, "scan"), tried
            except _DECODE_ERRORS:
                pass
            pos = image.find(codec.magic, pos + 1)
        if tries:
            tried.append(f"{codec.name} x{tries}")
    return None, tried


def extract_vmlinux(image: bytes) -> Extracted:
    """Return the ELF vmlinux inside `image` (a bzImage, or already a vmlinux)."""
    if image[:4] == b"\x7fELF":
        try:
            check_complete(image)
        except ElfError as exc:
            raise KernelImageError(
                f"the kernel is an ELF file but is damaged: {exc}",
                hint="download the kernel package again",
            ) from exc
        return Extracted(image, "none", "elf")
    found, why = _from_header(image)
    if found is not None:
        return found
    found, tried = _scan(image)
    if found is not None:
        return found
    raise KernelImageError(
        f"could not find a compressed vmlinux in the image ({why}; scanned: "
        f"{', '.join(tried) or 'no known compression magic'})",
        hint="the kernel may use LZO or an unknown format; use a kernel compressed with "
        "gzip, xz, lzma, bzip2, lz4 or zstd",
    )


def extract_vmlinux_file(src: Path, dst: Path) -> Extracted:
    """Extract `src` (bzImage) into `dst` (ELF vmlinux); returns what was found."""
    found = extract_vmlinux(src.read_bytes())
    if parse_header(found.vmlinux).machine != EM_X86_64:
        raise KernelImageError(
            f"{src.name} does not contain an x86-64 kernel", hint="use an amd64 kernel package"
        )
    dst.write_bytes(found.vmlinux)
    return found
