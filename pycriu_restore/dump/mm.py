"""mm-PID.img: the address space of a task (images/mm.proto MmEntry).

    mm_start_code .. mm_env_end   /proc/PID/stat fields 26-28 and 45-51 (proc(5))
    mm_brk                        the current program break: the end of [heap], or
                                  start_brk when the task never grew it (CRIU asks brk(0)
                                  from inside; /proc shows it only page-rounded, as [heap])
    exe_file_id                   /proc/PID/exe's FileEntry (the same id as its mappings)
    mm_saved_auxv                 /proc/PID/auxv, cut to CRIU's AT_VECTOR_SIZE words
                                  (criu/arch/x86/include/asm/types.h: 44, which drops
                                  AT_NULL and anything past the 22nd pair, as CRIU does)
    vmas                          dump/vmas.py
    dumpable                      1 (SUID_DUMP_USER): /proc/PID is owned by the task's
                                  user, which it is not for a non-dumpable task
    thp_disabled                  "THP_enabled: 0" in /proc/PID/status
"""

from __future__ import annotations

import os

from pycriu_restore.dump.errors import CannotDump
from pycriu_restore.dump.files import FileTable
from pycriu_restore.dump.procfs import ProcStat, read_auxv, read_status, status_ints
from pycriu_restore.images.schemas import mm_pb2, vma_pb2
from pycriu_restore.dump.vmas import VMA_AREA_HEAP

# criu/arch/x86/include/asm/types.h
AT_VECTOR_SIZE = 44
# <linux/sched/coredump.h>: prctl(PR_GET_DUMPABLE) of an ordinary task.
SUID_DUMP_USER = 1


def mm_entry(pid: int, stat: ProcStat, vmas: list[vma_pb2.VmaEntry], files: FileTable) -> mm_pb2.MmEntry:
    """The MmEntry of ``pid``; ``vmas`` from dump/vmas.py, the exe is added to ``files``."""
    heap = [v for v in vmas if v.status & VMA_AREA_HEAP]
    entry = mm_pb2.MmEntry(
        mm_start_code=stat.start_code, mm_end_code=stat.end_code,
        mm_start_data=stat.start_data, mm_end_data=stat.end_data,
        mm_start_stack=stat.start_stack, mm_start_brk=stat.start_brk,
        mm_brk=heap[-1].end if heap else stat.start_brk,
        mm_arg_start=stat.arg_start, mm_arg_end=stat.arg_end,
        mm_env_start=stat.env_start, mm_env_end=stat.env_end,
        exe_file_id=files.special(f"/proc/{pid}/exe", pid))
    entry.mm_saved_auxv.extend(read_auxv(pid)[:AT_VECTOR_SIZE])
    entry.vmas.extend(vmas)
    if os.stat(f"/proc/{pid}").st_uid != status_ints(read_status(pid), "Uid", pid)[1]:
        raise CannotDump("task is not dumpable (prctl PR_SET_DUMPABLE 0)", pid=pid)
    entry.dumpable = SUID_DUMP_USER
    thp = read_status(pid).get("THP_enabled", "1")
    entry.thp_disabled = thp.strip() == "0"
    return entry
