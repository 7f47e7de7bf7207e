"""epoll sets (EVENTPOLL entries in files.img, ``epfd`` with its ``tfd`` watch list).

Each watch names a target by its fd number in the dumping task (``tfd``), with the events
and the 64-bit data epoll_wait(2) hands back. A new epoll set gets every watch again with
epoll_ctl(EPOLL_CTL_ADD) — through ctypes, since select.epoll cannot set the data — so the
targets must be installed first: ``depends_on`` names them, and restore/task.py orders the
installs by it (CRIU's eventpoll.c likewise waits until the targets are open). A target
must be an fd of the same task; a watch whose fd was closed after being added (the epoll
still holds the file) is refused. An epoll set held by more than one fd (dup, or fork after
epoll_create) is refused: its targets would have to exist in the root before the fork.
Readiness is the targets' state: what was ready at dump is ready again.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from pycriu_restore.files import park
from pycriu_restore.files.registry import FdContext, SharedObject, TreeContext
from pycriu_restore.linux import anonfds
from pycriu_restore.plan.errors import UnsupportedFeature

# <sys/epoll.h>: every event bit epoll_ctl accepts for a watch (EPOLLIN .. EPOLLRDHUP,
# EPOLLEXCLUSIVE, EPOLLWAKEUP, EPOLLONESHOT, EPOLLET).
EPOLL_EVENT_BITS = 0x3FFF | (1 << 28) | (1 << 29) | (1 << 30) | (1 << 31)
SETTABLE_FLAGS = os.O_NONBLOCK
ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
O_LARGEFILE = 0o100000
MAX_WATCHES = 1 << 20  # a bound for untrusted images (max_user_watches is about 4% of RAM / 90 bytes)


@dataclass(frozen=True)
class EpollWatch:
    target_fd: int
    events: int
    data: int


@dataclass(frozen=True)
class EpollFd:
    fd: int
    cloexec: bool
    file_id: int
    flags: int  # file status flags (O_NONBLOCK)
    watches: tuple[EpollWatch, ...]


SPECS = (EpollFd,)


def read(ctx: FdContext) -> EpollFd:
    if not ctx.entry.HasField("epfd"):
        raise ctx.inconsistent("type EVENTPOLL without its epfd payload")
    ep = ctx.entry.epfd
    extra = ep.flags & ~(ACCESS_MODE | SETTABLE_FLAGS | O_LARGEFILE)
    if extra:
        raise ctx.refuse(f"epoll set with file flags {ep.flags:#o} ({extra:#o} is not restored)")
    if len(ep.tfd) > MAX_WATCHES:
        raise ctx.inconsistent(f"epoll set with {len(ep.tfd)} watches, at most {MAX_WATCHES} are read")
    watches = []
    for w in ep.tfd:
        if w.tfd not in ctx.table:
            raise ctx.refuse(f"epoll set watching fd {w.tfd}, which the task no longer holds")
        if w.tfd == ctx.fd:
            raise ctx.inconsistent("epoll set watching itself")
        if w.events & ~EPOLL_EVENT_BITS:
            raise ctx.refuse(f"epoll watch of fd {w.tfd} with events {w.events:#x}")
        watches.append(EpollWatch(target_fd=w.tfd, events=w.events, data=w.data))
    return EpollFd(fd=ctx.fd, cloexec=ctx.cloexec, file_id=ctx.file_id, flags=ep.flags, watches=tuple(watches))


def depends_on(spec: EpollFd) -> tuple[int, ...]:
    return tuple(w.target_fd for w in spec.watches)


def shared(ctx: TreeContext) -> tuple[SharedObject, ...]:
    """Nothing: an epoll set is made by its task. One held by several fds is refused here."""
    holders: dict[int, list[str]] = {}
    for task in ctx.tasks:
        for spec in task.files:
            if isinstance(spec, EpollFd):
                holders.setdefault(spec.file_id, []).append(f"pid {task.pid} fd {spec.fd}")
    for file_id, where in holders.items():
        if len(where) > 1:
            raise UnsupportedFeature("files.img", f"{where[0]}: epoll set (file id {file_id}) also held by "
                                     f"{', '.join(where[1:])}: not restored")
    return ()


def open(spec: EpollFd) -> int:  # noqa: A001 - the interface's name (files/registry.py)
    """A new epoll set with every watch; the targets are at their numbers already."""
    fd = park(anonfds.epoll_create1(anonfds.EPOLL_CLOEXEC))
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, spec.flags & SETTABLE_FLAGS)
        for w in spec.watches:
            anonfds.epoll_add(fd, w.target_fd, w.events, w.data)
    except BaseException:
        os.close(fd)
        raise
    return fd
