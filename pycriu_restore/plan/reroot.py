"""CRIU's ``--root DIR``: the same plan, with every path of the images looked up under DIR.

A checkpoint names files by their paths as the dumped tasks saw them ("/usr/bin/redis-server",
"/var/log/app.log"). With ``--root DIR`` CRIU opens each of them under DIR instead
(criu/files-reg.c: ``openat(mntns_root, path + 1)`` with DIR as that root when the images hold
no mount namespace) and gives every task DIR as its ``/`` (restore_fs: fchroot), so a tree
dumped from a chroot or a copied root filesystem comes back there. pycrestore does the same
to the plan, before anything is made: a pure function from plan to plan.

    paths opened for fds (OpenFile), mapped files and the exe (MappedFile)   DIR + path
    each task's cwd and root                                               DIR + path
    (the task chdirs to its cwd and then chroots to its root: restore/task.py)

Only fds of kinds that hold no path other than an open file's are accepted (``PATH_FREE``:
pipes, eventfd, epoll, signalfd, timerfd, inet sockets, unix sockets not bound to a path,
inherited fds). The rest (a unix socket bound to a path, inotify watches, terminals, plugin
files) are refused under ``--root`` (exit 3, naming the task and the fd), never restored at a
host path; so is a device mapping (VMA_EXT_PLUGIN): its plugin answers for it only with the
files the plugin restored, and without them the device would be opened by its host path.
Memfds and shared anonymous memory have no path (their MappedFile.path only names them) and
are left as they are. ``--root /`` is the plan unchanged.
"""

from __future__ import annotations

import dataclasses
import os

from pycriu_restore.files.epoll import EpollFd
from pycriu_restore.files.eventfd import EventfdFd
from pycriu_restore.files.inet import InetSocketFd
from pycriu_restore.files.signalfd import SignalfdFd
from pycriu_restore.files.timerfd import TimerfdFd
from pycriu_restore.plan.errors import UnsupportedFeature
from pycriu_restore.plan.model import InheritedFile, MappedFile, OpenFile, PipeEnd, RestorePlan, Task, UnixSocketEnd

# Fd specs with no path of their own (a unix socket's name is checked apart).
PATH_FREE = (InheritedFile, PipeEnd, UnixSocketEnd, EventfdFd, EpollFd, SignalfdFd, TimerfdFd, InetSocketFd)


def under(root: str, path: str) -> str:
    """``path`` (absolute, as in the images) looked up under ``root``."""
    return os.path.join(root, path.lstrip("/")) if path else path


def reroot(plan: RestorePlan, root: str) -> RestorePlan:
    """The plan with every path under ``root`` (an absolute directory); refusals as above."""
    if os.path.realpath(root) == "/":
        return plan
    refusals = [why for task in plan.tasks for why in _refusals(task)] + _socket_refusals(plan)
    if refusals:
        raise UnsupportedFeature("--root", f"{root}: " + "; ".join(refusals))
    shared = tuple(dataclasses.replace(obj, spec=_file(obj.spec, root)) if isinstance(obj.spec, OpenFile) else obj
                   for obj in plan.shared)
    return dataclasses.replace(plan, tasks=tuple(_task(t, root) for t in plan.tasks), shared=shared)


def _refusals(task: Task) -> list[str]:
    fds = [f"pid {task.pid} fd {spec.fd}: {type(spec).__name__} under another root: not restored"
           for spec in task.files if not isinstance(spec, (OpenFile, *PATH_FREE))]
    return fds + [f"pid {task.pid} device VMA {v.start:#x}-{v.end:#x} ({v.file.path}): a plugin's mapping under "
                  "another root: not restored" for v in task.vmas if v.file is not None and v.file.plugin]


def _socket_refusals(plan: RestorePlan) -> list[str]:
    return [f"unix socket {sk.name.decode(errors='replace')}: bound to a path, under another root: not restored"
            for sockets in plan.unix_sockets for sk in sockets.sockets if sk.name and sk.name[0] != 0]


def _task(task: Task, root: str) -> Task:
    if task.mm is None:  # a zombie: nothing of it is opened
        return task
    vmas = tuple(dataclasses.replace(v, file=_mapped(v.file, root)) if v.file is not None else v for v in task.vmas)
    mm = dataclasses.replace(task.mm, exe=_mapped(task.mm.exe, root))
    files = tuple(_file(f, root) if isinstance(f, OpenFile) else f for f in task.files)
    return dataclasses.replace(task, vmas=vmas, mm=mm, files=files, cwd=under(root, task.cwd),
                               root=under(root, task.root))


def _mapped(m: MappedFile, root: str) -> MappedFile:
    if m.memfd_inode is not None or m.shmem_id is not None:
        return m  # no path: the object is made, not opened
    return dataclasses.replace(m, path=under(root, m.path))


def _file(f: OpenFile, root: str) -> OpenFile:
    return dataclasses.replace(f, path=under(root, f.path))
