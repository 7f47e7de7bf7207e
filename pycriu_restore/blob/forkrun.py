"""Run the restorer blob in a forked child of this process, without ptrace.

The real path enters the blob through ptrace (the orchestrator sets RIP, RSP and RDI in a
stopped task). This module is the short path, for tests and self-checks of the blob and
its loader: the child maps one RWX region, copies the relocated blob and the args into it
and calls the entry point like a C function; the blob ends the child with exit_group, and
the parent reports how the child ended::

    child region (mmap, RWX)              base = wherever mmap put it
    +------------------------------+ base
    | blob.image_at(base)          |  size_bytes
    +------------------------------+ base + size_bytes
    | struct blob_args             |  args: bootstrap_start/len describe this region
    +------------------------------+ base + size_bytes + pages(sizeof(blob_args))

The child runs on Python's own stack (the entry stub aligns it), with Python's own libc
still mapped: so only blob steps that leave the process usable up to exit_group can be
tried this way.
"""

from __future__ import annotations

import ctypes
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
from pycriu_restore.blob.errors import BlobRunError
from pycriu_restore.blob.loader import Blob

# Exit statuses of the child itself, above the blob's own (abi.BLOB_EXIT_*, 240..245).
CHILD_SETUP_FAILED = 255     # Python raised before the jump into the blob (printed to stderr)
CHILD_ENTRY_RETURNED = 254   # the entry point returned, which it must never do

POLL_INTERVAL_S = 0.002


@dataclass(frozen=True)
class ChildExit:
    """How the child ended: ``exit_code`` if it exited, ``signal`` if a signal killed it."""

    pid: int
    exit_code: int | None
    signal: int | None

    def describe(self) -> str:
        """``"pid 412 exited with status 7"`` or ``"pid 412 was killed by SIGSEGV"``."""
        if self.signal is not None:
            return f"pid {self.pid} was killed by {signal.Signals(self.signal).name}"
        return f"pid {self.pid} exited with status {self.exit_code}"


def run_in_child(blob: Blob, args: abi.BlobArgs, *, entry: str = abi.BLOB_ENTRY_RESTORE_TASK,
                 timeout_s: float = 10.0) -> ChildExit:
    """Fork; in the child, load ``blob`` and call ``entry(&args)``; wait for the child.

    ``args`` is copied into the child's region (its bootstrap_start/len are set to that
    region there); the caller's object is not changed. Returns how the child ended.
    Raises BlobMalformed if ``entry`` is not in the blob, BlobRunError if fork fails or
    the child is still running after ``timeout_s`` (it is then killed and reaped).
    """
    entry_offset = blob.entry_offset(entry)   # checked before forking
    args_bytes = bytes(args)
    for stream in (sys.stdout, sys.stderr):   # nothing buffered may be written twice
        stream.flush()
    try:
        pid = os.fork()
    except OSError as err:
        raise BlobRunError(f"cannot fork a child to run the blob: {err.strerror}") from err
    if pid == 0:
        _child_main(blob, entry_offset, args_bytes)
    return _wait(pid, timeout_s)


def _child_main(blob: Blob, entry_offset: int, args_bytes: bytes) -> NoReturn:
    """In the forked child: map, copy, relocate, jump. Never returns (exit_group or _exit)."""
    status = CHILD_SETUP_FAILED
    try:
        # A fault in the blob must end the child with its signal, without a Python dump
        # (pytest enables faulthandler, and the child inherits it).
        faulthandler.disable()
        args_len = -(-len(args_bytes) // abi.BLOB_PAGE_SIZE) * abi.BLOB_PAGE_SIZE
        region = mmap.mmap(-1, blob.size_bytes + args_len,
                           flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        base = ctypes.addressof(ctypes.c_char.from_buffer(region))
        region[:blob.size_bytes] = blob.image_at(base)   # relocate for where mmap put it
        args = abi.BlobArgs.from_buffer_copy(args_bytes)
        args.bootstrap_start = base
        args.bootstrap_len = len(region)
        args_addr = base + blob.size_bytes
        region[blob.size_bytes:blob.size_bytes + len(args_bytes)] = bytes(args)
        # A C function pointer to the entry: libffi calls it with RDI = args_addr.
        enter = ctypes.CFUNCTYPE(None, ctypes.c_uint64)(base + entry_offset)
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
