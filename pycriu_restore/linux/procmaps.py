"""A task's memory map as /proc/PID/maps shows it (proc(5), "/proc/pid/maps").

Each line is::

    7f3a1c000000-7f3a1c021000 rw-p 00000000 00:00 0          [heap]
    start-end                 perms offset  dev   inode      pathname (padded with spaces)

Parsed defensively, as psutil does:

* the pathname is everything after the fifth field and may contain spaces, so the line is
  split at most five times (a name that *begins* with spaces loses them: the padding
  and the name cannot be told apart);
* the kernel writes a newline inside a name as ``\\012`` (seq_file escaping), so a line is
  always one mapping;
* a file unlinked after mapping gets `` (deleted)`` appended: it is removed from ``path``
  and reported as ``deleted`` (a file really named "x (deleted)" is indistinguishable);
* names are bytes decoded with ``os.fsdecode`` (non-UTF-8 names survive round-trips).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pycriu_restore.linux.errors import LinuxError, TaskGone, from_os_error

_DELETED_SUFFIX = " (deleted)"


@dataclass(frozen=True)
class MapEntry:
    """One line of /proc/PID/maps. ``path`` is "" for anonymous memory, "[stack]",
    "[vdso]" ... for special areas, else the file's path."""

    start: int
    end: int
    perms: str          # four characters: r/-, w/-, x/-, p (private) or s (shared)
    offset: int         # file offset in bytes
    dev_major: int
    dev_minor: int
    inode: int
    path: str
    deleted: bool = False

    # Sizes and permission bits, spelled out for callers.
    @property
    def size_bytes(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    def contains(self, addr: int) -> bool:
        """True if ``addr`` lies in [start, end)."""
        return self.start <= addr < self.end


def parse_line(line: str) -> MapEntry:
    """Parse one maps line (without its newline); ``ValueError`` if it is not one."""
    fields = line.split(None, 5)
    if len(fields) < 5:
        raise ValueError(f"{len(fields)} fields, expected at least 5")
    span, perms, offset, dev, inode = fields[:5]
    path = fields[5] if len(fields) == 6 else ""
    start_text, sep, end_text = span.partition("-")
    major_text, sep2, minor_text = dev.partition(":")
    if not sep or not sep2 or len(perms) != 4:
        raise ValueError(f"malformed address range {span!r}, perms {perms!r} or dev {dev!r}")
    deleted = path.endswith(_DELETED_SUFFIX)
    if deleted:
        path = path[: -len(_DELETED_SUFFIX)]
    return MapEntry(int(start_text, 16), int(end_text, 16), perms, int(offset, 16),
                    int(major_text, 16), int(minor_text, 16), int(inode), path, deleted)


def parse_maps(raw: bytes, source: str = "maps") -> list[MapEntry]:
    """Parse the whole content of a maps file; ``source`` names it in errors."""
    entries = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line:
            continue
        try:
            entries.append(parse_line(os.fsdecode(line)))
        except ValueError as err:
            raise LinuxError(f"{source}: line {number} is not a mapping: {err}: "
                             f"{os.fsdecode(line)!r}") from err
    return entries


def read_maps(pid: int) -> list[MapEntry]:
    """Return ``pid``'s mappings in address order, read from /proc/PID/maps.

    The task should be stopped (or the caller must accept a snapshot that may be stale).
    """
    path = f"/proc/{pid}/maps"
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise TaskGone(pid, f"reading {path}", "no such process") from err
    except OSError as err:
        raise from_os_error(err, f"reading {path}", pid) from err
    return parse_maps(raw, path)
