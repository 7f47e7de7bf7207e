"""Errors of the process-driving layer (``linux/`` and ``tracee.py``).

This layer knows pids, registers, syscalls and memory, so every error here names the pid
(or the pids asked for) and the operation, and says what the kernel answered::

    ptrace(PTRACE_SEIZE) failed: EPERM (Operation not permitted) (pid=412)
    task 412 is gone: ESRCH during ptrace(PTRACE_GETREGS) (pid=412)
    pid 20000 is already in use: clone3 set_tid=[20000] (pid=20000)

``OSError`` is translated once, by
:func:`os_errors` / :func:`from_os_error`, and raised ``from err`` so that the cause stays in
the chain. The mapping follows psutil's ``_pslinux.py`` habit: ESRCH means the task went
away, whatever the call was.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
from collections.abc import Iterator, Sequence

from pycriu_restore.errors import EXIT_ENVIRONMENT, EXIT_RESTORE, PycrestoreError


def errno_text(err_no: int) -> str:
    """Return ``"EPERM (Operation not permitted)"`` for an errno value, for messages."""
    name = errno_mod.errorcode.get(err_no, f"errno {err_no}")
    return f"{name} ({os.strerror(err_no)})"


class LinuxError(PycrestoreError):
    """A system call made on behalf of the restore failed, or a task misbehaved.

    ``pid`` is the task the call was about (``None`` for calls about the caller itself),
    ``errno`` the kernel's answer where there was one.
    """

    exit_code = EXIT_RESTORE

    def __init__(self, message: str, *, pid: int | None = None,
                 errno: int | None = None, **context: object) -> None:
        self.pid = pid
        self.errno = errno
        super().__init__(message, pid=pid, **context)


class SyscallFailed(LinuxError):
    """A syscall made by this process (not by a tracee) returned an error."""

    def __init__(self, op: str, err_no: int, pid: int | None = None) -> None:
        self.op = op
        super().__init__(f"{op} failed: {errno_text(err_no)}", pid=pid, errno=err_no)


class TaskGone(LinuxError):
    """The task exited, was killed, or is no longer traced by us (ESRCH)."""

    def __init__(self, pid: int, during: str, detail: str = "ESRCH") -> None:
        self.during = during
        super().__init__(f"task {pid} is gone: {detail} during {during}", pid=pid,
                         errno=errno_mod.ESRCH if detail == "ESRCH" else None)


class PidInUse(LinuxError):
    """clone3 was asked for a pid that a live task (or a zombie) already holds (EEXIST).

    This is the machine not matching the images, hence ``EXIT_ENVIRONMENT``.
    """

    exit_code = EXIT_ENVIRONMENT

    def __init__(self, pid: int, set_tid: Sequence[int]) -> None:
        self.set_tid = list(set_tid)
        super().__init__(f"pid {pid} is already in use{_holder(pid)}: clone3 set_tid={self.set_tid}",
                         pid=pid, errno=errno_mod.EEXIST)


def _holder(pid: int) -> str:
    """`` by WHO`` for what holds ``pid`` now (linux/pidusers.py), if anything can be named."""
    from pycriu_restore.linux.pidusers import pid_users  # a sibling: no cycle, loaded on failure

    who = pid_users(pid)
    return f" by {who}" if who else " (by a task that has gone since)"


class PidNotAvailable(LinuxError):
    """clone3 rejected the requested pids (EINVAL): above pid_max, more levels than the
    caller's pid namespace depth, or a first task of a new pid namespace that is not 1.
    """

    exit_code = EXIT_ENVIRONMENT

    def __init__(self, set_tid: Sequence[int], reason: str) -> None:
        self.set_tid = list(set_tid)
        super().__init__(f"clone3 cannot create set_tid={self.set_tid}: {reason}",
                         errno=errno_mod.EINVAL)


class InjectedSyscallFailed(LinuxError):
    """A syscall injected into a tracee ran there and returned ``-errno``."""

    def __init__(self, pid: int, call: str, err_no: int) -> None:
        self.call = call
        super().__init__(f"injected {call} failed in the tracee: {errno_text(err_no)}",
                         pid=pid, errno=err_no)


class UnexpectedStop(LinuxError):
    """waitpid reported a stop (or an exit) other than the one the caller drove the task to."""

    def __init__(self, pid: int, found: str, expected: str) -> None:
        self.found = found
        self.expected = expected
        super().__init__(f"task {pid}: expected {expected}, found {found}", pid=pid)


class MemoryAccessFailed(LinuxError):
    """Reading or writing a tracee's memory stopped short of the requested range."""

    def __init__(self, pid: int, op: str, addr: int, size_bytes: int, done_bytes: int,
                 err_no: int | None, failed_addr: int | None = None) -> None:
        self.addr = addr
        self.size_bytes = size_bytes
        self.done_bytes = done_bytes
        # The first address not reached; with several pieces it need not be addr+done.
        self.failed_addr = addr + done_bytes if failed_addr is None else failed_addr
        cause = errno_text(err_no) if err_no is not None else "no progress"
        super().__init__(
            f"{op} of {size_bytes} bytes at {addr:#x} stopped after {done_bytes} bytes, "
            f"at {self.failed_addr:#x}: {cause}", pid=pid, errno=err_no)


def from_os_error(err: OSError, op: str, pid: int | None) -> LinuxError:
    """Translate an ``OSError`` raised by ``op`` on ``pid`` into this layer's family.

    The caller raises the result ``from err``. ESRCH becomes :class:`TaskGone` when a pid is
    known: for ptrace it means the task died or is not in a ptrace-stop of ours.
    """
    err_no = err.errno if err.errno is not None else 0
    if err_no == errno_mod.ESRCH and pid is not None:
        return TaskGone(pid, op)
    return SyscallFailed(op, err_no, pid)


@contextlib.contextmanager
def os_errors(op: str, pid: int | None = None) -> Iterator[None]:
    """Run a block whose ``OSError`` is translated by :func:`from_os_error`, ``from err``.

    This is the one boundary of the layer: ctypes wrappers raise plain ``OSError``
    (``linux.libc.raise_errno``), and so do ``os`` calls on /proc files.
    """
    try:
        yield
    except OSError as err:
        raise from_os_error(err, op, pid) from err
