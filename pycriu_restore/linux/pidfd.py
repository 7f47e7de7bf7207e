"""``pidfd_getfd(2)``: a duplicate of another process's fd, as if it had been sent to us.

The orchestrator uses it to reach an object a stopped task holds (a TCP socket still in
repair mode) without running code in the task. The new fd shares the open file description
(offset, status flags, the socket itself) and is close-on-exec. Needs ptrace-attach rights
over the target (PTRACE_MODE_ATTACH_REALCREDS), which the tracer has. Linux 5.6+; Python
3.11 has ``os.pidfd_open`` but not this call.
"""

from __future__ import annotations

import ctypes
import os

from pycriu_restore.linux.libc import libc_function, raise_errno
from pycriu_restore.linux.syscalls import NR_PIDFD_GETFD

_syscall = libc_function("syscall", ctypes.c_long, [ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_uint])


def getfd(pid: int, target_fd: int) -> int:
    """A new fd of ours for fd ``target_fd`` of process ``pid``; the caller closes it.

    Raises OSError (ESRCH: no such process, EBADF: no such fd, EPERM: not allowed)."""
    pidfd = os.pidfd_open(pid)
    try:
        fd = _syscall(NR_PIDFD_GETFD, pidfd, target_fd, 0)
        if fd < 0:
            raise_errno(f"pidfd_getfd(pid {pid}, fd {target_fd})")
        return fd
    finally:
        os.close(pidfd)
