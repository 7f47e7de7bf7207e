"""Regular files and device nodes (REG entries in files.img): reopen by path.

Shared by FileEntry id (files/registry.py): fds of several tasks, or dups in one, that
came from one open() share one open file, so its offset moves for all of them.
"""

from __future__ import annotations

import os

from pycriu_restore.files import park
from pycriu_restore.files.registry import FdContext
from pycriu_restore.plan.model import OpenFile

SPECS = (OpenFile,)

# Open flags that would change the file instead of reopening it.
_NEVER_REOPEN_WITH = os.O_CREAT | os.O_TRUNC | os.O_EXCL
S_IFMT = 0o170000
S_IFREG = 0o100000


def read(ctx: FdContext) -> OpenFile:
    """The fd's file, with the identity checks CRIU makes (files-reg.c): the size of a regular
    file not opened O_APPEND (logs grow), and its mode."""
    if not ctx.entry.HasField("reg"):
        raise ctx.inconsistent("type REG without its reg payload")
    reg = ctx.entry.reg
    if reg.ext:  # the plan took it from the caller if one was given (files/inherited.py)
        raise ctx.refuse(f"external file {reg.name} (dumped with --external): pass an fd for it with "
                         f"--inherit-fd fd[N]:{reg.name}")
    is_regular = (reg.mode & S_IFMT) == S_IFREG
    check_size = is_regular and reg.HasField("size") and not reg.flags & os.O_APPEND
    return OpenFile(
        fd=ctx.fd,
        path=reg.name,
        flags=reg.flags,
        pos=reg.pos,
        cloexec=ctx.cloexec,
        file_id=ctx.file_id,
        expected_size=reg.size if check_size else None,
        expected_mode=reg.mode if reg.HasField("mode") else None,
    )


def inherit_key(ctx: FdContext) -> str:
    """The path without its leading "/" ("." for "/"), as CRIU names a regular file for
    --inherit-fd (criu/files-reg.c: rfi->path); an external file by its whole name, the
    ``file[MNT_ID:INODE]`` key --external gave it at dump (criu/files-reg.c open_path)."""
    reg = ctx.entry.reg
    if reg.ext:
        return reg.name
    return reg.name[1:] if reg.name.startswith("/") and reg.name != "/" else "."


def open(f: OpenFile) -> int:  # noqa: A001 - the interface's name (files/registry.py)
    """Open ``f.path`` with its dumped flags and position; the fd is parked high.

    An O_APPEND file is not seeked: every write goes to its end anyway, and the file may
    have grown since the dump (logs), which is why CRIU does not check its size either.
    """
    temp = park(os.open(f.path, f.flags & ~_NEVER_REOPEN_WITH))
    try:
        if f.pos and not f.flags & os.O_APPEND:
            os.lseek(temp, f.pos, os.SEEK_SET)
    except BaseException:
        os.close(temp)
        raise
    return temp


open_file = open  # the older name
