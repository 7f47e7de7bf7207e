"""Run the restorer blob in a forked child of this process, without ptrace.

The real path enters the blob through ptrace (the orchestrator sets RIP, RSP and RDI in a
stopped task). This module is the short path, for tests and self-checks of the blob: the
*parent* maps the region MAP_SHARED before forking, the child copies the blob and the
arguments into it and calls the entry point like a C function, and the parent, after the
child has ended, reads the blob's status record from its own view of the same pages::

    parent and child (one MAP_SHARED mapping, inherited by fork)
    +------------------------------+ base
    | region bytes                 |  run_in_child: blob.image_at(base), then the args
    |                              |  run_bootstrap_in_child: Bootstrap.image, at its base
    +------------------------------+ base + size

The blob switches to the region's stack itself (args.stack_top), so it may unmap all of
the child's old memory, Python included. Without a tracer, the ending must be
BLOB_F_EXIT (exit_group) or BLOB_F_NO_TRAP (rt_sigreturn into code that exits by itself):
an int3 would kill the child with SIGTRAP.
"""

from __future__ import annotations

import ctypes
import dataclasses
import faulthandler
import mmap
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import NoReturn

from pycriu_restore.blob import abi
from pycriu_restore.blob.bootstrap import TASK_SIZE, Bootstrap
from pycriu_restore.blob.errors import BlobRunError
from pycriu_restore.blob.loader import Blob
from pycriu_restore.blob.status import STATUS_BYTES, BlobStatus, decode_status
from pycriu_restore.linux.libc import libc_function

# Exit statuses of the child itself, above the blob's own (abi.BLOB_EXIT_*, 240..245).
CHILD_SETUP_FAILED = 255     # Python raised before the jump into the blob (printed to stderr)
CHILD_ENTRY_RETURNED = 254   # the entry point returned, which it must never do

POLL_INTERVAL_S = 0.002

# <asm-generic/mman-common.h>: fail instead of replacing an existing mapping.
MAP_FIXED_NOREPLACE = 0x100000
_MAP_FAILED = ctypes.c_void_p(-1).value

# glibc >= 2.35 registers an rseq area for each thread at thread pointer + __rseq_offset
# (sysdeps/unix/sysv/linux/rseq-internal.h), signed with RSEQ_SIG (x86: 0x53053053).
RSEQ_SIG_X86 = 0x53053053
# kernel/rseq.c: ORIG_RSEQ_SIZE, the length glibc 2.36 registers (its __rseq_size says 20).
ORIG_RSEQ_SIZE = 32
SYS_ARCH_PRCTL = 158           # asm/unistd_64.h
ARCH_GET_FS = 0x1003           # asm/prctl.h

_mmap = libc_function("mmap", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                ctypes.c_int, ctypes.c_int, ctypes.c_long])
_munmap = libc_function("munmap", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t])


def this_thread_rseq() -> abi.BlobRseq:
    """The calling thread's glibc rseq registration (what a fork of it inherits), or a zero
    BlobRseq if glibc registered none (glibc.pthread.rseq=0, or glibc < 2.35)."""
    libc = ctypes.CDLL(None)
    try:
        size = ctypes.c_uint.in_dll(libc, "__rseq_size").value
        offset = ctypes.c_long.in_dll(libc, "__rseq_offset").value
    except ValueError:
        return abi.BlobRseq()
    if not size:
        return abi.BlobRseq()
    fs_base = ctypes.c_uint64()
    syscall = libc_function("syscall", ctypes.c_long, [ctypes.c_long, ctypes.c_long, ctypes.c_void_p])
    if syscall(SYS_ARCH_PRCTL, ARCH_GET_FS, ctypes.byref(fs_base)) != 0:
        raise BlobRunError(f"arch_prctl(ARCH_GET_FS) failed: {os.strerror(ctypes.get_errno())}")
    return abi.BlobRseq(addr=fs_base.value + offset, len=max(size, ORIG_RSEQ_SIZE), sig=RSEQ_SIG_X86)


@dataclass(frozen=True)
class ChildExit:
    """How the child ended: ``exit_code`` if it exited, ``signal`` if a signal killed it;
    ``status`` is the blob's record as the child left it, ``thread_statuses`` every
    thread's (Bootstrap.thread_status_addrs order: entry 0 is ``status``)."""

    pid: int
    exit_code: int | None
    signal: int | None
    status: BlobStatus | None = None
    thread_statuses: tuple[BlobStatus, ...] = ()

    def describe(self) -> str:
        """``"pid 412 exited with status 7 (blob: ok)"`` or ``"... killed by SIGSEGV ..."``."""
        blob = f" (blob: {self.status.describe()})" if self.status is not None else ""
        if self.signal is not None:
            return f"pid {self.pid} was killed by {signal.Signals(self.signal).name}{blob}"
        return f"pid {self.pid} exited with status {self.exit_code}{blob}"


class _SharedRegion:
    """An anonymous MAP_SHARED RWX mapping, at a given address or wherever the kernel likes.

    Acquire/release pair: the constructor maps, :meth:`close` unmaps (idempotent).
    """

    def __init__(self, size: int, addr: int | None = None) -> None:
        flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | (MAP_FIXED_NOREPLACE if addr else 0)
        prot = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        got = _mmap(addr or None, size, prot, flags, -1, 0)
        if got in (None, _MAP_FAILED) or (addr and got != addr):
            err = ctypes.get_errno()
            if got not in (None, _MAP_FAILED):
                _munmap(got, size)
            where = f"at {addr:#x}" if addr else "anywhere"
            raise BlobRunError(f"cannot map a {size}-byte region {where} for the blob: "
                               f"{os.strerror(err) if err else f'the kernel chose {got:#x}'}")
        self.addr, self.size = got, size

    def write(self, offset: int, data: bytes) -> None:
        ctypes.memmove(self.addr + offset, data, len(data))

    def read(self, offset: int, size: int) -> bytes:
        return ctypes.string_at(self.addr + offset, size)

    def close(self) -> None:
        if self.size:
            _munmap(self.addr, self.size)
            self.size = 0


def run_in_child(blob: Blob, args: abi.BlobArgs, *, entry: str = abi.BLOB_ENTRY_RESTORE_TASK,
                 timeout_s: float = 10.0) -> ChildExit:
    """Fork; in the child, call ``entry(&args)`` on a region holding ``blob`` and ``args``.

    The region is [blob image][args page(s)][stack]; bootstrap_start/len, stack_top and
    task_size of the copied args are set for it where they are 0, and self_rseq to this
    thread's glibc registration (:func:`this_thread_rseq`): the child inherits it, and the
    blob's unmap would otherwise kill it now and then (research/feasibility-spike.md §2).
    The caller's object is not changed. Returns how the
    child ended, with the status read back. Raises BlobMalformed if ``entry`` is not in
    the blob, BlobRunError if mapping or forking fails or the child outlives ``timeout_s``.
    """
    entry_offset = blob.entry_offset(entry)   # checked before forking
    args_len = -(-ctypes.sizeof(args) // abi.BLOB_PAGE_SIZE) * abi.BLOB_PAGE_SIZE
    size = blob.size_bytes + args_len + abi.BLOB_STACK_BYTES
    region = _SharedRegion(size)
    try:
        args = abi.BlobArgs.from_buffer_copy(bytes(args))
        if not args.bootstrap_len:
            args.bootstrap_start, args.bootstrap_len = region.addr, size
        if not args.stack_top:
            args.stack_top = region.addr + size
        if not args.task_size:
            args.task_size = TASK_SIZE
        if not args.self_rseq.addr:
            args.self_rseq = this_thread_rseq()
        region.write(0, blob.image_at(region.addr))
        region.write(blob.size_bytes, bytes(args))
        args_addr = region.addr + blob.size_bytes
        return _fork_and_wait(region.addr + entry_offset, args_addr, timeout_s,
                              lambda: region.read(blob.size_bytes + abi.STATUS_OFFSET,
                                                  ctypes.sizeof(abi.BlobStatus)))
    finally:
        region.close()


def run_bootstrap_in_child(bootstrap: Bootstrap, *, timeout_s: float = 10.0) -> ChildExit:
    """Fork; in the child, enter ``bootstrap`` at its own address, as the tracer would.

    The region is mapped at ``bootstrap.base`` (which must be free here: the child is a
    copy of this process) before the fork, so that the parent reads every thread's status
    back. The bootstrap must have been built with BLOB_F_EXIT or BLOB_F_NO_TRAP. The tids
    of a multi-threaded plan must be free here (the blob creates its threads with them).
    """
    region = _SharedRegion(bootstrap.size, bootstrap.base)
    try:
        region.write(0, bootstrap.image)
        offset = bootstrap.status_addr - bootstrap.base
        outcome = _fork_and_wait(bootstrap.entry, bootstrap.args_addr, timeout_s,
                                 lambda: region.read(offset, ctypes.sizeof(abi.BlobStatus)))
        records = tuple(decode_status(region.read(addr - bootstrap.base, STATUS_BYTES))
                        for addr in bootstrap.thread_status_addrs)
        return dataclasses.replace(outcome, thread_statuses=records)
    finally:
        region.close()


def _fork_and_wait(entry_addr: int, args_addr: int, timeout_s: float, read_status) -> ChildExit:
    for stream in (sys.stdout, sys.stderr):   # nothing buffered may be written twice
        stream.flush()
    try:
        pid = os.fork()
    except OSError as err:
        raise BlobRunError(f"cannot fork a child to run the blob: {err.strerror}") from err
    if pid == 0:
        _child_main(entry_addr, args_addr)
    outcome = _wait(pid, timeout_s)
    return ChildExit(pid=outcome.pid, exit_code=outcome.exit_code, signal=outcome.signal,
                     status=decode_status(read_status()))


def _child_main(entry_addr: int, args_addr: int) -> NoReturn:
    """In the forked child: jump into the blob. Never returns (the blob ends us, or _exit)."""
    status = CHILD_SETUP_FAILED
    try:
        # A fault in the blob must end the child with its signal, without a Python dump
        # (pytest enables faulthandler, and the child inherits it).
        faulthandler.disable()
        # A C function pointer to the entry: libffi calls it with RDI = args_addr.
        enter = ctypes.CFUNCTYPE(None, ctypes.c_uint64)(entry_addr)
        status = CHILD_ENTRY_RETURNED
        enter(args_addr)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(status)   # never unwind into the parent's code (pytest, the caller)


def _wait(pid: int, timeout_s: float) -> ChildExit:
    """Reap ``pid``; kill it (SIGKILL) and reap it if it outlives ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise BlobRunError(f"the blob did not end the child within {timeout_s} s: killed it",
                               pid=pid)
        time.sleep(POLL_INTERVAL_S)
    if os.WIFSIGNALED(status):
        return ChildExit(pid=pid, exit_code=None, signal=os.WTERMSIG(status))
    return ChildExit(pid=pid, exit_code=os.WEXITSTATUS(status), signal=None)
