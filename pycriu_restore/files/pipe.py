"""Pipes (PIPE entries in files.img, data in pipes-data.img): one new pipe per pipe_id.

Ends that share a ``pipe_id`` are the ends of one pipe, possibly held by several tasks:
they must all be fds of the same new pipe, or bytes written to one would never reach the
other. So a pipe is created once (restore/shared.py does it in the root task before it
forks) and every end is a dup of it. The unread bytes are written back at creation, so the
reader finds them first, in order, exactly as at dump time.
"""

from __future__ import annotations

import fcntl
import os

from pycriu_restore.files import install as install_fd, park
from pycriu_restore.files.registry import FdContext, InstallContext, SharedObject, TreeContext
from pycriu_restore.plan.model import PipeBuffer, PipeEnd

SPECS = (PipeEnd,)
ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR


def read(ctx: FdContext) -> PipeEnd:
    if not ctx.entry.HasField("pipe"):
        raise ctx.inconsistent("type PIPE without its pipe payload")
    p = ctx.entry.pipe
    return PipeEnd(fd=ctx.fd, pipe_id=p.pipe_id, flags=p.flags, cloexec=ctx.cloexec)


def inherit_key(ctx: FdContext) -> str:
    """``pipe:[INO]``, as /proc/PID/fd shows it (criu/pipes.c pipe_d_name): both ends share it."""
    return f"pipe:[{ctx.entry.pipe.pipe_id}]"


def shared(ctx: TreeContext) -> tuple[SharedObject, ...]:
    """Every pipe any task holds an end of, with its buffer size and unread data if any."""
    wanted = {f.pipe_id for t in ctx.tasks for f in t.files if isinstance(f, PipeEnd)}
    if not wanted:
        return ()
    data = {e.pipe_id: (e.size if e.HasField("size") else None, extra or b"") for e, extra in ctx.images.pipes_data()}
    out = []
    for pipe_id in sorted(wanted):
        size, queued = data.get(pipe_id, (None, b""))
        out.append(SharedObject("PIPE", pipe_id, 2, PipeBuffer(pipe_id=pipe_id, size_bytes=size, queued=queued)))
    return tuple(out)


def create(obj: SharedObject) -> tuple[int, int]:
    """A new pipe holding the buffer's unread bytes; (read end, write end), parked high."""
    buffer: PipeBuffer = obj.spec
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    read_fd, write_fd = park(read_fd), park(write_fd)
    try:
        if buffer.size_bytes:
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, buffer.size_bytes)
        view = memoryview(buffer.queued)
        while view:  # the buffer is at least as large as at dump, so this never blocks
            view = view[os.write(write_fd, view):]
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    return read_fd, write_fd


def install(end: PipeEnd, ctx: InstallContext) -> None:
    """Put a dup of the right end of the pipe at ``end.fd``, with the end's status flags."""
    read_fd, write_fd = ctx.parked("PIPE", end.pipe_id)
    source = read_fd if end.flags & ACCESS_MODE == os.O_RDONLY else write_fd
    temp = park(os.dup(source))
    try:
        # Status flags (O_NONBLOCK) belong to the open file description, as dumped per end.
        fcntl.fcntl(temp, fcntl.F_SETFL, end.flags & ~ACCESS_MODE)
    except BaseException:
        os.close(temp)
        raise
    install_fd(temp, end.fd, end.cloexec)

