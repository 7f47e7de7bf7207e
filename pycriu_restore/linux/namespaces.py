"""Namespaces: ``unshare``, ``setns``, the ``CLONE_NEW*`` flags, and time-namespace offsets.

``os.unshare`` and ``os.setns`` exist only from Python 3.12, so both are ctypes calls to
libc here. The ``CLONE_NEW*`` flags are shared by ``unshare(2)``, ``setns(2)`` (as the
``nstype``) and ``clone3(2)`` (``linux.clone3`` imports them from here).

Two orderings matter to the caller (see ``unshare(2)``, ``pid_namespaces(7)``,
``time_namespaces(7)``):

* after ``unshare(CLONE_NEWPID)`` the caller stays in its old pid namespace; its *next
  child* is pid 1 of the new one.
* after ``unshare(CLONE_NEWTIME)`` the caller also stays in its old time namespace; the
  offsets must be written (:func:`set_timens_offsets`) *before* the first child is made,
  because the kernel refuses changes (EACCES) once a task lives in the namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os

from pycriu_restore.linux.errors import LinuxError, os_errors
from pycriu_restore.linux.libc import libc_function, raise_errno

# <linux/sched.h>
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

ALL_CLONE_NEW = (CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS
                 | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)

# Clock names accepted by /proc/PID/timens_offsets (proc(5)); the numeric ids would be
# CLOCK_MONOTONIC = 1 and CLOCK_BOOTTIME = 7 from <linux/time.h>.
_TIMENS_CLOCKS = ("monotonic", "boottime")
NSEC_PER_SEC = 1_000_000_000

_unshare = libc_function("unshare", ctypes.c_int, [ctypes.c_int])
_setns = libc_function("setns", ctypes.c_int, [ctypes.c_int, ctypes.c_int])


def _check_flags(op: str, flags: int) -> None:
    """Assert that ``flags`` holds only CLONE_NEW* bits (anything else is a caller bug)."""
    if flags & ~ALL_CLONE_NEW:
        raise AssertionError(f"{op}: flags {flags:#x} hold bits that are not CLONE_NEW* "
                             f"({flags & ~ALL_CLONE_NEW:#x})")


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces of the kinds in ``flags`` (CLONE_NEW*).

    Precondition: the process is single-threaded if ``CLONE_NEWUSER`` is asked for (the
    kernel's rule), and it has CAP_SYS_ADMIN for the others. For pid and time namespaces
    only the children made afterwards enter the new namespace (see the module docstring).
    """
    _check_flags("unshare", flags)
    with os_errors(f"unshare({flags:#x})"):
        if _unshare(flags) != 0:
            raise_errno("unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Move the calling process into the namespace that ``fd`` refers to.

    ``fd`` is an open /proc/PID/ns/* file (or a pidfd); ``nstype`` is one CLONE_NEW* flag
    the namespace must be of, or 0 to accept any kind. The caller keeps and closes ``fd``.
    """
    _check_flags("setns", nstype)
    with os_errors(f"setns(fd {fd}, nstype {nstype:#x})"):
        if _setns(fd, nstype) != 0:
            raise_errno("setns")


def timens_offsets_text(monotonic_ns: int, boottime_ns: int) -> str:
    """Format the two offsets as /proc/PID/timens_offsets expects them (proc(5)).

    Each line is ``<clock> <secs> <nanosecs>`` with ``0 <= nanosecs < 1e9``; a negative
    offset has negative seconds, so -1.5 s is ``-2 500000000`` (floor division).
    """
    lines = []
    for clock, offset_ns in zip(_TIMENS_CLOCKS, (monotonic_ns, boottime_ns)):
        secs, nsecs = divmod(offset_ns, NSEC_PER_SEC)
        lines.append(f"{clock} {secs} {nsecs}\n")
    return "".join(lines)


def set_timens_offsets(monotonic_ns: int, boottime_ns: int) -> None:
    """Set the clock offsets of the time namespace this process's children will live in.

    Preconditions: ``unshare(CLONE_NEWTIME)`` was called, and no child has been made since
    (the kernel answers EACCES once a task is in the namespace). The offsets are added to
    CLOCK_MONOTONIC and CLOCK_BOOTTIME as those children see them; CRIU records them in the
    checkpoint so that a restored task's clocks do not jump back.
    """
    path = "/proc/self/timens_offsets"
    text = timens_offsets_text(monotonic_ns, boottime_ns)
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as err:
        raise LinuxError(f"{path}: cannot open: {err.strerror} (is CONFIG_TIME_NS set?)",
                         errno=err.errno) from err
    try:
        # One write: the kernel parses the whole buffer and applies all offsets or none.
        os.write(fd, text.encode())
    except OSError as err:
        hint = ("a task already lives in the new time namespace, or unshare(CLONE_NEWTIME) "
                "was not called" if err.errno == errno.EACCES else err.strerror)
        raise LinuxError(f"{path}: writing {text.strip()!r} failed: {hint}",
                         errno=err.errno) from err
    finally:
        os.close(fd)
