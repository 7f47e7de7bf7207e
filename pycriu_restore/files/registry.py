"""One table, keyed by FileEntry type, that says which module owns each kind of open file.

CRIU keeps everything about one kind of file in one place, ``struct file_desc_ops``
(criu/files.c): how it is collected from the images, what must be open before it, how it is
opened, and what happens after. pycrestore does the same: each kind has one module under
``files/`` and this table names it. The plan (plan/build.py) and the restore
(restore/task.py, restore/shared.py) only ever go through :func:`kind_for` / :func:`kind_of`,
so adding a kind is one new module plus its line in :data:`KIND_MODULES`.

The interface a kind module provides (module-level names; only ``read`` is required)
----------------------------------------------------------------------------------

``read(ctx: FdContext) -> spec``  *(plan time: pure, no root, no side effect)*
    Turn one fd of one task (``ctx.entry``: its FileEntry; ``ctx.fdinfo``-derived ``fd``,
    ``cloexec``; ``ctx.images`` for other images) into a frozen dataclass, the *spec*, which
    goes into ``Task.files``; ``ctx.table`` is the task's whole fd table (fd -> FileEntry
    id), ``ctx.files`` every FileEntry by id. Every spec has ``fd: int`` and ``cloexec: bool``; kinds whose
    object may be held by several fds (dup, fork) also have ``file_id: int`` (FileEntry id).
    What cannot be restored raises ``ctx.refuse("TCP socket 127.0.0.1:6391 in state
    SYN_SENT")``, which names the task and the fd (``pid 4100 fd 5: ...: not restored``);
    the plan collects the refusals of every fd of every task and reports them all at once.
    Contradictory images raise ``ctx.inconsistent("...")`` (InconsistentImages).

``SPECS: tuple[type, ...]``
    The spec classes ``read`` returns: the restore dispatches on them.

``inherit_key(ctx: FdContext) -> str``  *(optional; default: the kind cannot be inherited)*
    The name CRIU's ``file_desc_ops.name`` gives the fd's file ("pipe:[INO]", a path
    without its leading "/"): the RESOURCE of ``--inherit-fd fd[N]:RESOURCE``. When the
    caller names it, the plan makes the fd an ``InheritedFile`` (files/inherited.py) instead
    of calling ``read``.

``depends_on(spec) -> tuple[int, ...]``  *(optional; default: nothing)*
    Fd numbers of the same task that must be installed before this one (an epoll set after
    the fds it watches). restore/task.py installs in an order that honours it.

Creating the object: two styles
    *By file id* (most kinds): the module defines ``open(spec) -> int``, which creates the
    kernel object and returns it as a temporary fd (``files.park``: above every fd of the
    images, close-on-exec). If the FileEntry id is held by more than one fd in the whole
    tree, the root opens it once before it forks (restore/shared.py parks it at a fixed
    number every task inherits) and each holder gets a dup, so all share one open file
    description (offset, flags, counter) as after fork/dup at dump time; otherwise the task
    opens its own. ``after_install(spec) -> None`` *(optional)* runs once the fd sits at its
    number (e.g. arm a timer as late as possible).
    *Custom shared objects* (pipes, socketpairs, ...): the module defines
    ``shared(ctx: TreeContext) -> tuple[SharedObject, ...]`` (plan time: objects the root
    must create, each with its own key and fd count), ``create(obj) -> tuple[int, ...]``
    (root, before fork: the object's temporary fds, in order), ``parked_keys(obj) ->
    tuple[int, ...]`` *(optional)*: the key each of those fds is found under (default: all
    under ``obj.key``), and ``install(spec, ctx: InstallContext) -> None`` (in the task: put
    the fd at ``spec.fd`` using ``ctx.parked(kind, key)``).

``after_session(task, plan, parked) -> None``  *(optional)*
    Runs in every live task once its session and process group exist and the shared
    objects exist, before it forks its children (restore/task.py): state that belongs to a
    session rather than to an fd (ttys: the controlling terminal, the foreground group).

Undo on failure
    ``open``/``create``/``install`` either succeed or close every fd they made before
    raising. What is already installed belongs to the task being prepared: a failure ends
    that task (restore/task.py reports it and exits) and the orchestrator kills the whole
    tree, so nothing of a failed restore survives; the kernel closes the fds.

Fd numbers: ``spec.fd`` is the number in the images, taken with dup2. Temporaries, parked
shared objects and service fds all live above the highest fd any image uses (see
files/fdlayout.py), so installing never clobbers them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature

# FileEntry type (fdinfo.proto fd_types) -> the module that owns the kind. A type missing
# here is refused, naming the task and the fd.
KIND_MODULES: dict[str, str] = {
    "REG": "pycriu_restore.files.regular",
    "PIPE": "pycriu_restore.files.pipe",
    "UNIXSK": "pycriu_restore.files.unix_socket",
    "EXT": "pycriu_restore.files.ext",
    "MEMFD": "pycriu_restore.files.memfd",
    "INETSK": "pycriu_restore.files.inet",
    "EVENTFD": "pycriu_restore.files.eventfd",
    "EVENTPOLL": "pycriu_restore.files.epoll",
    "SIGNALFD": "pycriu_restore.files.signalfd",
    "TIMERFD": "pycriu_restore.files.timerfd",
    "INOTIFY": "pycriu_restore.files.inotify",
    "TTY": "pycriu_restore.files.tty",
    # Not a FileEntry type: MAP_SHARED|MAP_ANONYMOUS memory, which the root creates before
    # forking like the shared objects above (files/anon_shmem.py).
    "SHMEM": "pycriu_restore.files.anon_shmem",
    # Not a FileEntry type: a caller's fd put in place of a file (--inherit-fd), whatever
    # kind the file is (files/inherited.py); the plan chooses it through ``inherit_key``.
    "INHERITED": "pycriu_restore.files.inherited",
}

# A readable name for refusals of the types no module owns (yet).
TYPE_WORDS: dict[str, str] = {
    "FIFO": "FIFO", "INETSK": "inet socket", "PACKETSK": "packet socket", "TTY": "terminal",
    "FANOTIFY": "fanotify group", "NETLINKSK": "netlink socket", "NS": "namespace file",
    "TUNF": "tun device", "BPFMAP": "BPF map", "PIDFD": "pidfd",
}


@dataclass(frozen=True)
class FdContext:
    """One fd of one task, as ``read`` sees it."""

    pid: int
    fd: int
    cloexec: bool
    file_id: int  # FileEntry id (fdinfo.id)
    entry: Any  # fdinfo_pb2.FileEntry
    images: Any  # images.ImageSet, for kinds whose state lives in other images
    files: dict[int, Any] = field(default_factory=dict)  # every FileEntry by id (peers, targets)
    table: dict[int, int] = field(default_factory=dict)  # this task's fds: fd -> FileEntry id

    @property
    def where(self) -> str:
        return f"pid {self.pid} fd {self.fd}"

    def refuse(self, what: str) -> UnsupportedFeature:
        """The error for an object of this fd that is not restored (exit 3)."""
        return UnsupportedFeature("files.img", f"{self.where}: {what}: not restored")

    def inconsistent(self, what: str) -> InconsistentImages:
        return InconsistentImages("files.img", f"{self.where} (file id {self.file_id}): {what}")


@dataclass(frozen=True)
class TreeContext:
    """What ``shared`` sees: the tasks (with their specs), the images, every FileEntry."""

    tasks: tuple  # plan.model.Task, parents first
    images: Any
    files: dict[int, Any]


@dataclass(frozen=True)
class SharedObject:
    """A kernel object the root creates before it forks, parked at ``nr_fds`` fixed numbers."""

    kind: str  # the FileEntry type of the kind that owns it ("PIPE")
    key: int  # the kind's id for it (pipe_id, socket inode, FileEntry id, memfd inode)
    nr_fds: int
    spec: Any  # the kind's dataclass (PipeBuffer, OpenFile, a RESOURCE string, ...)


@dataclass(frozen=True)
class InstallContext:
    """What ``install`` sees in the task being prepared."""

    task: Any  # plan.model.Task
    parked: Callable[[str, int], tuple[int, ...]]  # (kind, key) -> the parked fds
    plugins: tuple = ()  # plugins.api.Plugin, for EXT files
    plugin_ctx: Any = None


class FileKind:
    """One kind module behind the interface above, with its defaults filled in."""

    def __init__(self, fd_type: str, module: ModuleType) -> None:
        self.fd_type = fd_type
        self.module = module
        self.specs: tuple[type, ...] = module.SPECS

    def read(self, ctx: FdContext) -> Any:
        return self.module.read(ctx)

    def inherit_key(self, ctx: FdContext) -> str | None:
        """The --inherit-fd RESOURCE of this fd's file, or None if the kind has none."""
        fn = getattr(self.module, "inherit_key", None)
        return fn(ctx) if fn else None

    def depends_on(self, spec: Any) -> tuple[int, ...]:
        fn = getattr(self.module, "depends_on", None)
        return tuple(fn(spec)) if fn else ()

    @property
    def by_file_id(self) -> bool:
        """Created with ``open(spec)`` and shared by FileEntry id (see the module docstring)."""
        return hasattr(self.module, "open")

    def shared(self, ctx: TreeContext) -> tuple[SharedObject, ...]:
        fn = getattr(self.module, "shared", None)
        if fn is not None:
            return tuple(fn(ctx))
        if not self.by_file_id:
            return ()
        holders: dict[int, list] = {}
        for task in ctx.tasks:
            for spec in task.files:
                if isinstance(spec, self.specs):
                    holders.setdefault(spec.file_id, []).append(spec)
        return tuple(SharedObject(self.fd_type, fid, 1, specs[0]) for fid, specs in holders.items() if len(specs) > 1)

    def create(self, obj: SharedObject) -> tuple[int, ...]:
        fn = getattr(self.module, "create", None)
        if fn is not None:
            return tuple(fn(obj))
        return (self.module.open(obj.spec),)

    def parked_keys(self, obj: SharedObject) -> tuple[int, ...]:
        fn = getattr(self.module, "parked_keys", None)
        return tuple(fn(obj)) if fn else (obj.key,) * obj.nr_fds

    def after_session(self, task: Any, plan: Any, parked: Callable[[str, int], tuple[int, ...]]) -> None:
        fn = getattr(self.module, "after_session", None)
        if fn is not None:
            fn(task, plan, parked)

    def install(self, spec: Any, ctx: InstallContext) -> None:
        from pycriu_restore.files import install, park

        fn = getattr(self.module, "install", None)
        if fn is not None:
            fn(spec, ctx)
            return
        shared = ctx.parked(self.fd_type, spec.file_id)
        if shared:
            import os

            install(park(os.dup(shared[0])), spec.fd, spec.cloexec)
        else:
            install(self.module.open(spec), spec.fd, spec.cloexec)
        after = getattr(self.module, "after_install", None)
        if after is not None:
            after(spec)


_loaded: dict[str, FileKind] = {}


def type_name(entry: Any) -> str:
    """The fd_types name of a FileEntry ("REG"), or its number if the schema has no name."""
    try:
        return entry.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[entry.type].name
    except (KeyError, AttributeError):
        return str(entry.type)


def kind_for(fd_type: str) -> FileKind | None:
    """The kind that owns FileEntry type ``fd_type`` ("PIPE"), or None if none does."""
    if fd_type not in KIND_MODULES:
        return None
    if fd_type not in _loaded:
        _loaded[fd_type] = FileKind(fd_type, importlib.import_module(KIND_MODULES[fd_type]))
    return _loaded[fd_type]


def all_kinds() -> list[FileKind]:
    return [k for k in (kind_for(t) for t in KIND_MODULES) if k is not None]


def kind_of(spec: Any) -> FileKind:
    """The kind whose ``read`` made ``spec`` (restore-time dispatch)."""
    for kind in all_kinds():
        if isinstance(spec, kind.specs):
            return kind
    raise AssertionError(f"kind_of: no kind module owns {type(spec).__name__}")
