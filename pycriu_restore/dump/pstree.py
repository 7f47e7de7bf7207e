"""pstree.img: the process tree (images/pstree.proto). One task here: the dump's root.

The root's ppid is 0 (its parent is not in the dump); pgid and sid come from
/proc/PID/stat; threads lists every tid, the leader first (one: CannotDump otherwise).
"""

from __future__ import annotations

from pycriu_restore.dump.errors import CannotDump
from pycriu_restore.dump.procfs import ProcStat
from pycriu_restore.images.schemas import pstree_pb2


def pstree_entry(pid: int, stat: ProcStat) -> pstree_pb2.PstreeEntry:
    """The PstreeEntry of a single-threaded root task."""
    if stat.num_threads != 1:
        raise CannotDump(f"task has {stat.num_threads} threads: only single-threaded tasks "
                         "are dumped", pid=pid)
    return pstree_pb2.PstreeEntry(pid=pid, ppid=0, pgid=stat.pgrp, sid=stat.session, threads=[pid])
