"""Tids for the blob's fill workers: threads that exist only while a task's pages are read.

Step FILL_PAGES of the blob (restorer_blob/restorer.c) makes up to BLOB_MAX_FILL_THREADS - 1
threads in the task and joins them before the step ends. Each takes a tid, and that is
the one thing about them that other tasks can see: every blob of the tree runs at once,
and a later step CREATE_THREADS of any task asks clone3 for its checkpointed tids. A
worker that the kernel numbered from its cyclic cursor could hold one of those just then
(the cursor is anywhere; in a new pid namespace it starts at 2, where a container's own
pids are), and that task's restore would fail with EEXIST.

So the orchestrator names each worker's tid (clone3 set_tid): one that no task of the
checkpoint uses (pid, thread, session, process group), that no process has now, and that
no other worker of this restore was given. They come from the top of the pid range,
[pid_max - TID_WINDOW, pid_max), away from where the cyclic cursor usually is and from
where checkpoints' pids usually are, starting at a random point so that two restores at
once seldom pick the same. Should one be taken between the pick and the clone3 anyway,
the blob leaves that worker out (its batches are read by the other fill threads): the
restore is only slower.
"""

from __future__ import annotations

import os
import itertools
from collections.abc import Iterable, Iterator

from pycriu_restore.blob.bootstrap import fill_thread_count
from pycriu_restore.plan.model import RestorePlan, Task

# How far below pid_max the workers' tids are looked for.
TID_WINDOW = 4096
# <linux/threads.h>: the kernel's default pid_max (PID_MAX_DEFAULT), if ours cannot be read.
PID_MAX_DEFAULT = 0x8000


# Environment: at most this many fill threads per task (1: the leader alone). For tests and
# benchmarks, which compare the one-thread fill with the threaded one on one machine.
FILL_THREADS_ENV = "PYCRESTORE_FILL_THREADS"


def usable_cpus() -> int:
    """CPUs a task's fill may use: those this process may run on (its affinity mask, which
    the restored tasks inherit), or PYCRESTORE_FILL_THREADS if set."""
    wanted = os.environ.get(FILL_THREADS_ENV)
    if wanted:
        try:
            return max(1, int(wanted))
        except ValueError:
            raise SystemExit(f"pycrestore: {FILL_THREADS_ENV}={wanted!r}: expected a number of threads") from None
    return len(os.sched_getaffinity(0))


def assign_fill_tids(plan: RestorePlan, tasks: Iterable[Task], cpus: int) -> dict[int, tuple[int, ...]]:
    """For each of ``tasks`` (checkpointed pid -> tids): one tid per fill worker its blob
    should make, fill_thread_count(task.vmas, cpus) - 1 of them (none for a small task).
    Tids no task of ``plan`` uses and no process has now, each given once; fewer than asked
    if the window runs out."""
    reserved = _plan_ids(plan)
    picker = _free_tids(reserved)
    return {task.pid: tuple(_take(picker, fill_thread_count(task.vmas, cpus) - 1)) for task in tasks}


def _plan_ids(plan: RestorePlan) -> set[int]:
    """Every pid the checkpoint's tasks have or will ask for: pids, tids, sessions, groups."""
    ids: set[int] = set()
    for task in plan.tasks:
        ids.update((task.pid, task.sid, task.pgid))
        ids.update(thread.tid for thread in task.threads)
    return ids


def _take(picker: Iterator[int], count: int) -> list[int]:
    return list(itertools.islice(picker, max(0, count)))


def _free_tids(reserved: set[int]) -> Iterator[int]:
    """Yield tids in [pid_max - TID_WINDOW, pid_max) not in ``reserved`` and with no
    /proc entry now, from a random point, each at most once."""
    top = _pid_max()
    low = max(2, top - TID_WINDOW)
    span = top - low
    if span <= 0:
        return
    first = int.from_bytes(os.urandom(4), "little") % span  # not `random`: ~5 ms of imports
    for step in range(span):
        tid = low + (first + step) % span
        if tid not in reserved and not os.path.exists(f"/proc/{tid}"):
            yield tid


def _pid_max() -> int:
    """/proc/sys/kernel/pid_max of our pid namespace (a tid must be below it)."""
    try:
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return PID_MAX_DEFAULT
