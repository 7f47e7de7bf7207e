"""Load the restorer blob (``restorer.elf``) as a flat image that can be placed at any address.

``restorer_blob/build.py`` links the blob as a position-independent ELF with one loadable
segment at vaddr 0 (``restorer_blob/blob.lds``). Placing it at ``base`` means:

    file                               image (size_bytes, page-rounded)
    +-----------+                      +--------------------------+ base + 0
    | PT_LOAD   | --- p_filesz bytes ->| text, rodata, data       |
    | (vaddr 0) |                      |   8-byte slots patched:  |
    +-----------+                      |   base + addend          |
    | .rela.dyn | -- R_X86_64_RELATIVE |                          |
    | .symtab   | -- name -> offset    +--------------------------+ p_memsz: bss, zeroed
    +-----------+                      +--------------------------+ base + size_bytes

The loader accepts exactly this shape; anything else is :class:`BlobMalformed`:
ELF64, little-endian, x86-64, ``ET_DYN``; PT_LOAD segments from vaddr 0 within
``MAX_BLOB_BYTES``; no PT_INTERP or PT_TLS (the blob has neither a dynamic linker nor TLS);
a ``.symtab`` (entry points are found by name); dynamic relocations of type
R_X86_64_RELATIVE only (R_X86_64_NONE is skipped). Any other type would need a symbol
the blob cannot have, and is refused with :class:`UnsupportedRelocation`.

Parsing (pyelftools) happens once, in :func:`load_blob`; :meth:`Blob.image_at` then only
patches bytes. pyelftools' ``ELFError`` and ``OSError`` do not leave this module.

Prepared at build time: importing pyelftools and parsing take ~25 ms, a large part of a
small restore, for a result that only changes when the blob is rebuilt. So the build
(setup.py, tools/build_inplace.py) runs :func:`write_prepared`, which parses the ELF here,
with every check above, and writes the resulting Blob beside it as JSON::

    restorer.elf.prepared.json   {"format": 1, "elf_bytes": N, "elf_crc32": ..., "image": base64,
                                  "symbols": {name: offset}, "relocations": [[offset, addend]]}

:func:`load_blob` uses it when its ``elf_bytes`` and ``elf_crc32`` are those of the ELF it
would read, and parses the ELF otherwise (no prepared file, a blob rebuilt without it,
another path). A CRC is enough: it guards against a stale file after a rebuild, not against
an attacker, who could as well change the ELF (both are files of the installed package);
and zlib is loaded already, where hashlib would add ~4 ms of OpenSSL start-up.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from pycriu_restore.blob import abi
from pycriu_restore.blob.errors import BlobMalformed, BlobMissing, UnsupportedRelocation

if TYPE_CHECKING:  # pyelftools is imported where an ELF is parsed (see "Prepared at build time")
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

BLOB_FILE_NAME = "restorer.elf"
PREPARED_SUFFIX = ".prepared.json"  # restorer.elf -> restorer.elf.prepared.json
PREPARED_FORMAT = 1

# Bounds on an untrusted file: the real blob is a few KiB.
MAX_BLOB_FILE_BYTES = 16 << 20
MAX_BLOB_BYTES = 16 << 20   # image size, bss included

PAGE_SIZE = abi.BLOB_PAGE_SIZE
ADDRESS_BYTES = 8           # an R_X86_64_RELATIVE slot: one little-endian u64
_U64 = struct.Struct("<Q")

# <elf.h>: the two relocation types the blob may hold (tested against pyelftools' table).
R_X86_64_NONE = 0
R_X86_64_RELATIVE = 8


@dataclass(frozen=True)
class Relocation:
    """One R_X86_64_RELATIVE relocation: the u64 at ``offset`` becomes ``base + addend``."""

    offset: int
    addend: int


@dataclass(frozen=True)
class Blob:
    """The restorer blob, parsed once, ready to be relocated for any page-aligned base.

    ``image`` is the flat memory image for base 0 (relocation slots hold their unrelocated
    link-time values), ``size_bytes`` long, a whole number of pages. ``symbols`` maps each
    function and object name of ``.symtab`` to its offset from the base.
    """

    path: pathlib.Path
    image: bytes
    symbols: Mapping[str, int]
    relocations: tuple[Relocation, ...]

    @property
    def size_bytes(self) -> int:
        """Bytes the blob occupies in memory: its segments, bss included, page-rounded."""
        return len(self.image)

    def entry_offset(self, name: str) -> int:
        """Offset from the base of the symbol ``name`` (an entry point such as restore_task).

        Raises BlobMalformed if the blob has no such symbol: the built blob and this package
        do not match.
        """
        try:
            return self.symbols[name]
        except KeyError:
            raise BlobMalformed(
                self.path, f"no symbol {name!r} in .symtab (found {len(self.symbols)} symbols, "
                f"e.g. {', '.join(sorted(self.symbols)[:5]) or 'none'})") from None

    def image_at(self, base_addr: int) -> bytes:
        """The image with every relocation applied for loading at ``base_addr``.

        base_addr must be page-aligned (blob.lds aligns segments to pages) and the image must
        fit below 2**64. Returns a new bytes object; the Blob is unchanged.
        """
        if base_addr % PAGE_SIZE or base_addr < 0 or base_addr + self.size_bytes > 1 << 64:
            raise AssertionError(
                f"Blob.image_at: base {base_addr:#x} is not a page-aligned address with "
                f"room for {self.size_bytes} bytes")
        image = bytearray(self.image)
        for reloc in self.relocations:
            _U64.pack_into(image, reloc.offset, (base_addr + reloc.addend) % (1 << 64))
        return bytes(image)


def blob_path(directory: pathlib.Path | None = None) -> pathlib.Path:
    """Where the built blob is: ``restorer.elf`` in ``directory`` (default: this package).

    The package build (setup.py) writes it there. Raises BlobMissing if it is not there.
    """
    folder = pathlib.Path(__file__).resolve().parent if directory is None else pathlib.Path(directory)
    path = folder / BLOB_FILE_NAME
    if not path.is_file():
        raise BlobMissing(path, "restorer blob not found: run pip install . to build it "
                          "(in a source tree: python tools/build_inplace.py blob)")
    return path


def load_blob(path: pathlib.Path | None = None, *,
              required_symbols: Iterable[str] = (abi.BLOB_ENTRY_RESTORE_TASK,)) -> Blob:
    """Read and check the blob's ELF file (default: :func:`blob_path`); return a Blob.

    Every check runs here, before anything is mapped anywhere: file size, ELF header,
    segments, symbols (each of ``required_symbols`` must exist) and relocations.
    Raises BlobMissing if the file does not exist, BlobMalformed (or its subclass
    UnsupportedRelocation) if it is not a blob this loader can place.
    """
    path = blob_path() if path is None else pathlib.Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BLOB_FILE_BYTES:
            raise BlobMalformed(path, f"file is {size} bytes, a restorer blob is at most "
                                f"{MAX_BLOB_FILE_BYTES}")
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise BlobMissing(path, "restorer blob not found: run pip install . to build it") from err
    except OSError as err:
        raise BlobMalformed(path, f"cannot read: {err.strerror or err}") from err
    blob = _load_prepared(path, data)
    if blob is None:  # no prepared form for these bytes: parse them (pyelftools)
        blob = _parse_elf(path, data)
    for name in required_symbols:
        blob.entry_offset(name)
    return blob


def prepared_path(elf_path: pathlib.Path) -> pathlib.Path:
    """Where the prepared form of the blob at ``elf_path`` is written and looked for."""
    return elf_path.with_name(elf_path.name + PREPARED_SUFFIX)


def write_prepared(elf_path: pathlib.Path) -> pathlib.Path:
    """Build time: parse the ELF at ``elf_path`` (every check of :func:`load_blob`) and write
    the Blob beside it, tied to the ELF's bytes by their length and CRC-32. Returns the path written.

    Written to a temporary file and renamed, so a reader sees the old file or the new one.
    """
    elf_path = pathlib.Path(elf_path)
    data = elf_path.read_bytes()
    blob = _parse_elf(elf_path, data)
    doc = {"format": PREPARED_FORMAT, "elf_bytes": len(data), "elf_crc32": zlib.crc32(data),
           "image": base64.b64encode(blob.image).decode("ascii"), "symbols": dict(blob.symbols),
           "relocations": [[r.offset, r.addend] for r in blob.relocations]}
    out = prepared_path(elf_path)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return out


def _load_prepared(path: pathlib.Path, data: bytes) -> Blob | None:
    """The Blob from the prepared file beside ``path``, if there is one for exactly these ELF
    bytes; None if there is none or it is for other bytes (the ELF is then parsed).

    The file comes from the package build like the ELF itself, so it is only checked for
    being well-formed and self-consistent (BlobMalformed, naming it, otherwise).
    """
    prepared = prepared_path(path)
    try:
        doc = json.loads(prepared.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise BlobMalformed(prepared, f"cannot read the prepared blob: {err}") from err
    if not isinstance(doc, dict) or (doc.get("elf_bytes"), doc.get("elf_crc32")) != (len(data), zlib.crc32(data)):
        return None  # prepared for another build of the blob
    try:
        if doc["format"] != PREPARED_FORMAT:
            raise ValueError(f"format {doc['format']}, expected {PREPARED_FORMAT}")
        image = base64.b64decode(doc["image"], validate=True)
        symbols = {str(name): int(offset) for name, offset in doc["symbols"].items()}
        relocations = tuple(Relocation(offset=int(o), addend=int(a)) for o, a in doc["relocations"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BlobMalformed(prepared, f"not a prepared blob: {err}") from err
    if not image or len(image) % PAGE_SIZE or len(image) > MAX_BLOB_BYTES:
        raise BlobMalformed(prepared, f"image of {len(image)} bytes, expected whole pages, at most {MAX_BLOB_BYTES}")
    outside = [f"symbol {n} at {v:#x}" for n, v in symbols.items() if not 0 <= v < len(image)]
    outside += [f"relocation at {r.offset:#x}" for r in relocations
                if not 0 <= r.offset <= len(image) - ADDRESS_BYTES]
    if outside:
        raise BlobMalformed(prepared, f"{outside[0]} is outside the {len(image)}-byte image")
    return Blob(path=path, image=image, symbols=MappingProxyType(symbols), relocations=relocations)


def _parse_elf(path: pathlib.Path, data: bytes) -> Blob:
    """Parse the ELF bytes with pyelftools: every check of the module docstring."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        return _parse(path, ELFFile(io.BytesIO(data)))
    except (ELFError, ValueError, KeyError, IndexError, struct.error) as err:
        raise BlobMalformed(path, f"not a valid ELF file: {err}") from err


def _parse(path: pathlib.Path, elf: ELFFile) -> Blob:
    """Check the header, then build the image, the symbol table and the relocation list."""
    header = elf.header
    found = (elf.elfclass, elf.little_endian, header["e_machine"], header["e_type"])
    expected = (64, True, "EM_X86_64", "ET_DYN")
    if found != expected:
        raise BlobMalformed(path, f"ELF class/endianness/machine/type {found}, expected {expected} "
                            "(a 64-bit little-endian x86-64 position-independent ELF)")
    image = _flat_image(path, elf)
    symbols = _symbols(path, elf, len(image))
    relocations = tuple(_relocations(path, elf, len(image)))
    return Blob(path=path, image=bytes(image), symbols=MappingProxyType(symbols),
                relocations=relocations)


def _flat_image(path: pathlib.Path, elf: ELFFile) -> bytearray:
    """Copy every PT_LOAD segment to its vaddr in one zeroed buffer, page-rounded."""
    loads = []
    for segment in elf.iter_segments():
        kind = segment["p_type"]
        if kind in ("PT_INTERP", "PT_TLS"):
            raise BlobMalformed(path, f"has a {kind} segment: the blob must have no dynamic "
                                "linker and no thread-local storage")
        if kind == "PT_LOAD":
            loads.append(segment)
    if not loads:
        raise BlobMalformed(path, "no PT_LOAD segment: nothing to load")
    lowest = min(seg["p_vaddr"] for seg in loads)
    if lowest != 0:
        raise BlobMalformed(path, f"first PT_LOAD at vaddr {lowest:#x}, expected 0 "
                            "(link with restorer_blob/blob.lds)")
    span = max(seg["p_vaddr"] + seg["p_memsz"] for seg in loads)
    size_bytes = -(-span // PAGE_SIZE) * PAGE_SIZE
    if size_bytes > MAX_BLOB_BYTES:
        raise BlobMalformed(path, f"segments span {span} bytes, at most {MAX_BLOB_BYTES} expected")
    image = bytearray(size_bytes)   # zeroed: bss is whatever the file does not cover
    for seg in loads:
        vaddr, filesz, memsz = seg["p_vaddr"], seg["p_filesz"], seg["p_memsz"]
        if filesz > memsz:
            raise BlobMalformed(path, f"PT_LOAD at {vaddr:#x}: p_filesz {filesz} > p_memsz {memsz}")
        data = seg.data()
        if len(data) != filesz:
            raise BlobMalformed(path, f"PT_LOAD at {vaddr:#x}: file holds {len(data)} of its "
                                f"{filesz} bytes (truncated)")
        image[vaddr:vaddr + filesz] = data
    return image


def _symbols(path: pathlib.Path, elf: ELFFile, size_bytes: int) -> dict[str, int]:
    """Name -> offset of every defined function and object in .symtab.

    Global symbols win over local ones of the same name; a name that two local symbols
    share (static functions of two files) is left out, since it names no single place.
    """
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise BlobMalformed(path, "no .symtab: the blob was stripped, its entry points cannot "
                            "be found")
    globals_: dict[str, int] = {}
    locals_: dict[str, int | None] = {}
    for sym in symtab.iter_symbols():
        if sym["st_info"]["type"] not in ("STT_FUNC", "STT_OBJECT") or not sym.name:
            continue
        if sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS"):
            continue
        value = sym["st_value"]
        if value >= size_bytes:
            raise BlobMalformed(path, f"symbol {sym.name!r} at {value:#x}, outside the "
                                f"{size_bytes}-byte image")
        if sym["st_info"]["bind"] == "STB_LOCAL":
            locals_[sym.name] = value if sym.name not in locals_ else None
        else:
            globals_[sym.name] = value
    symbols = {name: value for name, value in locals_.items() if value is not None}
    symbols.update(globals_)
    return symbols


def _relocations(path: pathlib.Path, elf: ELFFile, size_bytes: int) -> Iterable[Relocation]:
    """Yield the RELATIVE relocations of every dynamic (SHF_ALLOC) relocation section.

    Non-allocated relocation sections (from ld --emit-relocs) describe fixups the linker
    already made, and are ignored. Raises UnsupportedRelocation for any type but
    RELATIVE or NONE, BlobMalformed for a REL section or a slot outside the image.
    """
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.enums import ENUM_RELOC_TYPE_x64
    from elftools.elf.relocation import RelocationSection

    reloc_names = {value: name for name, value in ENUM_RELOC_TYPE_x64.items() if name != "_default_"}
    for section in elf.iter_sections():
        if not isinstance(section, RelocationSection) or not section["sh_flags"] & SH_FLAGS.SHF_ALLOC:
            continue
        if not section.is_RELA():
            raise BlobMalformed(path, f"{section.name} is SHT_REL: x86-64 relocations carry "
                                "addends (SHT_RELA)")
        for reloc in section.iter_relocations():
            kind, offset = reloc["r_info_type"], reloc["r_offset"]
            if kind == R_X86_64_NONE:
                continue
            if kind != R_X86_64_RELATIVE or reloc["r_info_sym"] != 0:
                raise UnsupportedRelocation(path, reloc_names.get(kind, f"type {kind}"), offset,
                                            _symbol_name(elf, section, reloc["r_info_sym"]))
            if offset + ADDRESS_BYTES > size_bytes:
                raise BlobMalformed(path, f"R_X86_64_RELATIVE at offset {offset:#x} is outside "
                                    f"the {size_bytes}-byte image")
            yield Relocation(offset=offset, addend=reloc["r_addend"])


def _symbol_name(elf: ELFFile, section: RelocationSection, index: int) -> str | None:
    """Name of symbol ``index`` of the relocation section's symbol table, for messages."""
    if index == 0:
        return None
    try:
        return elf.get_section(section["sh_link"]).get_symbol(index).name or None
    except Exception:  # noqa: BLE001 - a name for a message only; pyelftools raises assorted errors
        return None
