"""Decompressors for the formats Linux uses for its compressed payload.

Each decoder takes the bytes starting at the stream and tolerates trailing data:
the kernel build appends a 4-byte size after most formats, and the fallback scan
hands decoders everything up to the end of the image. Only stdlib, lz4 and
zstandard are used, so no host compression tools are needed.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import lz4.block
import zstandard

# The legacy LZ4 frame (`lz4 -l`), which is what the kernel's Makefile produces:
# a magic, then blocks of <le32 compressed size><raw LZ4 block>, each decoding to
# at most 8 MiB. There is no end marker; the stream ends when the input does.
LZ4_LEGACY_MAGIC = 0x184C2102
_LZ4_LEGACY_BLOCK = 8 << 20

# Hard cap on what we are willing to inflate; a real vmlinux is well below this.
MAX_OUTPUT = 1 << 30


class CodecError(ValueError):
    pass


def _gzip(data: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, MAX_OUTPUT)
    if not d.eof:
        raise CodecError("gzip stream is truncated")
    return out


def _lzma_fmt(fmt: int) -> Callable[[bytes], bytes]:
    def decode(data: bytes) -> bytes:
        d = lzma.LZMADecompressor(format=fmt)
        out = d.decompress(data, MAX_OUTPUT)
        # Legacy .lzma streams written to a pipe may have no end marker; the kernel
        # accepts those, so only xz (which always terminates) must reach eof.
        if fmt == lzma.FORMAT_XZ and not d.eof:
            raise CodecError("xz stream is truncated")
        return out

    return decode


def _bzip2(data: bytes) -> bytes:
    d = bz2.BZ2Decompressor()
    out = d.decompress(data, MAX_OUTPUT)
    if not d.eof:
        raise CodecError("bzip2 stream is truncated")
    return out


def _zstd(data: bytes) -> bytes:
    # Level 22 (what the kernel uses) may pick windows beyond libzstd's default cap.
    d = zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()
    out = d.decompress(data)
    if not d.eof:
        raise CodecError("zstd stream is truncated")
    return bytes(out)


def _lz4_legacy(data: bytes) -> bytes:
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != LZ4_LEGACY_MAGIC:
        raise CodecError("not an LZ4 legacy frame")
    pos, total = 4, 0
    chunks: list[bytes] = []
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if size == LZ4_LEGACY_MAGIC:  # concatenated frames, as the kernel allows
            pos += 4
            continue
        if size == 0 or pos + 4 + size > len(data):
            break  # the appended length, or trailing bytes: the frame has ended
        block = bytes(data[pos + 4 : pos + 4 + size])
        try:
            chunk = lz4.block.decompress(block, uncompressed_size=_LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError:
            if not chunks:
                raise CodecError("LZ4 legacy frame does not decode") from None
            break  # garbage after the last block that happened to look like a size
        chunks.append(chunk)
        total += len(chunk)
        pos += 4 + size
        if total > MAX_OUTPUT:
            raise CodecError("LZ4 output exceeds the size limit")
        if len(chunk) < _LZ4_LEGACY_BLOCK:
            break  # only the last block is short
    if not chunks:
        raise CodecError("LZ4 legacy frame holds no blocks")
    return b"".join(chunks)


def _lzo(data: bytes) -> bytes:
    raise CodecError("LZO is not supported (no Python decoder); use a kernel built with another")


@dataclass(frozen=True)
class Codec:
    name: str
    magic: bytes
    decode: Callable[[bytes], bytes]


# Order matters for the fallback scan: the strong, long magics come first so a
# short, weak one (lzma's 3 bytes) is only tried when nothing better matched.
CODECS: tuple[Codec, ...] = (
    Codec("gzip", b"\x1f\x8b\x08", _gzip),
    Codec("xz", b"\xfd7zXZ\x00", _lzma_fmt(lzma.FORMAT_XZ)),
    Codec("zstd", b"\x28\xb5\x2f\xfd", _zstd),
    Codec("lz4", struct.pack("<I", LZ4_LEGACY_MAGIC), _lz4_legacy),
    Codec("bzip2", b"BZh", _bzip2),
    Codec("lzo", b"\x89LZO", _lzo),
    Codec("lzma", b"\x5d\x00\x00", _lzma_fmt(lzma.FORMAT_ALONE)),
)


def detect(data: bytes) -> Codec | None:
    for codec in CODECS:
        if data.startswith(codec.magic):
            return codec
    return None
