"""Forking: create a task with its checkpointed pid and take it over with ptrace.

``spawn_task`` is the one place a restored process comes into existence:

    orchestrator                              new task (a copy of the orchestrator)
    ------------                              --------------------------------------
    clone3(set_tid=[pid])  ------------------> blocks on the go pipe
    PTRACE_SEIZE (O_EXITKILL)
    write "go" ------------------------------> restore/task.py: fds, fs, session, timens
    read the status pipe  <------------------- "R" (or one JSON line, then exit)
    wait for the SIGSTOP stop  <-------------- kill(self, SIGSTOP)

Seizing before the child starts its preparation means no stop can be missed, and
O_EXITKILL means that if pycrestore dies at any later point the half-restored task dies
with it. ``Rollback`` remembers every pid created, so a failure anywhere kills them all.
"""

from __future__ import annotations

import json
import os
import select
import signal
from dataclasses import dataclass, field

from pycriu_restore.linux import namespaces
from pycriu_restore.linux.clone3 import clone3
from pycriu_restore.linux.waitstatus import StopKind
from pycriu_restore.plan.model import Task, TimeOffsets
from pycriu_restore.restore.errors import FileMismatch, RestoreFailed
from pycriu_restore.restore.pidns import PidNamespace
from pycriu_restore.restore.task import READY, ChildSetup, ServiceFds, run_child
from pycriu_restore.tracee import Tracee

# How long a child may take to prepare itself (open files, enter namespaces).
PREPARE_TIMEOUT_S = 30.0


@dataclass
class Rollback:
    """Every task made so far, so that a failed restore leaves nothing behind.

    ``kill_all`` SIGKILLs and reaps them in reverse order of creation; a task that is
    already gone is fine. Call ``forget`` once the restore has succeeded.
    """

    pids: list[int] = field(default_factory=list)
    pidns: PidNamespace | None = None

    def add(self, pid: int) -> None:
        self.pids.append(pid)

    def kill_all(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()
        if self.pidns is not None:
            self.pidns.kill()

    def forget(self) -> None:
        self.pids.clear()
        self.pidns = None


@dataclass
class SpawnedTask:
    """A created task, stopped under ptrace, ready for the bootstrap region."""

    task: Task
    pid: int  # in the orchestrator's pid namespace (differs from task.pid under --pid-ns)
    tracee: Tracee
    service: ServiceFds


def spawn_task(task: Task, rollback: Rollback, timens: TimeOffsets | None, pidns: PidNamespace | None) -> SpawnedTask:
    """Create ``task`` with its pid, let it prepare itself, and hold it stopped under ptrace.

    Precondition: the orchestrator has no other threads (clone3 copies only the caller).
    On failure the child is killed and the error names the task and the failed step.
    """
    service = ServiceFds.for_task(task)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    mntns_fd = pidns.ns_fd("mnt") if pidns is not None else None
    setup = ChildSetup(go_fd=go_r, status_fd=status_w, service=service, timens=timens, mntns_fd=mntns_fd)
    try:
        pid = _clone_with_pid(task.pid, pidns)
        if pid == 0:
            run_child(task, setup)  # never returns
        rollback.add(pid)
    finally:
        os.close(go_r)
        os.close(status_w)
        if mntns_fd is not None:
            os.close(mntns_fd)
    try:
        tracee = Tracee.seize(pid)
        os.write(go_w, b"g")
        report = _read_status(status_r, task.pid)
    finally:
        os.close(go_w)
        os.close(status_r)
    if report != READY:
        _raise_child_failure(task.pid, report)
    stop = tracee.wait_stop()
    if not (stop.kind is StopKind.SIGNAL and stop.signal == signal.SIGSTOP):
        raise RestoreFailed(task.pid, "prepare", f"expected the task to stop itself, got {stop.describe()}")
    return SpawnedTask(task=task, pid=pid, tracee=tracee, service=service)


def _clone_with_pid(pid: int, pidns: PidNamespace | None) -> int:
    """clone3 with set_tid=[pid], in the new pid namespace if there is one (0 in the child)."""
    if pidns is None:
        return clone3(0, [pid])
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    target = pidns.ns_fd("pid")
    # setns(CLONE_NEWPID) changes only where our children are born, not our own pid.
    namespaces.setns(target, namespaces.CLONE_NEWPID)
    try:
        child = clone3(0, [pid])
    except BaseException:
        namespaces.setns(own, namespaces.CLONE_NEWPID)
        raise
    if child == 0:
        return 0  # the new task: it may not setns back to an ancestor namespace (EINVAL)
    namespaces.setns(own, namespaces.CLONE_NEWPID)
    os.close(own)
    os.close(target)
    return child


def _read_status(fd: int, pid: int) -> bytes:
    """Everything the child wrote before closing its end (bounded by PREPARE_TIMEOUT_S)."""
    chunks = []
    while True:
        readable, _, _ = select.select([fd], [], [], PREPARE_TIMEOUT_S)
        if not readable:
            raise RestoreFailed(pid, "prepare", f"no answer from the task within {PREPARE_TIMEOUT_S:.0f} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _raise_child_failure(pid: int, report: bytes) -> None:
    """Turn the child's JSON report into the error it stands for."""
    try:
        failure = json.loads(report.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RestoreFailed(pid, "prepare", "the task died before it could say why") from None
    step, cause, path = failure.get("step", "prepare"), failure.get("cause", "?"), failure.get("path")
    if path and ("No such file" in cause or "Permission denied" in cause):
        raise FileMismatch(path, f"{cause} (task {pid}: {step})")
    raise RestoreFailed(pid, step, cause)
