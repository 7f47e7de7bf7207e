"""Syscalls that read another task's kernel state from outside: kcmp(2), get_robust_list(2).

A checkpoint needs a few facts /proc does not print: whether two fds share one open file
description (kcmp KCMP_FILE: fds 1 and 2 after ``2>&1`` do), and the task's robust futex
list head (get_robust_list). Both need ptrace access to the task (we are its tracer).
Numbers from <asm/unistd_64.h> and <linux/kcmp.h>; glibc has no wrapper for either.
"""

from __future__ import annotations

import ctypes

from pycriu_restore.linux.errors import os_errors
from pycriu_restore.linux.libc import libc_function, raise_errno

# <asm/unistd_64.h>
SYS_GET_ROBUST_LIST = 274
SYS_KCMP = 312
# <linux/kcmp.h>: enum kcmp_type
KCMP_FILE = 0

_syscall = libc_function("syscall", ctypes.c_long,
                         [ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                          ctypes.c_long, ctypes.c_long])


def same_file_description(pid: int, fd1: int, fd2: int) -> bool:
    """True when ``pid``'s fds ``fd1`` and ``fd2`` are one open file description (dup'ed)."""
    with os_errors("kcmp(KCMP_FILE)", pid):
        result = _syscall(SYS_KCMP, pid, pid, KCMP_FILE, fd1, fd2)
        if result < 0:
            raise_errno("kcmp(KCMP_FILE)")
    return result == 0


def robust_list(pid: int) -> tuple[int, int]:
    """``pid``'s robust futex list: (head address, length in bytes); (0, 0) when never set."""
    head = ctypes.c_void_p()
    length = ctypes.c_size_t()
    with os_errors("get_robust_list", pid):
        if _syscall(SYS_GET_ROBUST_LIST, pid, ctypes.addressof(head), ctypes.addressof(length), 0, 0) < 0:
            raise_errno("get_robust_list")
    return head.value or 0, length.value
