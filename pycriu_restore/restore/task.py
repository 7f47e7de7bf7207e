"""What a new task does for itself, still running Python, before it is taken over by ptrace.

Right after clone3 the child is a copy of the orchestrator. It turns itself into the
checkpointed task's shell, in this order (CRIU's restore task does the same in C,
research/criu-restore-internals.md §1.2):

 1. wait until the orchestrator has seized it (so no stop can be missed);
 2. move the orchestrator's fds out of the way: keep only the status pipe, at a high fd;
 3. join the new mount namespace (``--pid-ns``: it has its own /proc);
 4. enter a new time namespace whose clocks continue from the dump (root task only);
 5. become a session leader (setsid) as the images say;
 6. root, cwd, umask;
 7. open every fd of the image at its number, with its flags and file position;
 8. open the files the blob needs at the service fds (pages image, mapped files, exe);
 9. report "ready" on the status pipe, close it, and stop itself with SIGSTOP.

The orchestrator then never lets it run Python again: it points the registers at the blob.
Any failure is written to the status pipe as one JSON line and the child exits; it never
returns into the orchestrator's code.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from typing import NoReturn

from pycriu_restore.linux import namespaces
from pycriu_restore.files import pipe, regular
from pycriu_restore.plan.model import OpenFile, PipeEnd, Task, TimeOffsets

READY = b"R"
# Exit codes of a child that failed before the blob (the JSON line says why).
CHILD_FAILED = 111
CHILD_NOT_TAKEN_OVER = 112

_NSEC_PER_SEC = 1_000_000_000


@dataclass(frozen=True)
class ServiceFds:
    """Fd numbers, above every fd of the image, where the child leaves files for the blob.

    The blob reads pages through ``pages``, maps files through ``mapped`` and sets the exe
    link from ``exe``, then closes them all; the restored task never sees them.
    """

    pages: int
    exe: int
    mapped: dict[tuple[str, int], int] = field(default_factory=dict)  # (path, open flags) -> fd

    @staticmethod
    def for_task(task: Task) -> "ServiceFds":
        base = max([f.fd for f in task.files] + [2]) + 1
        base = max(base, 64)  # leave low numbers alone: they are the task's
        mapped: dict[tuple[str, int], int] = {}
        for vma in task.vmas:
            if vma.file is not None:
                key = (vma.file.path, vma.file.open_flags)
                if key not in mapped:
                    mapped[key] = base + 2 + len(mapped)
        return ServiceFds(pages=base, exe=base + 1, mapped=mapped)

    @property
    def all(self) -> list[int]:
        return [self.pages, self.exe, *self.mapped.values()]


@dataclass(frozen=True)
class ChildSetup:
    """What the orchestrator hands the child besides the task itself."""

    go_fd: int  # read end: one byte arrives once the orchestrator has seized us
    status_fd: int  # write end: READY, or one JSON line describing the failure
    service: ServiceFds
    timens: TimeOffsets | None = None  # set for the root task: create the time namespace
    mntns_fd: int | None = None  # --pid-ns: the mount namespace with the new /proc


class ChildStepFailed(Exception):
    """A step of the in-child preparation failed; carried to the orchestrator as JSON."""

    def __init__(self, step: str, cause: str, path: str | None = None) -> None:
        super().__init__(f"{step}: {cause}")
        self.step, self.cause, self.path = step, cause, path


def run_child(task: Task, setup: ChildSetup) -> NoReturn:
    """The body of a freshly cloned task. Never returns: it stops for the orchestrator or exits."""
    status_fd = setup.status_fd
    try:
        os.read(setup.go_fd, 1)
        status_fd = _keep_only_service_fds(setup)
        if setup.mntns_fd is not None:
            _step("join mount namespace", lambda: namespaces.setns(_HIGH_MNTNS_FD, namespaces.CLONE_NEWNS))
            os.close(_HIGH_MNTNS_FD)
        if setup.timens is not None:
            _step("time namespace", lambda: _enter_time_namespace(setup.timens))
        if task.sid == task.pid:
            _step("setsid", os.setsid)
        _restore_fs(task)
        _open_task_files(task)
        _open_service_files(task, setup.service)
        os.write(status_fd, READY)
        os.close(status_fd)
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(CHILD_NOT_TAKEN_OVER)  # only reached if the orchestrator let us continue
    except ChildStepFailed as err:
        _report(status_fd, {"step": err.step, "cause": err.cause, "path": err.path})
    except BaseException as err:  # noqa: BLE001 - anything must become a report, never a return
        _report(status_fd, {"step": "prepare", "cause": f"{type(err).__name__}: {err}", "path": None})
    os._exit(CHILD_FAILED)


# The status pipe and mount-namespace fd are parked at fixed high numbers: above any fd an
# image can name (RLIMIT_NOFILE is at most 1048576; the default soft limit here is 1024),
# out of the way while the task's own fds are installed.
_HIGH_STATUS_FD = 1000
_HIGH_MNTNS_FD = 1001


def _step(name: str, action) -> object:
    try:
        return action()
    except OSError as err:
        raise ChildStepFailed(name, err.strerror or str(err), getattr(err, "filename", None)) from err
    except Exception as err:  # the linux/ layer raises PycrestoreError subclasses
        raise ChildStepFailed(name, str(err)) from err


def _keep_only_service_fds(setup: ChildSetup) -> int:
    """Close every fd inherited from the orchestrator except the status pipe (and mntns fd)."""
    keep = {os.dup2(setup.status_fd, _HIGH_STATUS_FD, inheritable=False)}
    if setup.mntns_fd is not None:
        keep.add(os.dup2(setup.mntns_fd, _HIGH_MNTNS_FD, inheritable=False))
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory fd of listdir itself, already closed
    return _HIGH_STATUS_FD


def _enter_time_namespace(t: TimeOffsets) -> None:
    """New time namespace whose monotonic and boottime clocks read as they did at dump.

    The offsets are written before any process is in the namespace (time_namespaces(7)),
    then the task joins it with setns: allowed because it is single-threaded.
    """
    now_mono = _clock_ns(time_clock="monotonic")
    now_boot = _clock_ns(time_clock="boottime")
    mono_off = t.monotonic_sec * _NSEC_PER_SEC + t.monotonic_nsec - now_mono
    boot_off = t.boottime_sec * _NSEC_PER_SEC + t.boottime_nsec - now_boot
    namespaces.unshare(namespaces.CLONE_NEWTIME)
    namespaces.set_timens_offsets(mono_off, boot_off)
    fd = os.open("/proc/self/ns/time_for_children", os.O_RDONLY)
    try:
        namespaces.setns(fd, namespaces.CLONE_NEWTIME)
    finally:
        os.close(fd)


def _clock_ns(time_clock: str) -> int:
    import time

    clock = time.CLOCK_MONOTONIC if time_clock == "monotonic" else time.CLOCK_BOOTTIME
    return time.clock_gettime_ns(clock)


def _restore_fs(task: Task) -> None:
    if task.root != "/":
        _step(f"chroot {task.root}", lambda: os.chroot(task.root))
    _step(f"chdir {task.cwd}", lambda: os.chdir(task.cwd))
    os.umask(task.umask)


def _open_task_files(task: Task) -> None:
    """Install each fd of the image at its number (files/: one module per kind of file)."""
    pipe_ends = [f for f in task.files if isinstance(f, PipeEnd)]
    if pipe_ends:
        _step("pipes", lambda: pipe.restore(pipe_ends, task.pipes))
    for f in task.files:
        if isinstance(f, OpenFile):
            _step(f"open fd {f.fd} ({f.path})", lambda f=f: regular.restore(f))


def _open_service_files(task: Task, service: ServiceFds) -> None:
    """Open the pages image, the exe and every mapped file at their service fds."""
    wanted = [(task.pages_path, os.O_RDONLY, service.pages), (task.mm.exe.path, os.O_RDONLY, service.exe)]
    wanted += [(path, flags, fd) for (path, flags), fd in service.mapped.items()]
    for path, flags, fd in wanted:

        def install(path=path, flags=flags, fd=fd) -> None:
            tmp = os.open(path, flags | os.O_CLOEXEC)
            os.dup2(tmp, fd, inheritable=False)
            os.close(tmp)

        _step(f"open {path}", install)


def _report(status_fd: int, failure: dict) -> None:
    try:
        os.write(status_fd, json.dumps(failure).encode() + b"\n")
    except OSError:
        pass  # the orchestrator is gone; O_EXITKILL ends us anyway
