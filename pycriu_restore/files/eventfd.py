"""eventfds (EVENTFD entries in files.img, ``efd``): a counter, recreated with its value.

CRIU (criu/eventfd.c) makes ``eventfd(counter, 0)`` and sets the dumped file flags
(O_NONBLOCK) with F_SETFL; so does this module. The image keeps no EFD_SEMAPHORE bit (it
is not a file flag, and CRIU 4.2 does not dump /proc fdinfo's ``eventfd-semaphore``), so a
semaphore-mode eventfd comes back in counter mode, as with CRIU.
Shared by FileEntry id (files/registry.py): one counter for every fd that held it.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from pycriu_restore.files import park
from pycriu_restore.files.registry import FdContext

# Status flags F_SETFL can set on an eventfd; others in the image would be lost.
SETTABLE_FLAGS = os.O_NONBLOCK
ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE  # eventfd(2): the counter never reaches 2**64 - 1
O_LARGEFILE = 0o100000  # set by the kernel on every file of a 64-bit task; not a choice


@dataclass(frozen=True)
class EventfdFd:
    fd: int
    cloexec: bool
    file_id: int
    counter: int
    flags: int  # file status flags as dumped (O_RDWR | O_NONBLOCK)


SPECS = (EventfdFd,)


def read(ctx: FdContext) -> EventfdFd:
    if not ctx.entry.HasField("efd"):
        raise ctx.inconsistent("type EVENTFD without its efd payload")
    efd = ctx.entry.efd
    if efd.counter > EVENTFD_MAX:
        raise ctx.inconsistent(f"eventfd counter {efd.counter:#x} is above the maximum {EVENTFD_MAX:#x}")
    extra = efd.flags & ~(ACCESS_MODE | SETTABLE_FLAGS | O_LARGEFILE)
    if extra:
        raise ctx.refuse(f"eventfd with file flags {efd.flags:#o} (only O_NONBLOCK is restored, {extra:#o} is not)")
    return EventfdFd(fd=ctx.fd, cloexec=ctx.cloexec, file_id=ctx.file_id, counter=efd.counter, flags=efd.flags)


def open(spec: EventfdFd) -> int:  # noqa: A001 - the interface's name (files/registry.py)
    """A new eventfd holding the dumped counter and flags, parked high."""
    fd = park(os.eventfd(spec.counter, os.EFD_CLOEXEC))
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, spec.flags & SETTABLE_FLAGS)
    except BaseException:
        os.close(fd)
        raise
    return fd
