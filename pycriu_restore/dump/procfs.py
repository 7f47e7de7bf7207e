"""What a checkpoint reads about a task from /proc (proc(5)), parsed defensively.

Each reader returns plain values and raises :class:`~pycriu_restore.dump.errors.DumpError`
naming the file when the kernel's text is not what proc(5) describes. The task should be
in a ptrace-stop, so that what is read here does not change between reads.

    stat       split at the *last* ")": comm may hold spaces and parentheses (proc(5),
               /proc/pid/stat; psutil does the same)
    status     "Key:\\tvalue" lines: ids, capabilities, signal masks, Umask, Seccomp
    smaps      a maps line, then "Key: value" lines, the last of them "VmFlags: rd wr ..."
    fdinfo/N   "pos:", "flags:" (octal, open(2) flags), "mnt_id:", "ino:"
    auxv       the auxiliary vector, (u64 key, u64 value) pairs, AT_NULL last
    pagemap    one u64 per page (Documentation/admin-guide/mm/pagemap.rst)
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from pycriu_restore.dump.errors import DumpError
from pycriu_restore.linux.procmaps import MapEntry, parse_line

# /proc/PID/stat field numbers (proc(5), 1-based as the man page counts them).
STAT_STATE, STAT_PPID, STAT_PGRP, STAT_SESSION = 3, 4, 5, 6
STAT_FLAGS = 9
STAT_NUM_THREADS = 20
STAT_STARTCODE, STAT_ENDCODE, STAT_STARTSTACK = 26, 27, 28
STAT_START_DATA, STAT_END_DATA, STAT_START_BRK = 45, 46, 47
STAT_ARG_START, STAT_ARG_END, STAT_ENV_START, STAT_ENV_END = 48, 49, 50, 51
_FIRST_FIELD_AFTER_COMM = 3   # field 3 (state) is the first after ") "

# Documentation/admin-guide/mm/pagemap.rst: the bits of one /proc/PID/pagemap entry.
PME_PFN_MASK = (1 << 55) - 1
PME_SOFT_DIRTY = 1 << 55
PME_FILE = 1 << 61          # file page or shared anonymous
PME_SWAP = 1 << 62
PME_PRESENT = 1 << 63
PAGEMAP_ENTRY_BYTES = 8

_AUXV_PAIR = struct.Struct("<QQ")


def _read(path: str) -> bytes:
    """The bytes of one /proc file; a missing task or file raises DumpError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DumpError(f"{path}: cannot read: {err.strerror or err}") from err


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat a checkpoint needs (proc(5) names them)."""

    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    flags: int
    num_threads: int
    start_code: int
    end_code: int
    start_stack: int
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int


def read_stat(pid: int) -> ProcStat:
    """Parse /proc/PID/stat. comm is what lies between the first "(" and the last ")"."""
    path = f"/proc/{pid}/stat"
    text = _read(path).decode("utf-8", "surrogateescape")
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 0 or close_at < open_at:
        raise DumpError(f"{path}: no (comm) in {text[:80]!r}")
    rest = text[close_at + 2:].split()

    def field(number: int) -> str:
        index = number - _FIRST_FIELD_AFTER_COMM
        if index >= len(rest):
            raise DumpError(f"{path}: has {len(rest) + 2} fields, expected at least {number}")
        return rest[index]

    def num(number: int) -> int:
        return int(field(number))

    return ProcStat(
        comm=text[open_at + 1:close_at], state=field(STAT_STATE), ppid=num(STAT_PPID),
        pgrp=num(STAT_PGRP), session=num(STAT_SESSION), flags=num(STAT_FLAGS),
        num_threads=num(STAT_NUM_THREADS), start_code=num(STAT_STARTCODE),
        end_code=num(STAT_ENDCODE), start_stack=num(STAT_STARTSTACK),
        start_data=num(STAT_START_DATA), end_data=num(STAT_END_DATA),
        start_brk=num(STAT_START_BRK), arg_start=num(STAT_ARG_START), arg_end=num(STAT_ARG_END),
        env_start=num(STAT_ENV_START), env_end=num(STAT_ENV_END))


def read_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as {"Uid": "0\\t0\\t0\\t0", "CapEff": "000001ffffffffff", ...}."""
    path = f"/proc/{pid}/status"
    fields: dict[str, str] = {}
    for line in _read(path).decode("utf-8", "surrogateescape").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def status_ints(status: dict[str, str], key: str, pid: int, *, base: int = 10) -> list[int]:
    """The numbers of one status line ("Uid" -> [r, e, s, fs]); DumpError if it is absent."""
    if key not in status:
        raise DumpError(f"/proc/{pid}/status: no {key} line")
    try:
        return [int(word, base) for word in status[key].split()]
    except ValueError as err:
        raise DumpError(f"/proc/{pid}/status: {key} is {status[key]!r}, expected numbers") from err


def read_text_int(path: str, *, base: int = 10) -> int:
    """A /proc file that holds one number (oom_score_adj, loginuid, personality in hex)."""
    text = _read(path).decode().strip()
    try:
        return int(text, base)
    except ValueError as err:
        raise DumpError(f"{path}: {text!r} is not a number") from err


@dataclass(frozen=True)
class SmapsEntry:
    """One mapping of /proc/PID/smaps: its maps line and its VmFlags two-letter codes."""

    mapping: MapEntry
    vm_flags: tuple[str, ...]


def read_smaps(pid: int) -> list[SmapsEntry]:
    """Parse /proc/PID/smaps into mappings in address order, each with its VmFlags."""
    path = f"/proc/{pid}/smaps"
    entries: list[SmapsEntry] = []
    current: MapEntry | None = None
    for number, raw in enumerate(_read(path).split(b"\n"), start=1):
        line = os.fsdecode(raw)
        if not line:
            continue
        head = line.split(" ", 1)[0]
        if "-" in head and not head.endswith(":"):   # "7f..-7f.. rw-p ...": a new mapping
            if current is not None:
                entries.append(SmapsEntry(current, ()))
            try:
                current = parse_line(line)
            except ValueError as err:
                raise DumpError(f"{path}: line {number} is not a mapping: {err}") from err
        elif line.startswith("VmFlags:"):
            if current is None:
                raise DumpError(f"{path}: line {number}: VmFlags before any mapping")
            entries.append(SmapsEntry(current, tuple(line[len("VmFlags:"):].split())))
            current = None
    if current is not None:
        entries.append(SmapsEntry(current, ()))
    return entries


def read_auxv(pid: int) -> list[int]:
    """/proc/PID/auxv as a flat list of u64 words (key, value, key, value ...)."""
    path = f"/proc/{pid}/auxv"
    raw = _read(path)
    if len(raw) % _AUXV_PAIR.size:
        raise DumpError(f"{path}: {len(raw)} bytes, not a whole number of "
                        f"{_AUXV_PAIR.size}-byte pairs")
    return [word for pair in _AUXV_PAIR.iter_unpack(raw) for word in pair]


@dataclass(frozen=True)
class FdInfo:
    """/proc/PID/fdinfo/FD: the file position and the open(2) flags (O_CLOEXEC included)."""

    pos: int
    flags: int
    mnt_id: int


def read_fdinfo(pid: int, fd: int) -> FdInfo:
    """Parse /proc/PID/fdinfo/FD ("flags:" is octal, the others decimal)."""
    path = f"/proc/{pid}/fdinfo/{fd}"
    fields = {}
    for line in _read(path).decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        return FdInfo(pos=int(fields["pos"]), flags=int(fields["flags"], 8),
                      mnt_id=int(fields.get("mnt_id", "-1")))
    except (KeyError, ValueError) as err:
        raise DumpError(f"{path}: no valid pos/flags lines in {fields}") from err


def list_fds(pid: int) -> list[int]:
    """The task's open file descriptors, ascending (the names in /proc/PID/fd)."""
    path = f"/proc/{pid}/fd"
    try:
        return sorted(int(name) for name in os.listdir(path))
    except OSError as err:
        raise DumpError(f"{path}: cannot list: {err.strerror or err}") from err


def read_pagemap(pid: int, start: int, end: int, page_bytes: int) -> list[int]:
    """The pagemap entries of the pages of [start, end), one u64 per page."""
    path = f"/proc/{pid}/pagemap"
    nr_pages = (end - start) // page_bytes
    try:
        with open(path, "rb") as f:
            f.seek(start // page_bytes * PAGEMAP_ENTRY_BYTES)
            raw = f.read(nr_pages * PAGEMAP_ENTRY_BYTES)
    except OSError as err:
        raise DumpError(f"{path}: cannot read entries for {start:#x}-{end:#x}: "
                        f"{err.strerror or err}") from err
    if len(raw) != nr_pages * PAGEMAP_ENTRY_BYTES:
        raise DumpError(f"{path}: {len(raw)} bytes for {start:#x}-{end:#x}, expected "
                        f"{nr_pages * PAGEMAP_ENTRY_BYTES}")
    return list(struct.unpack(f"<{nr_pages}Q", raw))
