"""Zombies: a task that had exited at dump, not yet reaped, is forked again and exits at once.

A zombie is nothing but a pid in its parent's list of children, with the wait status the
parent has not collected (``Task.exit_status``). Restoring one means: its parent forks it
with its pid, it takes its session, group and name, and exits with that status, and the
parent does not reap it. It gets no memory, files or registers, and it is never traced.

What CRIU does (criu/cr-restore.c restore_one_zombie, wait_exiting_children;
criu/pie/restorer.c wait_zombies): the zombie is forked like any task, waits until every
task has finished the CR_STATE_RESTORE stage, then exits with the code, or kills itself with
the signal (dumpable cleared, so no core file is written). Its parent, at that point inside
the restorer with CRIU's own SIGCHLD handler installed, waits for it with
waitid(WEXITED | WNOWAIT), which does not reap; only after that does it install its dumped
SIGCHLD action and queue its dumped pending signals. The reasons:

 1. The parent's dumped SIGCHLD action must not be in force when the zombie exits: SIG_IGN or
    SA_NOCLDWAIT make the kernel reap the child at once (kernel/signal.c do_notify_parent),
    and a handler would run for an exit the application saw long before the dump, and might
    reap it.
 2. The SIGCHLD of that exit must not stay pending in the restored parent, for the same reason.
 3. Until CR_STATE_RESTORE ends, CRIU takes any child's death (seen by SIGCHLD) as a failed
    restore, so a zombie may die only after it.

pycrestore sees a failed task through its status pipe and ptrace, never through SIGCHLD, so
3 does not bind here; and the blob installs the parent's dumped actions and pending signals
during MEMORY, where the parent cannot take a signal itself. So the zombie exits during FORK,
while its parent is still in Python (restore/task.py), and the parent keeps 1 and 2 itself:
before forking, it sets SIGCHLD to SIG_DFL (the orchestrator's caller may ignore SIGCHLD,
and fork keeps that) and blocks it, so nothing is reaped and the parent, seized by the
orchestrator, gets no signal-delivery stop; after forking it waits for each zombie with
waitid(WEXITED | WNOWAIT), takes the one pending SIGCHLD with sigtimedwait, and puts its mask
back. The blob later finds no trace of the exits. The orchestrator checks each zombie in
/proc (state Z, exit_code) once its parent has reported ready (restore/tree.py).
"""

from __future__ import annotations

import os
import signal
from typing import Iterable, NoReturn

from pycriu_restore.linux import selfctl
from pycriu_restore.plan.model import Task

WAIT_TERMSIG_MASK = 0x7F  # wait(2): bits 0-6 of a wait status hold the killing signal
ZOMBIE_STATE = "Z"  # proc(5) /proc/PID/stat field 3
STAT_EXIT_CODE_FIELD = 52  # proc(5): /proc/PID/stat field 52, exit_code (since Linux 3.5)
# Exit code if the zombie outlives the signal it sent itself (a bug): the orchestrator's
# /proc check then reports the wrong status.
SIGNAL_DID_NOT_KILL = 125


def hold_child_exits() -> set[int]:
    """In a parent of zombies, before it forks: SIGCHLD to SIG_DFL and blocked.

    Returns the signal mask to put back with :func:`collect_zombies`. Not for SIG_IGN: a
    child of a parent that ignores SIGCHLD is reaped by the kernel as it exits.
    """
    selfctl.set_default_action(signal.SIGCHLD)
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


def collect_zombies(pids: Iterable[int], old_mask: set[int]) -> None:
    """Wait until each child in ``pids`` has exited, without reaping it; drop their SIGCHLD.

    Precondition: :func:`hold_child_exits` ran before the children were forked. One
    SIGCHLD stands for any number of exits (standard signals do not queue), so one
    sigtimedwait after all the waits takes it.
    """
    for pid in pids:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    signal.sigtimedwait({signal.SIGCHLD}, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def exit_as_zombie(task: Task, status_fd: int, ready: bytes) -> NoReturn:
    """The zombie's own end: take its name, report ``ready``, exit with ``task.exit_status``.

    Precondition: the task has its pid, session and group (restore/task.py). A status with
    a signal ends the task by that signal, sent to itself with its default action and
    unblocked; dumpable is cleared first so that no core file is written (as CRIU does;
    the plan refuses a status with the core-dump flag).
    """
    selfctl.set_name(task.comm)
    termsig = task.exit_status & WAIT_TERMSIG_MASK
    if termsig:
        selfctl.set_dumpable(False)
        selfctl.set_default_action(termsig)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {termsig})
    os.write(status_fd, ready)
    os.close(status_fd)
    if termsig:
        os.kill(os.getpid(), termsig)  # delivered before kill() returns: unblocked, default, fatal
        os._exit(SIGNAL_DID_NOT_KILL)
    os._exit(task.exit_status >> 8)


def check_zombie(pid: int, task: Task) -> str | None:
    """None if ``pid`` (ours) is a zombie with the task's wait status, else what is wrong."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        return "it is gone (reaped)"
    # proc(5): split after the last ')', since comm may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2:].split()
    state, exit_code = fields[0], int(fields[STAT_EXIT_CODE_FIELD - 3])
    if state != ZOMBIE_STATE or exit_code != task.exit_status:
        return (f"found state {state} with exit_code {exit_code:#x}, "
                f"expected {ZOMBIE_STATE} with {task.exit_status:#x}")
    return None
