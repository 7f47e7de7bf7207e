"""signalfds (SIGNALFD entries in files.img, ``sgfd``): a signal mask, recreated.

As CRIU (criu/signalfd.c): ``signalfd(-1, mask)`` with the dumped O_NONBLOCK. The signals
themselves are not the signalfd's: pending ones are restored with the task (core image)
and its blocked mask by the blob, so a read after the restore finds what was pending.
Shared by FileEntry id (files/registry.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pycriu_restore.files import park
from pycriu_restore.files.registry import FdContext
from pycriu_restore.linux import anonfds

SETTABLE_FLAGS = os.O_NONBLOCK
ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
O_LARGEFILE = 0o100000


@dataclass(frozen=True)
class SignalfdFd:
    fd: int
    cloexec: bool
    file_id: int
    sigmask: int  # bit n-1 = signal n
    flags: int


SPECS = (SignalfdFd,)


def read(ctx: FdContext) -> SignalfdFd:
    if not ctx.entry.HasField("sgfd"):
        raise ctx.inconsistent("type SIGNALFD without its sgfd payload")
    sg = ctx.entry.sgfd
    extra = sg.flags & ~(ACCESS_MODE | SETTABLE_FLAGS | O_LARGEFILE)
    if extra:
        raise ctx.refuse(f"signalfd with file flags {sg.flags:#o} ({extra:#o} is not restored)")
    return SignalfdFd(fd=ctx.fd, cloexec=ctx.cloexec, file_id=ctx.file_id, sigmask=sg.sigmask, flags=sg.flags)


def open(spec: SignalfdFd) -> int:  # noqa: A001 - the interface's name (files/registry.py)
    flags = anonfds.SFD_CLOEXEC | (anonfds.SFD_NONBLOCK if spec.flags & os.O_NONBLOCK else 0)
    return park(anonfds.signalfd(spec.sigmask, flags))
