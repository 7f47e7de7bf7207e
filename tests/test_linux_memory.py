"""Reading and writing another process's memory: process_vm_readv/writev and /proc/PID/mem.

A forked child maps, through libc, one writable page followed by a hole (an unmapped page)
and one read-only page, sends the addresses and waits; the test works on its memory.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
from collections.abc import Iterator

import pytest

from pycriu_restore.linux import memory, ptrace
from pycriu_restore.linux.errors import MemoryAccessFailed, TaskGone

PAGE = mmap.PAGESIZE


def _child_body(report_fd: int, wait_fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    anon = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    base = libc.mmap(None, 3 * PAGE, rw, anon, -1, 0)
    libc.munmap(ctypes.c_void_p(base + PAGE), PAGE)                   # the hole
    ctypes.memset(base + 2 * PAGE, ord("R"), PAGE)
    libc.mprotect(ctypes.c_void_p(base + 2 * PAGE), PAGE, mmap.PROT_READ)
    os.write(report_fd, struct.pack("<Q", base))
    os.read(wait_fd, 1)


@pytest.fixture
def child() -> Iterator[tuple[int, int]]:
    """(pid, base): base is rw, base+PAGE unmapped, base+2*PAGE read-only ('R' bytes)."""
    report_r, report_w = os.pipe()
    wait_r, wait_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _child_body(report_w, wait_r)
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(wait_r)
    try:
        (base,) = struct.unpack("<Q", os.read(report_r, 8))
        # Become its tracer so that /proc/PID/mem may force writes on any kernel config.
        ptrace.seize(pid, ptrace.PTRACE_O_EXITKILL)
        yield pid, base
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(report_r)
        os.close(wait_w)
        assert not os.path.exists(f"/proc/{pid}"), f"child {pid} left behind"


def test_write_then_read_round_trip(child: tuple[int, int]) -> None:
    pid, base = child
    data = os.urandom(PAGE - 8)
    memory.write(pid, base + 8, data)
    assert memory.read(pid, base + 8, len(data)) == data
    out = bytearray(16)
    memory.read_into(pid, base + 8, memoryview(out))
    assert bytes(out) == data[:16]


def test_write_pieces_writes_every_piece(child: tuple[int, int]) -> None:
    pid, base = child
    memory.write_pieces(pid, [(base, b"first"), (base + 100, bytearray(b"second")),
                              (base + 200, memoryview(b"third"))])
    assert memory.read(pid, base, 5) == b"first"
    assert memory.read(pid, base + 100, 6) == b"second"
    assert memory.read(pid, base + 200, 5) == b"third"


def test_partial_write_stops_at_the_hole(child: tuple[int, int]) -> None:
    pid, base = child
    start = base + PAGE - 10
    with pytest.raises(MemoryAccessFailed) as info:
        memory.write(pid, start, b"A" * 30)
    err = info.value
    assert err.done_bytes == 10 and err.failed_addr == base + PAGE
    assert err.errno == errno.EFAULT and err.pid == pid
    assert f"at {base + PAGE:#x}" in str(err)
    assert memory.read(pid, start, 10) == b"A" * 10   # the part before the hole landed


def test_read_only_page_needs_proc_mem(child: tuple[int, int]) -> None:
    pid, base = child
    ro = base + 2 * PAGE
    with pytest.raises(MemoryAccessFailed) as info:
        memory.write(pid, ro, b"xyz")
    assert info.value.done_bytes == 0 and info.value.errno == errno.EFAULT
    memory.proc_mem_write(pid, ro + 1, b"xyz")
    assert memory.read(pid, ro, 5) == b"Rxyz" + b"R"
    assert memory.proc_mem_read(pid, ro, 5) == b"Rxyz" + b"R"


def test_proc_mem_on_the_hole_fails_with_the_address(child: tuple[int, int]) -> None:
    pid, base = child
    with pytest.raises(MemoryAccessFailed) as info:
        memory.proc_mem_read(pid, base + PAGE, 16)
    assert info.value.errno == errno.EIO and info.value.failed_addr == base + PAGE
    with pytest.raises(MemoryAccessFailed):
        memory.proc_mem_write(pid, base + PAGE, b"x")


def test_dead_task_is_task_gone() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(TaskGone, match=rf"task {pid} is gone"):
        memory.read(pid, 0x10000, 8)
    with pytest.raises(TaskGone):
        memory.proc_mem_write(pid, 0x10000, b"x")
