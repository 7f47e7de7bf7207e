"""Regular files and device nodes (REG entries in files.img): reopen by path."""

from __future__ import annotations

import os

from pycriu_restore.files import install, park
from pycriu_restore.plan.model import OpenFile

# Open flags that would change the file instead of reopening it.
_NEVER_REOPEN_WITH = os.O_CREAT | os.O_TRUNC | os.O_EXCL


def open_file(f: OpenFile) -> int:
    """Open ``f.path`` with its dumped flags and position; the fd is parked high.

    An O_APPEND file is not seeked: every write goes to its end anyway, and the file may
    have grown since the dump (logs), which is why CRIU does not check its size either.
    """
    temp = park(os.open(f.path, f.flags & ~_NEVER_REOPEN_WITH))
    if f.pos and not f.flags & os.O_APPEND:
        os.lseek(temp, f.pos, os.SEEK_SET)
    return temp


def restore(f: OpenFile) -> None:
    """Open ``f`` at fd ``f.fd`` (a file only this task holds)."""
    install(open_file(f), f.fd, f.cloexec)
