"""The owner of an open file (``fown`` in every kind's FileEntry): who gets SIGIO, and which signal.

fcntl(F_SETOWN) names a process (or thread, or process group) that the kernel signals when
I/O is possible on a file opened with O_ASYNC; F_SETSIG picks the signal (fcntl(2)). nginx
owns the socketpairs between its master and workers this way. CRIU dumps both for every
file (FownEntry: pid_type, pid, signum, and the uid/euid of the task that set the owner,
which the kernel keeps for the permission check of the signal: fs/fcntl.c sigio_perm) and
restores them as the file is opened (criu/files.c restore_fown): F_SETSIG, then
F_SETOWN_EX under the dumped uid and euid.

The owner is a pid of the restored tree, so it must exist when the file's task sets it. A
task installs its fds once it has forked its children (restore/task.py), so the owner may
be the task itself, an ancestor or a child; any other is refused by the plan.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass

from pycriu_restore.linux.selfctl import set_dumpable
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature

# <asm-generic/fcntl.h>
F_SETSIG = 10
F_SETOWN_EX = 15
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
_OWNER_TYPES = {F_OWNER_TID: "thread", F_OWNER_PID: "process", F_OWNER_PGRP: "process group"}
_F_OWNER_EX = struct.Struct("=ii")  # struct f_owner_ex { int type; __kernel_pid_t pid; }
SIGRTMAX = 64  # <asm/signal.h> _NSIG


@dataclass(frozen=True)
class FdOwner:
    """F_SETSIG / F_SETOWN_EX of the file at ``fd``, as dumped."""

    fd: int
    signum: int  # 0: SIGIO (the default; nothing to set)
    pid_type: int  # F_OWNER_TID / F_OWNER_PID / F_OWNER_PGRP
    pid: int  # 0: no owner
    uid: int
    euid: int


def read(pid: int, fd: int, entry, reachable: set[int], where: str) -> FdOwner | None:
    """The owner of fd ``fd`` of task ``pid`` from its FileEntry, or None if it has none.

    ``reachable`` holds the pids (and process groups) that exist when the task installs
    its fds. Pure: plan time.
    """
    fown = _fown_of(entry)
    if fown is None or (fown.pid == 0 and fown.signum == 0):
        return None
    if fown.signum > SIGRTMAX:
        raise InconsistentImages("files.img", f"{where}: fown.signum {fown.signum} is not a signal (1..{SIGRTMAX})")
    if fown.pid:
        if fown.pid_type not in _OWNER_TYPES:
            raise InconsistentImages("files.img", f"{where}: fown.pid_type {fown.pid_type}, expected "
                                     f"{', '.join(f'{k} ({v})' for k, v in _OWNER_TYPES.items())}")
        if fown.pid not in reachable:
            what = _OWNER_TYPES[fown.pid_type]
            raise UnsupportedFeature("files.img", f"{where}: owned (F_SETOWN) by {what} {fown.pid}, which is not "
                                     f"task {pid}, an ancestor or a child of it: not restored")
    return FdOwner(fd=fd, signum=fown.signum, pid_type=fown.pid_type, pid=fown.pid, uid=fown.uid, euid=fown.euid)


def _fown_of(entry):
    """The FownEntry of a FileEntry: in whichever kind's sub-message is set."""
    for _field, value in entry.ListFields():
        if hasattr(value, "DESCRIPTOR") and "fown" in value.DESCRIPTOR.fields_by_name and value.HasField("fown"):
            return value.fown
    return None


def restore(owner: FdOwner) -> None:
    """Set the signal and the owner of the file at ``owner.fd`` (in the task, still root).

    As CRIU's restore_fown: the owner is set with the dumped uid and euid, which the kernel
    records for the signal's permission check, then the task's own ids come back (the saved
    uid stays root, so they can). Changing ids clears "dumpable"; it is set again.
    """
    if owner.signum:
        fcntl.fcntl(owner.fd, F_SETSIG, owner.signum)
    if not owner.pid:
        return
    ids = os.getresuid()
    switch = (owner.uid, owner.euid) != ids[:2]
    if switch:
        os.setresuid(owner.uid, owner.euid, ids[2])
    try:
        fcntl.fcntl(owner.fd, F_SETOWN_EX, _F_OWNER_EX.pack(owner.pid_type, owner.pid))
    finally:
        if switch:
            os.setresuid(*ids)
            set_dumpable(True)
