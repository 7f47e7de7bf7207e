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

from pycriu_restore.files import install, park
from pycriu_restore.plan.model import PipeBuffer, PipeEnd

ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR


def create(buffer: PipeBuffer) -> tuple[int, int]:
    """A new pipe holding ``buffer``'s unread bytes; (read end, write end), parked high."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    read_fd, write_fd = park(read_fd), park(write_fd)
    if buffer.size_bytes:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, buffer.size_bytes)
    view = memoryview(buffer.queued)
    while view:  # the buffer is at least as large as at dump, so this never blocks
        view = view[os.write(write_fd, view):]
    return read_fd, write_fd


def install_end(end: PipeEnd, read_fd: int, write_fd: int) -> None:
    """Put a dup of the right end of the pipe at ``end.fd``, with the end's status flags."""
    source = read_fd if end.flags & ACCESS_MODE == os.O_RDONLY else write_fd
    temp = park(os.dup(source))
    # Status flags (O_NONBLOCK) belong to the open file description, as dumped per end.
    fcntl.fcntl(temp, fcntl.F_SETFL, end.flags & ~ACCESS_MODE)
    install(temp, end.fd, end.cloexec)
