"""Pipes (PIPE entries in files.img, data in pipes-data.img): one new pipe per pipe_id.

Ends that share a ``pipe_id`` are the two ends of one pipe (or several fds of one end):
they must be fds of the same new pipe, or bytes written to one would never reach the other.
The unread bytes are written back before any fd is installed, so the reader finds them
first, in order, exactly as at dump time.
"""

from __future__ import annotations

import fcntl
import os

from pycriu_restore.files import install, park
from pycriu_restore.plan.model import PipeBuffer, PipeEnd

_ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR


def restore(ends: list[PipeEnd], buffers: tuple[PipeBuffer, ...]) -> None:
    """Create every pipe once, refill it, and install each end at its fd with its flags."""
    by_id = {b.pipe_id: b for b in buffers}
    pipes: dict[int, tuple[int, int]] = {}
    for end in ends:
        if end.pipe_id not in pipes:
            pipes[end.pipe_id] = _new_pipe(by_id.get(end.pipe_id))
    for end in ends:
        read_fd, write_fd = pipes[end.pipe_id]
        source = read_fd if end.flags & _ACCESS_MODE == os.O_RDONLY else write_fd
        temp = park(os.dup(source))
        # Status flags (O_NONBLOCK) belong to the open file description, as dumped per end.
        fcntl.fcntl(temp, fcntl.F_SETFL, end.flags & ~_ACCESS_MODE)
        install(temp, end.fd, end.cloexec)
    for read_fd, write_fd in pipes.values():
        os.close(read_fd)
        os.close(write_fd)


def _new_pipe(buffer: PipeBuffer | None) -> tuple[int, int]:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    read_fd, write_fd = park(read_fd), park(write_fd)
    if buffer is not None:
        if buffer.size_bytes:
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, buffer.size_bytes)
        view = memoryview(buffer.queued)
        while view:  # the buffer is at least as large as at dump, so this never blocks
            view = view[os.write(write_fd, view):]
    return read_fd, write_fd
