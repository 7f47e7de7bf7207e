"""Another task's memory: ``process_vm_readv/writev`` and the ``/proc/PID/mem`` path.

Two ways in, chosen by the protection of the target pages (spike §1, kernel 6.18):

* ``process_vm_writev``: the fast path (4.2-4.8 GB/s to resident pages). It honours page
  protections, so it fails with EFAULT on read-only or r-x pages.
* ``pwrite`` on ``/proc/PID/mem``: slower (about 3 GB/s) but writes through protections
  (FOLL_FORCE; allowed for the tracer, and for anyone with CONFIG_PROC_MEM_ALWAYS_FORCE).
  Used for code patches (the injected ``syscall`` instruction) and as the fallback.

Neither needs the task stopped, but the caller should stop it (or own the memory layout),
or the target can change under the copy. Partial transfers are resumed until every byte
is moved or the kernel makes no progress; the error then names the first address that
could not be reached.

Buffers are passed to the kernel by address, without copying (``bytes`` through
``c_char_p``, writable buffers through ``from_buffer``).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pycriu_restore.linux.errors import MemoryAccessFailed, TaskGone, from_os_error
from pycriu_restore.linux.libc import Iovec, libc_function

# What the functions below accept as data: anything exposing the buffer protocol as bytes.
Buffer = bytes | bytearray | memoryview

# <limits.h> IOV_MAX (the kernel's UIO_MAXIOV): iovec entries accepted per call.
IOV_MAX = 1024
# <asm-generic/mman.h>: MAP_* bits of a VMA's flags that crit's table (images/flags.py) has
# no name for; the plan and the dumper read them.
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_HUGETLB = 0x40000

_VM_RW_ARGTYPES = [ctypes.c_int, ctypes.POINTER(Iovec), ctypes.c_ulong,
                   ctypes.POINTER(Iovec), ctypes.c_ulong, ctypes.c_ulong]
_process_vm_readv = libc_function("process_vm_readv", ctypes.c_ssize_t, _VM_RW_ARGTYPES)
_process_vm_writev = libc_function("process_vm_writev", ctypes.c_ssize_t, _VM_RW_ARGTYPES)


@dataclass
class _Piece:
    """One contiguous stretch to move: ``size`` bytes between our ``local`` address and the
    task's ``remote`` address. Advanced in place as bytes are transferred."""

    remote: int
    local: int
    size: int


class _PinnedBuffer:
    """The address of a Python buffer, kept valid while this object lives.

    ``bytes`` are read-only but immutable, so their internal pointer can be handed out;
    writable buffers (bytearray, mmap, memoryview) are exported through ctypes. Other
    read-only buffers are copied once.
    """

    def __init__(self, data: Buffer, *, writable: bool) -> None:
        self._keep: object
        if isinstance(data, bytes) and not writable:
            self._keep = data
            self.address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
            self.size = len(data)
            return
        view = memoryview(data).cast("B")
        if view.readonly:
            if writable:
                raise AssertionError("read_into: the destination buffer is read-only")
            copy = view.tobytes()
            self._keep = copy
            self.address = ctypes.cast(ctypes.c_char_p(copy), ctypes.c_void_p).value or 0
            self.size = len(copy)
            return
        array = (ctypes.c_char * view.nbytes).from_buffer(view)
        self._keep = (view, array)
        self.address = ctypes.addressof(array)
        self.size = view.nbytes


def _transfer(pid: int, op: str, pieces: list[_Piece]) -> None:
    """Move every piece with process_vm_readv/writev, resuming after partial transfers.

    The kernel copies pieces in order and returns the byte count it managed; we drop what
    is done and call again. No progress (EFAULT, or 0 bytes) raises
    :class:`MemoryAccessFailed` naming the first address not reached.
    """
    call = _process_vm_writev if op == "process_vm_writev" else _process_vm_readv
    total_bytes = sum(p.size for p in pieces)
    start_addr = pieces[0].remote if pieces else 0
    done_bytes = 0
    todo = [p for p in pieces if p.size]
    while todo:
        batch = todo[:IOV_MAX]
        local = (Iovec * len(batch))(*[Iovec(p.local, p.size) for p in batch])
        remote = (Iovec * len(batch))(*[Iovec(p.remote, p.size) for p in batch])
        moved = call(pid, local, len(batch), remote, len(batch), 0)
        if moved < 0:
            err_no = ctypes.get_errno()
            if err_no == errno.ESRCH:
                raise TaskGone(pid, op)
            if err_no != errno.EFAULT:
                raise from_os_error(OSError(err_no, os.strerror(err_no)), op, pid)
            moved = 0
        if moved == 0:
            raise MemoryAccessFailed(pid, op, start_addr, total_bytes, done_bytes,
                                     errno.EFAULT, failed_addr=todo[0].remote)
        done_bytes += moved
        while moved:
            head = todo[0]
            step = min(moved, head.size)
            head.remote += step
            head.local += step
            head.size -= step
            moved -= step
            if head.size == 0:
                todo.pop(0)


def write_pieces(pid: int, pieces: Sequence[tuple[int, Buffer]]) -> None:
    """Write several ``(remote_addr, data)`` pieces into ``pid`` with process_vm_writev.

    Precondition: the target pages are mapped writable (read-only and r-x pages give
    ``MemoryAccessFailed`` with EFAULT; use :func:`proc_mem_write` for those).
    """
    pinned = [(addr, _PinnedBuffer(data, writable=False)) for addr, data in pieces]
    _transfer(pid, "process_vm_writev",
              [_Piece(addr, buf.address, buf.size) for addr, buf in pinned])


def write(pid: int, addr: int, data: Buffer) -> None:
    """Write ``data`` at ``addr`` in ``pid`` (process_vm_writev). See :func:`write_pieces`."""
    write_pieces(pid, [(addr, data)])


def read_into(pid: int, addr: int, out: Buffer) -> None:
    """Fill the writable buffer ``out`` from ``pid``'s memory at ``addr`` (process_vm_readv).

    Precondition: the range is mapped readable in the task.
    """
    buf = _PinnedBuffer(out, writable=True)
    _transfer(pid, "process_vm_readv", [_Piece(addr, buf.address, buf.size)])


def read(pid: int, addr: int, size_bytes: int) -> bytes:
    """Return ``size_bytes`` of ``pid``'s memory at ``addr`` (process_vm_readv)."""
    out = bytearray(size_bytes)
    read_into(pid, addr, out)
    return bytes(out)


def _open_proc_mem(pid: int, flags: int) -> int:
    """Open /proc/PID/mem; a missing task is ``TaskGone``."""
    path = f"/proc/{pid}/mem"
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise TaskGone(pid, f"open {path}", "no such process") from err
    except OSError as err:
        raise from_os_error(err, f"open {path}", pid) from err


def proc_mem_write(pid: int, addr: int, data: Buffer) -> None:
    """Write ``data`` at ``addr`` through /proc/PID/mem, regardless of page protection.

    Preconditions: the range is mapped, and we may force-write it (we are ``pid``'s tracer,
    or the kernel has CONFIG_PROC_MEM_ALWAYS_FORCE). For code and read-only data; bulk
    writes to writable pages go through :func:`write`, which is faster.
    """
    view = memoryview(data).cast("B")
    fd = _open_proc_mem(pid, os.O_RDWR)
    done_bytes = 0
    try:
        while done_bytes < len(view):
            try:
                n = os.pwrite(fd, view[done_bytes:], addr + done_bytes)
            except OSError as err:
                # EIO: an address in the range is not mapped.
                raise MemoryAccessFailed(pid, "pwrite /proc/PID/mem", addr, len(view),
                                         done_bytes, err.errno) from err
            if n == 0:
                raise MemoryAccessFailed(pid, "pwrite /proc/PID/mem", addr, len(view),
                                         done_bytes, None)
            done_bytes += n
    finally:
        os.close(fd)


def proc_mem_read(pid: int, addr: int, size_bytes: int) -> bytes:
    """Read ``size_bytes`` at ``addr`` through /proc/PID/mem (works on unreadable-by-
    protection pages too, e.g. execute-only code). Preconditions as :func:`proc_mem_write`.
    """
    fd = _open_proc_mem(pid, os.O_RDONLY)
    parts: list[bytes] = []
    done_bytes = 0
    try:
        while done_bytes < size_bytes:
            try:
                chunk = os.pread(fd, size_bytes - done_bytes, addr + done_bytes)
            except OSError as err:
                raise MemoryAccessFailed(pid, "pread /proc/PID/mem", addr, size_bytes,
                                         done_bytes, err.errno) from err
            if not chunk:
                raise MemoryAccessFailed(pid, "pread /proc/PID/mem", addr, size_bytes,
                                         done_bytes, None)
            parts.append(chunk)
            done_bytes += len(chunk)
    finally:
        os.close(fd)
    return b"".join(parts)
