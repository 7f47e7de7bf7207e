"""Forking: create a task with its checkpointed pid and take it over with ptrace.

``spawn_tree`` is where restored processes come into existence (one task shown):

    orchestrator                              new task (a copy of the orchestrator)
    ------------                              --------------------------------------
    clone3(set_tid=[pid])  ------------------> blocks on the go pipe
    PTRACE_SEIZE (O_EXITKILL)
    write "go" ------------------------------> restore/task.py: fds, fs, session, timens
    read the status pipe  <------------------- "R", after the device VMAs' offsets if any
                                              (or one JSON line, then exit)
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
import time
from dataclasses import dataclass, field
from typing import Callable

from pycriu_restore import interruption
from pycriu_restore.files import inherited as inherited_fd
from pycriu_restore.linux import namespaces, ptrace
from pycriu_restore.linux.clone3 import CLONE_PARENT, clone3
from pycriu_restore.linux.waitstatus import WALL, StopKind
from pycriu_restore.plan.model import RestorePlan, Task
from pycriu_restore.plugins.api import Plugin, RestoreContext
from pycriu_restore.restore.errors import FileMismatch, RestoreFailed
from pycriu_restore.restore.pidns import PidNamespace
from pycriu_restore.restore.shared import SharedFds
from pycriu_restore.restore.task import READY, ServiceFds, TaskLink, TreeSetup, parse_ready, run_child
from pycriu_restore.restore.zombie import check_zombie
from pycriu_restore.tracee import DEFAULT_OPTIONS, Tracee

# How long a child may go without a sign of life while it prepares itself (open files, enter
# namespaces): its status pipe, or a plugin working for it (Plugin.last_progress).
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
        with interruption.deferred():  # a stop signal must not cut the rollback short
            self._kill_all()

    def _kill_all(self) -> None:
        # Tasks forked by a task but not yet seized are found through /proc (proc(5):
        # task/TID/children), so none is missed.
        victims = _with_descendants(self.pids)
        # A traced thread other than the leader stays a zombie until its tracer reaps it,
        # and until then the leader cannot be reaped either: so list the threads first.
        threads = {pid: _threads_of(pid) for pid in victims}
        for pid in reversed(victims):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Parents first (victims is in creation order): by the time a parent is reaped, its
        # children are ours (the orchestrator is their subreaper while the restore runs), so
        # each wait below reaps for good, and nothing is left for init to reap later.
        for pid in victims:
            for tid in [t for t in threads[pid] if t != pid] + [pid]:
                try:  # __WALL: as their tracer we may reap tasks that are not our children
                    os.waitpid(tid, WALL)
                except ChildProcessError:
                    pass
        self.pids.clear()
        if self.pidns is not None:
            self.pidns.kill()

    def forget(self) -> None:
        self.pids.clear()
        self.pidns = None


def _threads_of(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _with_descendants(pids: list[int]) -> list[int]:
    out: list[int] = []
    queue = list(pids)
    while queue:
        pid = queue.pop(0)
        if pid in out:
            continue
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    queue.extend(int(x) for x in f.read().split())
        except OSError:
            pass  # already gone
    return out


@dataclass
class SpawnedTask:
    """A created task, stopped under ptrace, ready for the bootstrap region."""

    task: Task
    pid: int  # in the orchestrator's pid namespace (differs from task.pid under --pid-ns)
    tracee: Tracee  # the main thread
    service: ServiceFds
    threads: list[Tracee] = field(default_factory=list)  # the others, once the blob made them
    # Device mappings (MappedFile.plugin): VMA start -> the pgoff its plugin gave in the task.
    device_offsets: dict[int, int] = field(default_factory=dict)


@dataclass
class SpawnedTree:
    """What spawn_tree made: the live tasks, stopped under ptrace, and the zombies."""

    tasks: list[SpawnedTask]  # plan order, zombies left out
    zombies: dict[int, int]  # checkpointed pid -> pid in our namespace; never traced


def spawn_tree(plan: RestorePlan, rollback: Rollback, pidns: PidNamespace | None,
               plugins: tuple[Plugin, ...] = (), plugin_ctx: RestoreContext | None = None,
               after_root_fork: Callable[[], None] | None = None, restore_sibling: bool = False,
               inherited: dict[str, int] | None = None) -> SpawnedTree:
    """Create every task of the plan with its pid, let each prepare itself, hold all stopped.

    The orchestrator forks only the root; each task forks its own children during its
    preparation (so parents are right), and waits on its go pipe until the orchestrator has
    seized it. Tasks are taken over parents first. Precondition: the orchestrator has no
    other threads (clone3 copies only the caller). On failure the error names the task and
    the step; the caller's ``rollback`` kills what was made. ``after_root_fork`` runs in the
    orchestrator as soon as the root exists (POST_FORKING: threads may start from then on).
    A zombie is not seized: it has exited by the time its parent is ready, and is checked
    in /proc (restore/zombie.py). ``restore_sibling``: the root is born our parent's child
    (CLONE_PARENT, CRIU's --restore-sibling); we still trace it, and our parent reaps it.
    ``inherited``: --inherit-fd RESOURCE -> our fd, handed to the root (files/inherited.py).
    """
    links: dict[int, TaskLink] = {}
    ours: dict[int, tuple[int, int]] = {}  # pid -> (go write end, status read end)

    def progress() -> float:  # a task waiting on a plugin's work is alive while it goes on
        return max((plugin.last_progress() for plugin in plugins), default=0.0)

    for task in plan.tasks:
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        links[task.pid] = TaskLink(go_fd=go_r, status_fd=status_w, service=ServiceFds.for_task(task))
        ours[task.pid] = (go_w, status_r)
    mntns_fd = pidns.ns_fd("mnt") if pidns is not None else None
    tree = TreeSetup(plan=plan, links=links, parked=SharedFds.layout(plan), mntns_fd=mntns_fd,
                     plugins=plugins, plugin_ctx=plugin_ctx,
                     orchestrator_fds=frozenset(fd for ends in ours.values() for fd in ends))
    try:
        # Above every number of the layout: the root keeps them until its objects are parked.
        inherited_fd.hand_over(inherited or {}, tree.parked.fd_layout.temp_base)
        with interruption.deferred():  # no stop signal between the clone and rollback.add
            pid = _clone_with_pid(plan.root.pid, pidns, CLONE_PARENT if restore_sibling else 0)
            if pid == 0:
                run_child(plan.root, tree)  # never returns
            rollback.add(pid)
    finally:
        inherited_fd.release()
        for link in links.values():
            os.close(link.go_fd)
            os.close(link.status_fd)
        if mntns_fd is not None:
            os.close(mntns_fd)
    spawned: list[SpawnedTask] = []
    zombies: dict[int, int] = {}
    outer = {plan.root.pid: pid}
    try:
        if after_root_fork is not None:  # inside: if it fails, our pipe ends are closed too
            after_root_fork()
        for task in plan.tasks:
            if task.pid not in outer:  # forked by its parent, which is spawned already
                parent = outer[task.ppid]
                outer[task.pid] = _child_outer_pid(parent, task.pid, pidns is not None)
                rollback.add(outer[task.pid])
            go_w, status_r = ours[task.pid]
            if task.is_zombie:
                _check_zombie(task, outer[task.pid], status_r, progress)
                zombies[task.pid] = outer[task.pid]
                continue
            spawned.append(_take_over(task, outer[task.pid], go_w, status_r, links[task.pid].service, progress))
    finally:
        for go_w, status_r in ours.values():
            os.close(go_w)
            os.close(status_r)
    return SpawnedTree(tasks=spawned, zombies=zombies)


def _check_zombie(task: Task, pid: int, status_r: int, progress: Callable[[], float]) -> None:
    """A zombie's report, then its state: exited, unreaped, with the dumped wait status.

    Precondition: its parent has reported ready, which it does only after the zombie exited.
    """
    report = _read_status(status_r, task.pid, progress)
    if report != READY:
        _raise_child_failure(task.pid, report)
    problem = check_zombie(pid, task)
    if problem is not None:
        raise RestoreFailed(task.pid, "zombie", problem)


def _take_over(task: Task, pid: int, go_w: int, status_r: int, service: ServiceFds,
               progress: Callable[[], float]) -> SpawnedTask:
    """Seize a task that waits on its go pipe, let it prepare, and wait for its SIGSTOP."""
    # TRACECLONE: the threads the blob creates are traced from their first instruction.
    # SUSPEND_SECCOMP (as CRIU's attach_to_tasks): the blob installs the task's seccomp
    # filters before its creds, timers and rt_sigreturn, and we inject munmap after; none
    # of that may be filtered. Threads auto-attached by TRACECLONE inherit the option, and
    # it ends with the detach. Only for such tasks: it needs CAP_SYS_ADMIN.
    options = DEFAULT_OPTIONS | ptrace.PTRACE_O_TRACECLONE
    if any(thread.seccomp_mode for thread in task.threads):
        options |= ptrace.PTRACE_O_SUSPEND_SECCOMP
    tracee = Tracee.seize(pid, options)
    os.write(go_w, b"g")
    report = _read_status(status_r, task.pid, progress)
    device_offsets = parse_ready(report)
    if device_offsets is None:
        _raise_child_failure(task.pid, report)
    stop = tracee.wait_stop()
    if not (stop.kind is StopKind.SIGNAL and stop.signal == signal.SIGSTOP):
        raise RestoreFailed(task.pid, "prepare", f"expected the task to stop itself, got {stop.describe()}")
    return SpawnedTask(task=task, pid=pid, tracee=tracee, service=service, device_offsets=device_offsets or {})


def _child_outer_pid(parent_pid: int, inner_pid: int, in_pidns: bool) -> int:
    """The pid, in our namespace, of the child ``inner_pid`` of ``parent_pid`` (proc(5) children)."""
    if not in_pidns:
        return inner_pid
    with open(f"/proc/{parent_pid}/task/{parent_pid}/children") as f:
        candidates = [int(x) for x in f.read().split()]
    for pid in candidates:
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
        if int(nspid[-1]) == inner_pid:
            return pid
    raise RestoreFailed(inner_pid, "fork", f"not found among the children of {parent_pid}: its parent did not create it")


def _clone_with_pid(pid: int, pidns: PidNamespace | None, flags: int = 0) -> int:
    """clone3 with set_tid=[pid] and ``flags``, in the new pid namespace if there is one (0 in the child)."""
    # clone3 refuses CLONE_PARENT with an exit signal (EINVAL, kernel/fork.c clone3_args_valid):
    # the child gets its new parent's, that of the process that made us.
    exit_signal = 0 if flags & CLONE_PARENT else signal.SIGCHLD
    if pidns is None:
        return clone3(flags, [pid], exit_signal)
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    target = pidns.ns_fd("pid")
    # setns(CLONE_NEWPID) changes only where our children are born, not our own pid.
    namespaces.setns(target, namespaces.CLONE_NEWPID)
    try:
        child = clone3(flags, [pid], exit_signal)
    except BaseException:
        namespaces.setns(own, namespaces.CLONE_NEWPID)
        raise
    if child == 0:
        return 0  # the new task: it may not setns back to an ancestor namespace (EINVAL)
    namespaces.setns(own, namespaces.CLONE_NEWPID)
    os.close(own)
    os.close(target)
    return child


def _read_status(fd: int, pid: int, progress: Callable[[], float]) -> bytes:
    """Everything the child wrote before closing its end.

    Fails after PREPARE_TIMEOUT_S without a sign of life: a write of the child's, or work a
    plugin does for it (``progress()``: the time of the plugins' last progress).
    """
    chunks = []
    alive = time.monotonic()
    while True:
        left = max(alive, progress()) + PREPARE_TIMEOUT_S - time.monotonic()
        readable = select.select([fd], [], [], left)[0] if left > 0 else []
        if not readable:
            if max(alive, progress()) + PREPARE_TIMEOUT_S > time.monotonic():
                continue  # a plugin worked for the task meanwhile
            raise RestoreFailed(pid, "prepare", f"no answer from the task within {PREPARE_TIMEOUT_S:g} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        alive = time.monotonic()


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
