"""/proc/PID/maps parsing: real maps of this process, and the awkward lines of proc(5)."""

from __future__ import annotations

import mmap
import os

import pytest

from pycriu_restore.linux.errors import LinuxError, TaskGone
from pycriu_restore.linux.procmaps import parse_line, parse_maps, read_maps


def test_path_with_spaces_and_deleted_suffix() -> None:
    line = "7f0000001000-7f0000003000 r-xs 00002000 fd:01 123456     /tmp/a b  c (deleted)"
    entry = parse_line(line)
    assert (entry.start, entry.end, entry.size_bytes) == (0x7F0000001000, 0x7F0000003000,
                                                          0x2000)
    assert entry.perms == "r-xs" and entry.readable and entry.executable and entry.shared
    assert not entry.writable
    assert (entry.offset, entry.dev_major, entry.dev_minor, entry.inode) == (0x2000, 0xFD, 1,
                                                                             123456)
    assert entry.path == "/tmp/a b  c"
    assert entry.deleted


def test_anonymous_and_special_lines() -> None:
    raw = (b"55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0 \n"
           b"7ffd1c9e7000-7ffd1ca08000 rw-p 00000000 00:00 0                          [stack]\n"
           b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0     [vsyscall]\n")
    anon, stack, vsyscall = parse_maps(raw)
    assert anon.path == "" and not anon.deleted
    assert stack.path == "[stack]" and stack.contains(0x7FFD1C9E7000)
    assert not stack.contains(0x7FFD1CA08000)
    assert vsyscall.start == 0xFFFFFFFFFF600000 and vsyscall.perms == "--xp"


def test_non_utf8_path_survives() -> None:
    raw = b"1000-2000 r--p 00000000 08:01 7 /tmp/\xff name\n"
    (entry,) = parse_maps(raw)
    assert os.fsencode(entry.path) == b"/tmp/\xff name"


def test_malformed_line_names_source_and_line() -> None:
    raw = b"1000-2000 r--p 00000000 08:01 7 /x\nnot a maps line\n"
    with pytest.raises(LinuxError, match=r"/proc/1/maps: line 2 is not a mapping"):
        parse_maps(raw, "/proc/1/maps")


def test_read_maps_of_self_sees_a_fresh_mapping(tmp_path) -> None:
    path = tmp_path / "file with spaces"
    path.write_bytes(b"x" * mmap.PAGESIZE)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), mmap.PAGESIZE, prot=mmap.PROT_READ)
    try:
        entries = read_maps(os.getpid())
    finally:
        mapping.close()
    mine = [e for e in entries if e.path == str(path)]
    assert len(mine) == 1
    assert mine[0].perms == "r--s" and mine[0].size_bytes == mmap.PAGESIZE
    assert mine[0].inode == os.stat(path).st_ino
    starts = [e.start for e in entries]
    assert starts == sorted(starts)
    assert any(e.path == "[stack]" for e in entries)


def test_read_maps_of_missing_task() -> None:
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    with pytest.raises(TaskGone, match=rf"task {pid_max} is gone"):
        read_maps(pid_max)   # pids are always below pid_max
