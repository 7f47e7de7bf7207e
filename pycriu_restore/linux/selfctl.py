"""What a task sets on itself that Python's stdlib cannot set from any thread: a signal's
default action (sigaction(2)), its name, its dumpable flag and its child-subreaper flag
(prctl(2)).

``signal.signal`` would do the first, but only in the interpreter's main thread, and a task
forked by clone3 is a copy of whichever thread called ``restore()``. Numbers from
<linux/prctl.h>; the struct size from glibc's <signal.h> (tests/test_linux_abi.py checks both).
"""

from __future__ import annotations

import ctypes

from pycriu_restore.linux.errors import os_errors
from pycriu_restore.linux.libc import libc_function, raise_errno

# <linux/prctl.h>
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
TASK_COMM_LEN = 16  # <linux/sched.h>: comm holds 15 bytes and a NUL
# sizeof(struct sigaction) in glibc's <signal.h> on x86-64: handler, 1024-bit mask, flags,
# restorer. All zeros is SIG_DFL with an empty mask and no flags.
SIGACTION_SIZE = 152

_sigaction = libc_function("sigaction", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p])
_prctl = libc_function("prctl", ctypes.c_int,
                       [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong])


def set_default_action(signo: int) -> None:
    """sigaction(signo, SIG_DFL): no handler, not ignored, no SA_* flags (SA_NOCLDWAIT included)."""
    act = ctypes.create_string_buffer(SIGACTION_SIZE)
    with os_errors(f"sigaction({signo}, SIG_DFL)"):
        if _sigaction(signo, ctypes.addressof(act), None) != 0:
            raise_errno("sigaction")


def set_name(comm: str) -> None:
    """PR_SET_NAME: the task's comm (/proc/PID/comm and stat), cut to 15 bytes as the kernel does."""
    name = ctypes.create_string_buffer(comm.encode(errors="surrogateescape")[:TASK_COMM_LEN - 1], TASK_COMM_LEN)
    with os_errors("prctl(PR_SET_NAME)"):
        if _prctl(PR_SET_NAME, ctypes.addressof(name), 0, 0, 0) != 0:
            raise_errno("prctl(PR_SET_NAME)")


def set_dumpable(dumpable: bool) -> None:
    """PR_SET_DUMPABLE: 0 also means that a fatal signal writes no core file."""
    with os_errors("prctl(PR_SET_DUMPABLE)"):
        if _prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0) != 0:
            raise_errno("prctl(PR_SET_DUMPABLE)")


def child_subreaper() -> bool:
    """PR_GET_CHILD_SUBREAPER: whether orphaned descendants are reparented to this process."""
    value = ctypes.c_int(0)
    with os_errors("prctl(PR_GET_CHILD_SUBREAPER)"):
        if _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(value), 0, 0, 0) != 0:
            raise_errno("prctl(PR_GET_CHILD_SUBREAPER)")
    return bool(value.value)


def set_child_subreaper(on: bool) -> None:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants come to this process (and it may reap
    them) instead of to the pid namespace's init."""
    with os_errors("prctl(PR_SET_CHILD_SUBREAPER)"):
        if _prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            raise_errno("prctl(PR_SET_CHILD_SUBREAPER)")
