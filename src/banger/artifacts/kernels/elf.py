"""Just enough ELF parsing for kernels and modules: header checks and named sections.

We read ELF ourselves instead of calling readelf/objcopy so kernel pulls need no
binutils on the host, and so the checks are exact (class, machine, not truncated).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
_PT_INTERP = 3


class ElfError(ValueError):
    """The bytes are not a well-formed ELF file of the kind we need."""


@dataclass(frozen=True)
class ElfHeader:
    is64: bool
    little: bool
    etype: int
    machine: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int

    @property
    def endian(self) -> str:
        return "<" if self.little else ">"


def parse_header(data: bytes) -> ElfHeader:
    if len(data) < 52 or data[:4] != ELF_MAGIC:
        raise ElfError("missing ELF magic")
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise ElfError(f"bad ELF ident (class {ei_class}, data {ei_data})")
    is64, little = ei_class == 2, ei_data == 1
    e = "<" if little else ">"
    if is64:
        if len(data) < 64:
            raise ElfError("truncated ELF header")
        etype, machine = struct.unpack_from(e + "HH", data, 16)
        phoff, shoff = struct.unpack_from(e + "QQ", data, 32)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(e + "5H", data, 54)
    else:
        etype, machine = struct.unpack_from(e + "HH", data, 16)
        phoff, shoff = struct.unpack_from(e + "II", data, 28)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(e + "5H", data, 42)
    return ElfHeader(
        is64, little, etype, machine, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx
    )


@dataclass(frozen=True)
class Segment:
    ptype: int
    offset: int
    filesz: int


@dataclass(frozen=True)
class Section:
    name: str
    offset: int
    size: int
    stype: int


_SHT_NOBITS = 8


def segments(data: bytes, hdr: ElfHeader | None = None) -> list[Segment]:
    hdr = hdr or parse_header(data)
    out = []
    for i in range(hdr.phnum):
        off = hdr.phoff + i * hdr.phentsize
        if off + hdr.phentsize > len(data):
            raise ElfError("program header table runs past the end of the file")
        if hdr.is64:
            ptype, _flags, p_offset, _va, _pa, filesz = struct.unpack_from(
                hdr.endian + "IIQQQQ", data, off
            )
        else:
            ptype, p_offset, _va, _pa, filesz = struct.unpack_from(hdr.endian + "5I", data, off)
        out.append(Segment(ptype, p_offset, filesz))
    return out


def sections(data: bytes, hdr: ElfHeader | None = None) -> list[Section]:
    hdr = hdr or parse_header(data)
    if hdr.shnum == 0:
        return []
    if hdr.shoff + hdr.shnum * hdr.shentsize > len(data):
        raise ElfError("section header table runs past the end of the file")
    raw = []
    for i in range(hdr.shnum):
        off = hdr.shoff + i * hdr.shentsize
        if hdr.is64:
            name, stype, _fl, _addr, s_off, size = struct.unpack_from(
                hdr.endian + "IIQQQQ", data, off
            )
        else:
            name, stype, _fl, _addr, s_off, size = struct.unpack_from(hdr.endian + "6I", data, off)
        raw.append((name, stype, s_off, size))
    if hdr.shstrndx >= len(raw):
        raise ElfError("section name table index out of range")
    _, _, str_off, str_size = raw[hdr.shstrndx]
    strtab = data[str_off : str_off + str_size]
    out = []
    for name_off, stype, s_off, size in raw:
        end = strtab.find(b"\0", name_off)
        name = strtab[name_off : end if end >= 0 else None].decode(errors="replace")
        if stype != _SHT_NOBITS and s_off + size > len(data):
            raise ElfError(f"section {name!r} runs past the end of the file")
        out.append(Section(name, s_off, size, stype))
    return out


def section_bytes(data: bytes, name: str) -> bytes | None:
    for s in sections(data):
        if s.name == name:
            return data[s.offset : s.offset + s.size]
    return None


def check_complete(data: bytes) -> ElfHeader:
    """Parse the header and prove every segment and section lies inside `data`.

    A decompressor that stopped early still yields bytes starting with the ELF
    magic; this catches that truncation instead of shipping a kernel that fails
    to boot much later.
    """
    hdr = parse_header(data)
    for seg in segments(data, hdr):
        if seg.offset + seg.filesz > len(data):
            raise ElfError("a program segment runs past the end of the file (truncated?)")
    sections(data, hdr)
    return hdr


def is_static(data: bytes) -> bool:
    """True when the executable has no program interpreter (statically linked)."""
    return all(seg.ptype != _PT_INTERP for seg in segments(data))
