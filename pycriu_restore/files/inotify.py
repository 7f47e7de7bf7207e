"""inotify instances (INOTIFY entries in files.img, ``ify`` with its ``wd`` watch list).

Each watch is re-added by path with its mask and its watch descriptor number, as CRIU's
fsnotify.c restore_one_inotify() does: INOTIFY_IOC_SETNEXTWD makes the next
inotify_add_watch() return the dumped wd. The path is ``f_handle.path``: the file handle
itself names an inode that may be gone (the fixtures' install.sh recreates the watched
file), so a watch without a path is refused. Events queued at dump are not in the images
(CRIU does not keep them either). The mask keeps the event bits (IN_ALL_EVENTS) as CRIU
does. Shared by FileEntry id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pycriu_restore.files import park
from pycriu_restore.files.registry import FdContext
from pycriu_restore.linux import anonfds

SETTABLE_FLAGS = os.O_NONBLOCK
ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
O_LARGEFILE = 0o100000
MAX_WATCHES = 1 << 20  # a bound for untrusted images (fs.inotify.max_user_watches)
WD_MAX = 2**31 - 1


@dataclass(frozen=True)
class InotifyWatch:
    wd: int
    path: str
    mask: int


@dataclass(frozen=True)
class InotifyFd:
    fd: int
    cloexec: bool
    file_id: int
    flags: int
    watches: tuple[InotifyWatch, ...]  # by wd


SPECS = (InotifyFd,)


def read(ctx: FdContext) -> InotifyFd:
    if not ctx.entry.HasField("ify"):
        raise ctx.inconsistent("type INOTIFY without its ify payload")
    ify = ctx.entry.ify
    extra = ify.flags & ~(ACCESS_MODE | SETTABLE_FLAGS | O_LARGEFILE)
    if extra:
        raise ctx.refuse(f"inotify instance with file flags {ify.flags:#o} ({extra:#o} is not restored)")
    if len(ify.wd) > MAX_WATCHES:
        raise ctx.inconsistent(f"inotify instance with {len(ify.wd)} watches, at most {MAX_WATCHES} are read")
    watches = []
    for w in ify.wd:
        path = w.f_handle.path if w.HasField("f_handle") and w.f_handle.HasField("path") else ""
        if not path:
            raise ctx.refuse(f"inotify watch {w.wd} (inode {w.i_ino}) known only by its file handle")
        if not 1 <= w.wd <= WD_MAX:
            raise ctx.inconsistent(f"inotify watch descriptor {w.wd} is out of range")
        watches.append(InotifyWatch(wd=w.wd, path=path, mask=w.mask & anonfds.IN_ALL_EVENTS))
    watches.sort(key=lambda w: w.wd)
    if len({w.wd for w in watches}) != len(watches):
        raise ctx.inconsistent("two inotify watches with one watch descriptor")
    return InotifyFd(fd=ctx.fd, cloexec=ctx.cloexec, file_id=ctx.file_id, flags=ify.flags, watches=tuple(watches))


def open(spec: InotifyFd) -> int:  # noqa: A001 - the interface's name (files/registry.py)
    """A new inotify instance with every watch at its dumped wd, parked high."""
    flags = anonfds.IN_CLOEXEC | (anonfds.IN_NONBLOCK if spec.flags & os.O_NONBLOCK else 0)
    fd = park(anonfds.inotify_init1(flags))
    try:
        for w in spec.watches:
            anonfds.inotify_set_next_wd(fd, w.wd)
            wd = anonfds.inotify_add_watch(fd, w.path, w.mask)
            if wd != w.wd:
                raise OSError(f"inotify_add_watch({w.path!r}) gave wd {wd}, the images say {w.wd}")
    except BaseException:
        os.close(fd)
        raise
    return fd
