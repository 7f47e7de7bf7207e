"""Fault injection, for tests only: make one named point of a restore fail, to prove its failure path.

Set ``PYCRESTORE_FAULT=<point>[:<n>]`` in pycrestore's environment and the n-th time (from 1,
default 1) the restore reaches ``<point>``, that point fails as a system call would: it raises
:class:`InjectedFault`, an ``OSError`` with errno EIO, which each layer handles as it handles
any failing system call (the child's report, the ptrace layer's ``LinuxError``, the fill pool's
``FillError`` ...). ``blob.<step>`` points are passed to the restorer blob instead (its
``fault_step`` argument, restorer_blob/abi.h): the blob fails that step with EIO and reports
it as it reports any failed step.

The variable is read once, when this module is imported. Unset (the normal path), every
point is one truth test of an empty dict. Points are single calls, so the code around them
reads as without them::

    faults.point("task.session")                 # a fixed point
    faults.point("task.install_fd", kind.fd_type)  # one per kind: task.install_fd.PIPE

The points, and where each is (tests/test_fault_injection.py runs every one of them):

    stage.plan ... stage.resume   restore/timeline.py, as each Stage begins (orchestrator)
    ptrace                        linux/ptrace.py, every ptrace request (use :n for the n-th)
    bootstrap.mmap                orchestrator.py, the mmap of the bootstrap region
    bootstrap.write_memory        orchestrator.py, writing the blob into the task
    task.start ... task.service_files  restore/task.py, each step of the in-task preparation
    task.install_fd.<KIND>        restore/task.py, installing an fd of that kind (REG, PIPE ...)
    amdgpu.restore_init, amdgpu.post_forking, amdgpu.fill   plugins/amdgpu/ (orchestrator side)
    blob.<step>                   restorer_blob/restorer.c, BLOB_STEP_<STEP> (e.g. blob.fill_pages)
    blob.fill_worker              restorer.c, every fill worker of step FILL_PAGES fails its first
                                  batch (BLOB_FAULT_FILL_WORKER; only where a task fills with threads)

``PYCRESTORE_FAULT_FDS=<file>`` (only with a fault armed) writes, at exit, the fds this
process holds that it did not hold when this module was imported: the test's check that a
failed restore closes what it opened.
"""

from __future__ import annotations

import atexit
import errno
import os

ENV_VAR = "PYCRESTORE_FAULT"
FDS_ENV_VAR = "PYCRESTORE_FAULT_FDS"
BLOB_PREFIX = "blob."


class InjectedFault(OSError):
    """The failure a fault point raises: EIO, naming the point and the count."""

    def __init__(self, point: str, count: int) -> None:
        super().__init__(errno.EIO, f"{os.strerror(errno.EIO)} (injected fault at {point}, reach {count})")
        self.point = point


def _parse(spec: str | None) -> dict[str, int]:
    """``"task.fork:2"`` -> ``{"task.fork": 2}``; unset or empty -> ``{}``."""
    if not spec:
        return {}
    name, _, nth = spec.partition(":")
    try:
        n = int(nth) if nth else 1
    except ValueError:
        raise SystemExit(f"pycrestore: {ENV_VAR}={spec!r}: the count after ':' must be a number") from None
    if not name or n < 1:
        raise SystemExit(f"pycrestore: {ENV_VAR}={spec!r}: expected <point>[:<n>], n >= 1")
    return {name: n}


# The armed point and after how many reaches it fails; {} on the normal path.
_ARMED: dict[str, int] = _parse(os.environ.get(ENV_VAR))
_reached: dict[str, int] = {}  # armed runs only: how often each point was reached


def point(name: str, kind: str = "") -> None:
    """Fail here (raise InjectedFault) if this is the armed point's n-th reach; else nothing."""
    if _ARMED:
        _reach(f"{name}.{kind}" if kind else name)


def _reach(name: str) -> None:
    if name not in _ARMED:
        return
    # Threads (the amdgpu fill pool) reach points too; the GIL keeps this count whole.
    count = _reached[name] = _reached.get(name, 0) + 1
    if count == _ARMED[name]:
        raise InjectedFault(name, count)


def blob_step(step_names: dict[int, str]) -> int:
    """The BLOB_STEP_* number the blob must fail (``step_names``: number -> name), or 0.

    Every task's blob gets it: the first task to run that step fails the restore."""
    if not _ARMED:
        return 0
    (name,) = _ARMED
    if not name.startswith(BLOB_PREFIX):
        return 0
    numbers = {step: number for number, step in step_names.items()}
    step = name[len(BLOB_PREFIX):]
    if step not in numbers:
        raise SystemExit(f"pycrestore: {ENV_VAR}={name}: no blob step {step!r} (known: {', '.join(sorted(numbers))})")
    return numbers[step]


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _write_leaked_fds(path: str, baseline: set[int]) -> None:
    """At exit: one line per fd opened since import and still open, with what it points at."""
    lines = []
    for fd in sorted(_open_fds() - baseline):
        try:
            lines.append(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}\n")
        except OSError:
            pass  # the listing's own fd, closed again
    with open(path, "w") as f:
        f.writelines(lines)


if _ARMED and os.environ.get(FDS_ENV_VAR):
    atexit.register(_write_leaked_fds, os.environ[FDS_ENV_VAR], _open_fds())
