"""Kernel objects several tasks share: created once by the root task, inherited by the rest.

A pipe between two restored tasks must be *one* pipe; a MAP_SHARED memfd must be *one*
memfd; fds that several tasks got from one open() before fork must share *one* file offset.
CRIU sends such fds between tasks over unix sockets. pycrestore's tree is created by fork
from the root, so it is enough that the root creates every shared object before it forks:
each object sits at a fixed "parked" fd (from ``SHARED_FD_BASE`` up, the numbers are the
same in every task), each task dups what it needs to its own fd numbers, then closes them all.

    root:  create all ──► fork children ──► install own fds ──► close parked
    child:                (inherits all) ─► fork its children ► install own ► close parked
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pycriu_restore.files import memfd, pipe, regular, unix_socket
from pycriu_restore.plan.model import RestorePlan

# Parked fds live from here up: above the fds of the images (and the service fds, which
# start right above them), below files.TEMP_FD_BASE and the status fd (restore/task.py).
SHARED_FD_BASE = 700


@dataclass(frozen=True)
class SharedFds:
    """The parked fd of every shared object, by key; the same numbers in every task."""

    files: dict[int, int] = field(default_factory=dict)  # FileEntry id -> fd
    pipes: dict[int, tuple[int, int]] = field(default_factory=dict)  # pipe_id -> (read, write)
    sockets: dict[int, int] = field(default_factory=dict)  # socket inode -> fd
    memfds: dict[int, int] = field(default_factory=dict)  # memfd inode id -> fd

    @staticmethod
    def layout(plan: RestorePlan) -> SharedFds:
        """Assign parked numbers to every shared object of the plan (no side effect)."""
        next_fd = SHARED_FD_BASE

        def take() -> int:
            nonlocal next_fd
            next_fd += 1
            return next_fd - 1

        out = SharedFds()
        for f in plan.shared_files:
            out.files[f.file_id] = take()
        for buf in plan.pipes:
            out.pipes[buf.pipe_id] = (take(), take())
        for pair in plan.socket_pairs:
            out.sockets[pair.a] = take()
            out.sockets[pair.b] = take()
        for mem in plan.shared_memory:
            out.memfds[mem.inode_id] = take()
        assert next_fd < 900, "SharedFds.layout: too many shared objects for the parked range"
        return out

    @property
    def all(self) -> list[int]:
        fds = [*self.files.values(), *self.sockets.values(), *self.memfds.values()]
        for read_fd, write_fd in self.pipes.values():
            fds += [read_fd, write_fd]
        return fds


def create_shared_objects(plan: RestorePlan, parked: SharedFds) -> None:
    """In the root task, before any fork: create each shared object at its parked fd."""
    for f in plan.shared_files:
        _park_at(regular.open_file(f), parked.files[f.file_id])
    for buf in plan.pipes:
        read_fd, write_fd = pipe.create(buf)
        _park_at(read_fd, parked.pipes[buf.pipe_id][0])
        _park_at(write_fd, parked.pipes[buf.pipe_id][1])
    for pair in plan.socket_pairs:
        a, b = unix_socket.create(pair)
        _park_at(a, parked.sockets[pair.a])
        _park_at(b, parked.sockets[pair.b])
    for mem in plan.shared_memory:
        _park_at(memfd.create(mem), parked.memfds[mem.inode_id])


def close_parked(parked: SharedFds) -> None:
    for fd in parked.all:
        try:
            os.close(fd)
        except OSError:
            pass


def _park_at(fd: int, number: int) -> None:
    os.dup2(fd, number, inheritable=False)
    os.close(fd)
