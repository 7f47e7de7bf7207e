"""``clone3(2)`` from Python: fork a child with exact pids (``set_tid``).

A restored task must get the pid it had at checkpoint time. ``clone3`` takes the wanted
pid for each pid-namespace level in ``set_tid`` (innermost level first) and fails with
EEXIST if one is taken; it needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) over the
namespaces involved. CRIU does the same in ``criu/clone-noasan.c``.

Python has no clone3, and a raw fork made behind the interpreter's back would leave its
locks and thread state wrong in the child. So, as ``os.fork()`` does internally:

1. ``PyOS_BeforeFork()``          - takes the import lock, runs ``os.register_at_fork`` hooks;
2. ``syscall(__NR_clone3, ...)``  - through ``PyDLL``, so the GIL stays held over the fork and
                                    no other Python thread can run in between;
3. child:  ``PyOS_AfterFork_Child()``; parent: ``PyOS_AfterFork_Parent()``.

research/feasibility-spike.md §4 measured this on 6.18: ``set_tid=[20000]`` gives pid
20000, the same again gives EEXIST, ``set_tid=[40000]`` gives EINVAL (pid_max 32768), and
``CLONE_NEWPID`` with ``set_tid=[1, X]`` gives a child that is 1 inside and X outside.

Only fork-like clones are allowed: the child runs Python on a copy of our memory, so flags
that share memory or need a new stack (CLONE_VM, CLONE_THREAD, ...) are refused.
"""

from __future__ import annotations

import ctypes
import errno
import signal
from collections.abc import Sequence
from typing import Any

from pycriu_restore.linux.errors import PidInUse, PidNotAvailable, SyscallFailed
from pycriu_restore.linux.libc import libc_function
from pycriu_restore.linux.namespaces import ALL_CLONE_NEW, CLONE_NEWPID
from pycriu_restore.linux.syscalls import NR_CLONE3

# <linux/sched.h>: the flags that are not namespace flags (those live in namespaces.py).
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_PIDFD = 0x00001000
CLONE_PTRACE = 0x00002000
CLONE_VFORK = 0x00004000
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
CLONE_SYSVSEM = 0x00040000
CLONE_SETTLS = 0x00080000
CLONE_PARENT_SETTID = 0x00100000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_CHILD_SETTID = 0x01000000
CLONE_CLEAR_SIGHAND = 0x100000000
CLONE_INTO_CGROUP = 0x200000000

# Flags a Python-level clone may carry: the child gets its own copy of everything that
# matters to the interpreter, and no pointer fields of clone_args are needed.
_ALLOWED_FLAGS = (ALL_CLONE_NEW | CLONE_FS | CLONE_FILES | CLONE_PARENT | CLONE_SYSVSEM
                  | CLONE_CLEAR_SIGHAND)

# kernel/pid_namespace.c: MAX_PID_NS_LEVEL (not exported in a uapi header). set_tid may
# hold at most one entry per level.
MAX_PID_NS_LEVEL = 32


class CloneArgs(ctypes.Structure):
    """``struct clone_args`` from <linux/sched.h>, version 2 (88 bytes, with ``cgroup``)."""

    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("pidfd", ctypes.c_uint64),
        ("child_tid", ctypes.c_uint64),
        ("parent_tid", ctypes.c_uint64),
        ("exit_signal", ctypes.c_uint64),
        ("stack", ctypes.c_uint64),
        ("stack_size", ctypes.c_uint64),
        ("tls", ctypes.c_uint64),
        ("set_tid", ctypes.c_uint64),       # pointer to pid_t[set_tid_size]
        ("set_tid_size", ctypes.c_uint64),
        ("cgroup", ctypes.c_uint64),
    ]


# <linux/sched.h>: CLONE_ARGS_SIZE_VER2
CLONE_ARGS_SIZE_VER2 = 88

_syscall = libc_function("syscall", ctypes.c_long,
                         [ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t], hold_gil=True)


def _pythonapi_void(name: str) -> Any:
    """A fresh ``void name(void)`` function object from the interpreter's C API."""
    func = ctypes.pythonapi[name]
    func.restype = None
    func.argtypes = []
    return func


_before_fork = _pythonapi_void("PyOS_BeforeFork")
_after_fork_parent = _pythonapi_void("PyOS_AfterFork_Parent")
_after_fork_child = _pythonapi_void("PyOS_AfterFork_Child")


def _read_pid_max() -> int | None:
    """/proc/sys/kernel/pid_max of our pid namespace, or None if unreadable (for messages)."""
    try:
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _einval_reason(flags: int, set_tid: Sequence[int]) -> str:
    """Say which of clone3's EINVAL causes for set_tid most likely applies."""
    pid_max = _read_pid_max()
    if pid_max is not None:
        too_big = [pid for pid in set_tid if pid >= pid_max]
        if too_big:
            return f"pid {too_big[0]} is not below pid_max {pid_max}"
    if flags & CLONE_NEWPID and set_tid and set_tid[0] != 1:
        return f"the first task of a new pid namespace must be pid 1, not {set_tid[0]}"
    return (f"{len(set_tid)} levels requested, more than the caller's pid namespace "
            f"depth{' + 1' if flags & CLONE_NEWPID else ''}, or a pid below 1")


def clone3(flags: int, set_tid: Sequence[int], exit_signal: int = signal.SIGCHLD) -> int:
    """Fork this process with ``clone3``, asking for exact pids; return like ``os.fork()``.

    ``set_tid`` holds one pid per pid-namespace level, innermost first: ``[pid]`` for a
    child in our namespace, ``[1, host_pid]`` with ``CLONE_NEWPID``; ``[]`` lets the kernel
    choose. Returns 0 in the child and the child's pid (as our namespace sees it) in the
    parent. The child must end with ``os._exit`` and never return into the caller's
    stack of ``try``/``finally`` blocks unguarded.

    Preconditions: no other thread holds a lock the child will need (fork before starting
    thread pools); CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN when ``set_tid`` is not empty.
    Raises :class:`PidInUse` (EEXIST), :class:`PidNotAvailable` (EINVAL) or
    :class:`SyscallFailed`.
    """
    if flags & ~_ALLOWED_FLAGS:
        raise AssertionError(f"clone3: flags {flags:#x} include {flags & ~_ALLOWED_FLAGS:#x}, "
                             "which a Python-level fork cannot use")
    if len(set_tid) > MAX_PID_NS_LEVEL:
        raise AssertionError(f"clone3: set_tid has {len(set_tid)} entries, "
                             f"at most {MAX_PID_NS_LEVEL} pid namespace levels exist")
    pids = (ctypes.c_int * max(len(set_tid), 1))(*set_tid)
    args = CloneArgs(flags=flags, exit_signal=exit_signal,
                     set_tid=ctypes.addressof(pids) if set_tid else 0,
                     set_tid_size=len(set_tid))

    _before_fork()
    ret = _syscall(NR_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
    if ret == 0:
        _after_fork_child()
        return 0
    err_no = ctypes.get_errno()  # saved by ctypes right after syscall(), before any other call
    _after_fork_parent()
    if ret > 0:
        return ret

    if err_no == errno.EEXIST:
        # The pid our namespace sees is set_tid[1] when the child opens a new pid namespace.
        level = 1 if flags & CLONE_NEWPID and len(set_tid) > 1 else 0
        raise PidInUse(set_tid[level], set_tid)
    if err_no == errno.EINVAL and set_tid:
        raise PidNotAvailable(set_tid, _einval_reason(flags, set_tid))
    raise SyscallFailed(f"clone3(flags={flags:#x}, set_tid={list(set_tid)})", err_no)
