"""core-PID.img: one task's state besides memory and files (images/core.proto).

    tc            per process: state, personality, stat flags, blocked signals, comm,
                  itimers, rlimits, shared pending signals, loginuid, oom_score_adj,
                  the 62 sigactions (SIGKILL and SIGSTOP have none), child_subreaper
    thread_core   per thread: robust futex list, scheduling, sigaltstack, pending
                  signals, credentials, comm, rseq registration, cgroup set
    thread_info   registers (dump/registers.py)

Read from outside: /proc/PID/{stat,status,personality,loginuid,oom_score_adj}, prlimit(2),
sched_getscheduler(2), getpriority(2), get_robust_list(2), PTRACE_GETSIGMASK and
PTRACE_GET_RSEQ_CONFIGURATION. CRIU reads the rest from inside the task through its
parasite; this dumper instead requires it to be at its default, where /proc can tell
(no caught signal in SigCgt, nothing pending, no seccomp), and records the default where
nothing outside can tell: itimers disarmed, no sigaltstack, clear_child_tid 0,
securebits 0, not a child subreaper. Those hold for a program without libc that never
asked for them (the demo program); a task that did would be restored without them.
"""

from __future__ import annotations

import os
import resource

from pycriu_restore.dump.errors import CannotDump, DumpError
from pycriu_restore.dump.procfs import ProcStat, read_status, read_text_int, status_ints
from pycriu_restore.dump.registers import thread_info
from pycriu_restore.images.flags import DICT_TABLES
from pycriu_restore.images.schemas import (core_pb2, creds_pb2, rlimit_pb2, rseq_pb2, sa_pb2,
                                          siginfo_pb2, timer_pb2)
from pycriu_restore.linux import ptrace
from pycriu_restore.linux.taskinfo import robust_list

# <asm/signal.h>: signals 1..SIGMAX; SIGKILL and SIGSTOP cannot have handlers.
SIGMAX = 64
SIGKILL, SIGSTOP = 9, 19
SIG_IGN = 1
# <asm/signal.h>: sigaltstack's "no alternate stack" flag.
SS_DISABLE = 2
# <asm/resource.h>: RLIM_NLIMITS, the rlimits a task has.
RLIM_NLIMITS = 16
# criu/include/pstree.h via crit's "gen" table: TASK_ALIVE.
TASK_ALIVE = next(n for n, name in DICT_TABLES["gen"]["task_state"].items() if name == "Alive")
# The cgroup set every task of a dump without cgroup.img refers to (CRIU 4.2 writes 1).
CG_SET_ID = 1
_U64_MASK = (1 << 64) - 1


def _mask(status: dict[str, str], key: str, pid: int) -> int:
    """A hex signal or capability mask line of /proc/PID/status."""
    (value,) = status_ints(status, key, pid, base=16)
    return value


def _check_outside_readable(pid: int, status: dict[str, str]) -> None:
    """Raise CannotDump for the state only a parasite could record (module docstring)."""
    caught = _mask(status, "SigCgt", pid)
    if caught:
        signals = [n for n in range(1, SIGMAX + 1) if caught >> (n - 1) & 1]
        raise CannotDump(f"task catches signals {signals} (SigCgt {caught:#x}): handler addresses "
                         "can only be read from inside the task", pid=pid)
    for key in ("SigPnd", "ShdPnd"):
        if _mask(status, key, pid):
            raise CannotDump(f"task has pending signals ({key} {status[key]}): their siginfo "
                             "can only be read from inside the task", pid=pid)
    if status_ints(status, "Seccomp", pid) != [0]:
        raise CannotDump(f"task runs under seccomp (Seccomp: {status['Seccomp']}): filters are "
                         "not dumped", pid=pid)


def _sigactions(ignored: int) -> list[sa_pb2.SaEntry]:
    """The 62 SaEntry records: SIG_DFL, or SIG_IGN for the signals in ``ignored`` (SigIgn)."""
    out = []
    for signo in range(1, SIGMAX + 1):
        if signo in (SIGKILL, SIGSTOP):
            continue
        handler = SIG_IGN if ignored >> (signo - 1) & 1 else 0
        out.append(sa_pb2.SaEntry(sigaction=handler, flags=0, restorer=0, mask=0,
                                  compat_sigaction=False))
    return out


def _rlimits(pid: int) -> core_pb2.TaskRlimitsEntry:
    """All RLIM_NLIMITS limits, by prlimit(2); RLIM_INFINITY as 2**64-1, as the kernel has it."""
    entry = core_pb2.TaskRlimitsEntry()
    for number in range(RLIM_NLIMITS):
        try:
            cur, hard = resource.prlimit(pid, number)
        except OSError as err:
            raise DumpError(f"prlimit(resource {number}) failed: {err.strerror or err}", pid=pid) from err
        entry.rlimits.append(rlimit_pb2.RlimitEntry(cur=cur & _U64_MASK, max=hard & _U64_MASK))
    return entry


def _caps(status: dict[str, str], key: str, pid: int) -> list[int]:
    """A capability set as CRIU stores it: two u32 words, low first."""
    value = _mask(status, key, pid)
    return [value & 0xFFFFFFFF, value >> 32]


def _creds(pid: int, status: dict[str, str]) -> creds_pb2.CredsEntry:
    """CredsEntry from /proc/PID/status (Uid/Gid: real, effective, saved, fs)."""
    uid, euid, suid, fsuid = status_ints(status, "Uid", pid)
    gid, egid, sgid, fsgid = status_ints(status, "Gid", pid)
    creds = creds_pb2.CredsEntry(uid=uid, gid=gid, euid=euid, egid=egid, suid=suid, sgid=sgid,
                                 fsuid=fsuid, fsgid=fsgid, secbits=0)
    for field, key in (("cap_inh", "CapInh"), ("cap_prm", "CapPrm"), ("cap_eff", "CapEff"),
                       ("cap_bnd", "CapBnd"), ("cap_amb", "CapAmb")):
        getattr(creds, field).extend(_caps(status, key, pid))
    creds.groups.extend(status_ints(status, "Groups", pid))
    no_new_privs = status_ints(status, "NoNewPrivs", pid)
    if no_new_privs != [0]:
        creds.no_new_privs = no_new_privs[0]
    return creds


def _sched(pid: int, thread_core: core_pb2.ThreadCoreEntry) -> None:
    """Scheduling policy and nice value (the priority only matters for real-time policies)."""
    try:
        policy = os.sched_getscheduler(pid)
        thread_core.sched_policy = policy
        if policy in (os.SCHED_FIFO, os.SCHED_RR):
            thread_core.sched_prio = os.sched_getparam(pid).sched_priority
        else:
            thread_core.sched_nice = os.getpriority(os.PRIO_PROCESS, pid)
    except OSError as err:
        raise DumpError(f"cannot read the scheduling policy: {err.strerror or err}", pid=pid) from err


def core_entry(pid: int, stat: ProcStat) -> core_pb2.CoreEntry:
    """The CoreEntry of a single-threaded, ptrace-stopped task. Raises CannotDump (see above)."""
    status = read_status(pid)
    _check_outside_readable(pid, status)
    core = core_pb2.CoreEntry(mtype=core_pb2.CoreEntry.X86_64)

    tc = core.tc
    tc.task_state = TASK_ALIVE
    tc.exit_code = 0
    tc.personality = read_text_int(f"/proc/{pid}/personality", base=16)
    tc.flags = stat.flags
    tc.blk_sigset = ptrace.get_sigmask(pid)
    tc.comm = stat.comm
    for which in ("real", "virt", "prof"):   # disarmed (module docstring)
        getattr(tc.timers, which).CopyFrom(timer_pb2.ItimerEntry(isec=0, iusec=0, vsec=0, vusec=0))
    tc.rlimits.CopyFrom(_rlimits(pid))
    tc.signals_s.CopyFrom(siginfo_pb2.SignalQueueEntry())
    tc.loginuid = read_text_int(f"/proc/{pid}/loginuid")
    tc.oom_score_adj = read_text_int(f"/proc/{pid}/oom_score_adj")
    tc.sigactions.extend(_sigactions(_mask(status, "SigIgn", pid)))
    tc.child_subreaper = False

    th = core.thread_core
    th.futex_rla, th.futex_rla_len = robust_list(pid)
    _sched(pid, th)
    th.sas.CopyFrom(core_pb2.ThreadSasEntry(ss_sp=0, ss_size=0, ss_flags=SS_DISABLE))
    th.signals_p.CopyFrom(siginfo_pb2.SignalQueueEntry())
    th.creds.CopyFrom(_creds(pid, status))
    th.comm = stat.comm
    rseq = ptrace.get_rseq_configuration(pid)
    th.rseq_entry.CopyFrom(rseq_pb2.RseqEntry(rseq_abi_pointer=rseq.abi_pointer,
                                              rseq_abi_size=rseq.abi_size,
                                              signature=rseq.signature))
    th.cg_set = CG_SET_ID

    core.thread_info.CopyFrom(thread_info(pid, clear_tid_addr=0))
    return core
