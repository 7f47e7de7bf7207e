"""Per-thread scheduling (``thread_core.sched_policy``, ``sched_nice``, ``sched_prio``).

CRIU's restorer sets each thread's policy and nice value from inside the thread. pycrestore
sets them from the orchestrator instead, with the thread id: setpriority(2) and
sched_setscheduler(2) both act on one thread when given a tid, and the orchestrator (root)
has CAP_SYS_NICE for a negative nice value or a real-time policy. It runs once the blob has
made every thread and stopped them all, and before any of them runs application code.
"""

from __future__ import annotations

import os

from pycriu_restore.restore.errors import RestoreFailed
from pycriu_restore.restore.tree import SpawnedTask


def apply_sched(spawned: SpawnedTask) -> None:
    """Give every thread of ``spawned`` its dumped nice value and scheduling policy.

    Must hold: the blob has finished (``spawned.threads`` holds the other threads, in plan
    order) and all are stopped. Leaves each thread as the image says; raises RestoreFailed
    naming the thread if the kernel refuses.
    """
    tids = [spawned.pid] + [t.pid for t in spawned.threads]  # our pid namespace's ids
    for tid, thread in zip(tids, spawned.task.threads):
        sched = thread.sched
        if sched is None:
            continue
        try:
            # Nice first, as CRIU's restore_sched_info(): it is kept, not used, under SCHED_FIFO/RR.
            os.setpriority(os.PRIO_PROCESS, tid, sched.nice)
            os.sched_setscheduler(tid, sched.policy, os.sched_param(sched.prio))
        except OSError as err:
            raise RestoreFailed(spawned.task.pid, "scheduling",
                                f"thread {thread.tid}: policy {sched.policy} priority {sched.prio} "
                                f"nice {sched.nice}: {err.strerror}") from err
