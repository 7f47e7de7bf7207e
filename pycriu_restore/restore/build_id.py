"""The GNU build-id of an ELF file: what preflight compares with the id a VMA was dumped with.

CRIU records the build-id of each mapped ELF file at dump and compares it at restore
(criu/files-reg.c get_build_id_32/64). The id is the descriptor of an ``NT_GNU_BUILD_ID``
note, owner ``"GNU"``, in a ``PT_NOTE`` segment (<elf.h>; the gABI "Note Section")::

    ELF header (e_phoff, e_phentsize, e_phnum)
      -> program headers: PT_NOTE (p_offset, p_filesz)
           -> notes, each: u32 namesz, u32 descsz, u32 type, name (padded to 4), desc (padded to 4)

Only these few fields are read, with the struct layouts below, rather than with pyelftools:
a restore reads the build-id of every mapped library, and importing and running pyelftools
for that cost more than the rest of a small restore's checks.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

# <elf.h>
ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
PT_NOTE = 4
NT_GNU_BUILD_ID = 3
GNU_NOTE_NAME = b"GNU\0"
EI_NIDENT = 16

# Elf{32,64}_Ehdr after e_ident: e_phoff, e_phentsize and e_phnum, as (format, offset of
# e_phoff, offset of e_phentsize). Elf{32,64}_Phdr: p_type, and p_offset/p_filesz.
_EHDR = {ELFCLASS32: ("I", 28, 42), ELFCLASS64: ("Q", 32, 54)}
_PHDR = {ELFCLASS32: ("I", 4, 16), ELFCLASS64: ("Q", 8, 32)}  # (word format, p_offset at, p_filesz at)
_NOTE_HEADER_BYTES = 12

# Bounds on what is read from a file that may be anything: a real note segment is a few
# hundred bytes, and a program header table a few dozen entries.
MAX_PHNUM = 4096
MAX_NOTE_SEGMENT_BYTES = 1 << 20


def elf_build_id(path: str) -> bytes | None:
    """The GNU build-id note's descriptor bytes of the ELF file at ``path``; None if it has
    none, is not ELF, or cannot be read (the caller compares, and names the mismatch)."""
    try:
        with open(path, "rb") as f:
            return _build_id(f)
    except (OSError, struct.error, ValueError):
        return None


def _build_id(f: BinaryIO) -> bytes | None:
    ident = f.read(EI_NIDENT)
    if len(ident) < EI_NIDENT or ident[:4] != ELFMAG or ident[4] not in _EHDR:
        return None
    elf_class, order = ident[4], "<" if ident[5] == ELFDATA2LSB else ">"
    word, phoff_at, phentsize_at = _EHDR[elf_class]
    header = f.read(phentsize_at + 4 - EI_NIDENT)
    (phoff,) = struct.unpack_from(order + word, header, phoff_at - EI_NIDENT)
    phentsize, phnum = struct.unpack_from(order + "HH", header, phentsize_at - EI_NIDENT)
    if not 0 < phnum <= MAX_PHNUM:
        return None
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    pword, offset_at, filesz_at = _PHDR[elf_class]
    for i in range(phnum):
        entry = i * phentsize
        (p_type,) = struct.unpack_from(order + "I", table, entry)
        if p_type != PT_NOTE:
            continue
        (p_offset,) = struct.unpack_from(order + pword, table, entry + offset_at)
        (p_filesz,) = struct.unpack_from(order + pword, table, entry + filesz_at)
        if p_filesz > MAX_NOTE_SEGMENT_BYTES:
            continue
        f.seek(p_offset)
        found = _find_in_notes(f.read(p_filesz), order)
        if found is not None:
            return found
    return None


def _find_in_notes(notes: bytes, order: str) -> bytes | None:
    """The descriptor of the first GNU build-id note in one PT_NOTE segment's bytes."""
    at = 0
    while at + _NOTE_HEADER_BYTES <= len(notes):
        namesz, descsz, note_type = struct.unpack_from(order + "III", notes, at)
        name_at = at + _NOTE_HEADER_BYTES
        desc_at = name_at + ((namesz + 3) & ~3)
        end = desc_at + ((descsz + 3) & ~3)
        if desc_at + descsz > len(notes):
            return None
        if note_type == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == GNU_NOTE_NAME:
            return notes[desc_at:desc_at + descsz]
        at = end
    return None
