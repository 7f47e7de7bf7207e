"""One module per kind of open file a task can hold; files/registry.py names them.

Every module's restore side runs inside the task being restored (still Python, before the
blob) and installs fds at their checkpointed numbers. A new fd is first moved to the
temporary range (``park``: above every fd of the images, files/fdlayout.py), so that a
temporary never lands on a number another file of the image still has to take.
"""

from __future__ import annotations

import fcntl
import os

# Where temporaries go when no restore has set the range (tests, tools): above the fds of
# a normal process. restore/task.py sets the range computed from the plan (set_temp_base).
DEFAULT_TEMP_FD_BASE = 900
TEMP_FD_BASE = DEFAULT_TEMP_FD_BASE  # kept for readers of the old name
_temp_base = DEFAULT_TEMP_FD_BASE


def set_temp_base(base: int) -> None:
    """Put this process's temporaries at ``base`` and above (files/fdlayout.py FdLayout.temp_base).
    Set once in the task being prepared; its children inherit it through fork."""
    global _temp_base
    _temp_base = base


def temp_base() -> int:
    return _temp_base


def park(fd: int) -> int:
    """Move a fresh fd to the temporary range (close-on-exec) and close the original."""
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _temp_base)
    finally:
        os.close(fd)
    return high


def install(temp_fd: int, fd: int, cloexec: bool) -> None:
    """Put a parked temporary at its final number with its FD_CLOEXEC, and close the temporary."""
    try:
        os.dup2(temp_fd, fd, inheritable=not cloexec)
    finally:
        os.close(temp_fd)


def close_all_except(keep: set[int]) -> None:
    """Close every open fd of this process whose number is not in ``keep`` (proc(5): /proc/self/fd)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory fd of the listing itself, already closed
