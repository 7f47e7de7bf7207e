"""One module per kind of open file a task can hold, each installing its fds in the new task.

Every module runs inside the task being restored (still Python, before the blob) and
installs fds at their checkpointed numbers. Temporary fds are first moved to
``TEMP_FD_BASE`` and above, so that a temporary never lands on a number another file of
the image still has to take.
"""

from __future__ import annotations

import fcntl
import os

# Above every fd an image of a normal process names, below the parked status fd (1000).
TEMP_FD_BASE = 900


def park(fd: int) -> int:
    """Move a fresh fd to TEMP_FD_BASE or above (close-on-exec) and close the original."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, TEMP_FD_BASE)
    os.close(fd)
    return high


def install(temp_fd: int, fd: int, cloexec: bool) -> None:
    """Put a parked temporary at its final number with its FD_CLOEXEC, and close the temporary."""
    os.dup2(temp_fd, fd, inheritable=not cloexec)
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
