"""Images -> restore plan: every decision and every consistency check, before any side effect.

``build_plan(images)`` reads the images of a checkpoint (through the lazy ``ImageSet``) and
returns a :class:`~pycriu_restore.plan.model.RestorePlan`. It raises ``InconsistentImages``
when the images contradict each other and ``UnsupportedFeature`` when they use something
pycrestore does not restore, each naming the image and the entry. It touches nothing
outside the images directory, so it runs without root and can be tested on its own.

The order follows the ids that link the images (research/criu-restore-internals.md §4.2):
pstree.img names the tasks; core-TID.img holds each thread; ids-PID.img names the files
table (fdinfo-N.img); mm-PID.img the VMAs, whose file ids point into files.img;
pagemap-PID.img names pages-N.img, where the page data lives.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Iterable

from pycriu_restore.images import ImageSet
from pycriu_restore.images.flags import MMAP_FLAGS, MMAP_PROT, MMAP_STATUS, PMAP_FLAGS
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature
from pycriu_restore.linux.memory import MAP_HUGETLB
from pycriu_restore.plan import validate
from pycriu_restore.plan.validate import (SECCOMP_MODE_DISABLED, SECCOMP_MODE_FILTER, SECCOMP_MODE_STRICT,
                                          VMA_AREA_GUARD, VMA_EXT_PLUGIN)
from pycriu_restore.plan.refusals import Refusal, find_refusals, summarize
from pycriu_restore.files import registry
from pycriu_restore.files import memfd as memfd_kind
from pycriu_restore.files import owner as fd_owner
from pycriu_restore.plan.model import (
    Creds,
    InheritedFile,
    PosixTimer,
    SeccompFilter,
    DumpCpu,
    ItimerValue,
    MappedFile,
    MmFields,
    PageRun,
    RestorePlan,
    Rseq,
    SchedParams,
    SigAction,
    Task,
    TaskState,
    Thread,
    TimeOffsets,
    Vma,
    VmaKind,
)

# The bit values come from the images layer's flag tables (their source headers are named
# there); these names are the ones CRIU uses.
_STATUS = dict(MMAP_STATUS)
VMA_AREA_REGULAR = _STATUS["VMA_AREA_REGULAR"]
VMA_AREA_VSYSCALL = _STATUS["VMA_AREA_VSYSCALL"]
VMA_AREA_VDSO = _STATUS["VMA_AREA_VDSO"]
VMA_AREA_VVAR = _STATUS["VMA_AREA_VVAR"]
VMA_FILE_PRIVATE = _STATUS["VMA_FILE_PRIVATE"]
VMA_FILE_SHARED = _STATUS["VMA_FILE_SHARED"]
VMA_ANON_SHARED = _STATUS["VMA_ANON_SHARED"]
VMA_ANON_PRIVATE = _STATUS["VMA_ANON_PRIVATE"]
VMA_AREA_SYSVIPC = _STATUS["VMA_AREA_SYSVIPC"]
VMA_AREA_SOCKET = _STATUS["VMA_AREA_SOCKET"]
VMA_AREA_AIORING = _STATUS["VMA_AREA_AIORING"]
VMA_AREA_MEMFD = _STATUS["VMA_AREA_MEMFD"]
VMA_AREA_SHSTK = _STATUS["VMA_AREA_SHSTK"]
VMA_AREA_UPROBES = _STATUS["VMA_AREA_UPROBES"]
MAP_ANONYMOUS = dict(MMAP_FLAGS)["MAP_ANON"]
MAP_SHARED = dict(MMAP_FLAGS)["MAP_SHARED"]
PROT_WRITE = dict(MMAP_PROT)["PROT_WRITE"]
# What a dump writes as a VMA's prot: the r, w and x of /proc/PID/maps, nothing else.
PROT_DUMPED = PROT_WRITE | dict(MMAP_PROT)["PROT_READ"] | dict(MMAP_PROT)["PROT_EXEC"]
PE_PARENT = dict(PMAP_FLAGS)["PE_PARENT"]
PE_PRESENT = dict(PMAP_FLAGS)["PE_PRESENT"]
PAGE_SIZE = 4096  # x86_64
# arch/x86/include/asm/page_64_types.h: TASK_SIZE_MAX with 4-level paging (47 bits).
TASK_SIZE = (1 << 47) - PAGE_SIZE

# VMA status bits pycrestore cannot restore, with the name used in error messages.
_UNSUPPORTED_VMA_BITS = {
    VMA_AREA_SYSVIPC: "SysV shared memory mapping",
    VMA_AREA_SOCKET: "packet socket ring mapping",
    VMA_AREA_AIORING: "AIO ring",
    VMA_AREA_SHSTK: "shadow stack",
    VMA_AREA_GUARD: "guard region",
    VMA_AREA_UPROBES: "uprobes area",
}

# Wait statuses (wait(2), <bits/waitstatus.h>): a task that exited has its exit code in bits
# 8-15; one killed by a signal has the signal in bits 0-6 and 0x80 if it dumped core; 0x7f
# in bits 0-6 is a stopped task, never a dead one.
WAIT_TERMSIG_MASK = 0x7F
WAIT_COREDUMP = 0x80
WAIT_EXITCODE_MASK = 0xFF00
WAIT_STOPPED = 0x7F
# signal(7): the signals whose default action does not end a process, so none of them can
# have killed a zombie; the stop signals among them are what a stopped task was stopped by.
_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
_NON_FATAL_SIGNALS = _STOP_SIGNALS | {signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH}
MTYPE_X86_64 = 1  # core_entry.mtype
REGS_NATIVE = 1  # user_x86_regs_entry.mode: NATIVE 1, COMPAT 2

# Bounds and values for credentials, seccomp and timers; the blob's own limits are in
# blob/abi.py, where abi.h names their kernel headers.
NGROUPS_MAX = 65536  # <linux/limits.h>: longest supplementary group list
CAP_WORDS = 2  # _LINUX_CAPABILITY_U32S_3 (<linux/capability.h>): u32 words per capability set
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6  # <linux/securebits.h>
# <linux/seccomp.h> SECCOMP_FILTER_FLAG_*: TSYNC 1, LOG 2, SPEC_ALLOW 4 are what CRIU dumps
# (PTRACE_SECCOMP_GET_METADATA reports LOG; CRIU adds TSYNC itself); NEW_LISTENER (8) and
# later flags would hand the task a new fd or change how it waits: not restored.
SECCOMP_RESTORABLE_FLAGS = 0x1 | 0x2 | 0x4
BPF_MAXINSNS = 4096  # <linux/bpf_common.h>: instructions per program
SOCK_FILTER_BYTES = 8  # sizeof(struct sock_filter) (<linux/filter.h>)
# kernel/seccomp.c: a thread's filters may hold MAX_INSNS_PER_PATH instructions in all,
# each filter counting 4 more: ((1 << 18) / sizeof(struct sock_filter)).
SECCOMP_MAX_INSNS_PER_PATH = (1 << 18) // SOCK_FILTER_BYTES
SECCOMP_FILTER_PENALTY = 4
# <asm-generic/siginfo.h> sigev_notify values the kernel keeps for a timer; SIGEV_THREAD (2)
# is glibc's, which the kernel sees as SIGEV_THREAD_ID to glibc's helper thread.
SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID = 0, 1, 4
_SIGEV_KINDS = {SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID, SIGEV_THREAD_ID | SIGEV_SIGNAL}
SIGRTMAX = 64  # <asm/signal.h> _NSIG on x86-64
NSEC_PER_SEC = 1_000_000_000
INT_MAX = 2**31 - 1  # a timer id is a non-negative int (kernel/time/posix-timers.c)
# No kernel limit on a task's POSIX timers but RLIMIT_SIGPENDING (one queued signal each,
# default about 60000 here); a bound for untrusted images.
MAX_POSIX_TIMERS = 65536
PERSONALITY_QUERY = 0xFFFFFFFF  # personality(0xffffffff) only reads the persona


def build_plan(images: ImageSet, inherit: frozenset[str] = frozenset()) -> RestorePlan:
    """Build and validate the plan for every task in ``pstree.img``, root first.

    ``inherit``: the --inherit-fd RESOURCE names the caller hands fds for; an fd whose file
    has one of them becomes an InheritedFile (files/inherited.py) instead of its kind's spec.
    """
    entries = list(images.pstree())
    if not entries:
        raise InconsistentImages("pstree.img", "no tasks")
    validate.check_images(images, early=True)  # every task's images there (plan/validate.py)
    files = {f.id: f for f in images.files()}
    # First, every object and field whose state cannot be restored, all in one error: the
    # fds each kind module refuses (naming task and fd), then the coverage table's fields.
    inherit_index = {key: i for i, key in enumerate(sorted(inherit))}
    found = _fd_refusals(images, entries, files, inherit_index) + list(find_refusals(images))
    if found:
        raise UnsupportedFeature(found[0].image, summarize(found))
    validate.check_images(images, early=False)  # then the rest: fd tables, pagemaps, ...
    memfds = memfd_kind.read_inodes(images)
    notes: list[str] = []
    tasks = tuple(_build_task(images, entry, files, memfds, notes, inherit_index) for entry in _parents_first(entries))
    _check_zombies(tasks)
    tasks = _with_fd_owners(images, tasks, files)
    return RestorePlan(
        images_dir=str(images.directory),
        tasks=tasks,
        timens=_time_offsets(images),
        shared=tuple(obj for kind in registry.all_kinds()
                     for obj in kind.shared(registry.TreeContext(tasks=tasks, images=images, files=files))),
        dump_cpu=_dump_cpu(images, tasks),
        notes=tuple(notes),
        inherited=tuple(sorted({f.key for t in tasks for f in t.files if isinstance(f, InheritedFile)})),
    )


def _with_fd_owners(images: ImageSet, tasks: tuple[Task, ...], files: dict) -> tuple[Task, ...]:
    """Each live task with the owners (F_SETOWN) of its fds (files/owner.py). An owner must
    exist when the task installs its fds: the task, an ancestor, or a child (forked before)."""
    by_pid = {t.pid: t for t in tasks}
    out = []
    for task in tasks:
        if task.is_zombie:
            out.append(task)
            continue
        near = [task, *(t for t in tasks if t.ppid == task.pid)]
        up = by_pid.get(task.ppid)
        while up is not None and up.pid not in {t.pid for t in near}:
            near.append(up)
            up = by_pid.get(up.ppid)
        reachable = {t.pid for t in near if not t.is_zombie} | {t.pgid for t in near}
        table = images.fdinfo(images.ids(task.pid).files_id)
        owners = tuple(o for o in (fd_owner.read(task.pid, fdi.fd, files[fdi.id], reachable,
                                                 f"pid {task.pid} fd {fdi.fd}") for fdi in table) if o is not None)
        out.append(dataclasses.replace(task, fd_owners=owners) if owners else task)
    return tuple(out)


def _fd_refusals(images: ImageSet, entries: list, files: dict, inherit: dict[str, int]) -> list[Refusal]:
    """Every fd of every task that its kind module refuses (or that no module owns)."""
    found: list[Refusal] = []
    for entry in entries:
        if not images.exists(f"ids-{entry.pid}.img"):
            continue  # a zombie holds no fds
        _build_files(images, entry.pid, images.ids(entry.pid).files_id, files, inherit, found)
    return found


def _parents_first(entries: list) -> list:
    """pstree.img entries ordered so that every parent comes before its children."""
    by_pid = {e.pid: e for e in entries}
    roots = [e for e in entries if e.ppid not in by_pid]
    if len(roots) != 1:
        raise InconsistentImages("pstree.img", f"expected one root task, found {len(roots)}: {[e.pid for e in roots]}")
    ordered, queue = [], roots
    while queue:
        entry = queue.pop(0)
        ordered.append(entry)
        queue.extend(e for e in entries if e.ppid == entry.pid)
    if len(ordered) != len(entries):
        raise InconsistentImages("pstree.img", "the parent links do not form one tree")
    return ordered


def _build_task(images: ImageSet, entry, files: dict, memfds: dict, notes: list[str],
                inherit: dict[str, int]) -> Task:
    """One task: its threads, memory, files and signal state (a zombie: its exit status)."""
    pid = entry.pid
    core = images.core(pid)
    core_name = f"core-{pid}.img"
    if core.mtype != MTYPE_X86_64:
        raise UnsupportedFeature(core_name, f"machine type {core.mtype} (only x86_64 is restored)")
    if not core.HasField("tc"):
        raise InconsistentImages(core_name, "no tc (task core): the task's state is unknown")
    tc = core.tc
    try:
        state = TaskState(tc.task_state)
    except ValueError:
        raise UnsupportedFeature(core_name, f"tc.task_state = {tc.task_state} (restored: "
                                 f"{', '.join(f'{s.value} {s.name}' for s in TaskState)})") from None
    # The state decides which images exist, so it is read before pstree's thread list:
    # a zombie's list is not to be trusted (see _build_zombie).
    if state is TaskState.DEAD:
        return _build_zombie(entry, core_name, tc)
    if not entry.threads or entry.threads[0] != pid:
        raise InconsistentImages("pstree.img", f"task {pid}: first thread is not the task itself ({list(entry.threads)})")
    stop_signo = 0
    if state is TaskState.STOPPED:
        stop_signo = _stop_signal(core_name, tc, notes)
    threads = tuple(_build_thread(images, tid, images.core(tid) if tid != pid else core) for tid in entry.threads)

    mm = images.mm(pid)
    vmas = _build_vmas(images, pid, mm, files, memfds)
    ids = images.ids(pid)
    fs = images.fs(pid)
    fds = _build_files(images, pid, ids.files_id, files, inherit)
    return Task(
        pid=pid,
        ppid=entry.ppid,
        pgid=entry.pgid,
        sid=entry.sid,
        comm=tc.comm,
        threads=threads,
        vmas=vmas,
        pages_path=str(_pages_path(images, pid)),
        mm=_build_mm(pid, mm, files),
        files=fds,
        cwd=_reg_path(files, fs.cwd_id, f"fs-{pid}.img: cwd"),
        root=_reg_path(files, fs.root_id, f"fs-{pid}.img: root"),
        umask=fs.umask,
        rlimits=tuple((r.cur, r.max) for r in tc.rlimits.rlimits),
        sigactions=_build_sigactions(tc.sigactions),
        itimers=tuple(_itimer(getattr(tc.timers, name)) for name in ("real", "virt", "prof")),  # type: ignore[arg-type]
        shared_pending_signals=tuple(s.siginfo for s in tc.signals_s.signals),
        personality=_personality(core_name, tc.personality),
        posix_timers=_build_posix_timers(core_name, tc.timers.posix, entry.threads),
        child_subreaper=tc.child_subreaper,
        loginuid=tc.loginuid if tc.HasField("loginuid") and tc.loginuid != INVALID_UID else None,
        oom_score_adj=tc.oom_score_adj if tc.HasField("oom_score_adj") else None,
        state=state,
        stop_signo=stop_signo,
    )


def _build_zombie(entry, core_name: str, tc) -> Task:
    """A task that had exited and was not yet reaped: its identity and its wait status.

    CRIU dumps a zombie as core-PID.img alone (cr-dump.c dump_one_zombie: comm, task_state,
    exit_code); there is nothing else to restore. Its pstree.img thread list is not read:
    CRIU's dump never fills in the thread id of a zombie (seize.c collect_threads counts the
    leader as collected before its id in the pid namespace is read, which only the parasite
    of a live task does), so the one entry holds leftover heap memory (3949993008 in
    criu-4.2-more/zombie). CRIU's restore does not read it for a zombie either.
    """
    if len(entry.threads) > 1:
        raise InconsistentImages("pstree.img", f"task {entry.pid}: a zombie with {len(entry.threads)} threads "
                                 "(CRIU dumps a zombie with one)")
    no_timer = ItimerValue(0, 0, 0, 0)
    return Task(
        pid=entry.pid, ppid=entry.ppid, pgid=entry.pgid, sid=entry.sid, comm=tc.comm,
        threads=(), vmas=(), pages_path="", mm=None, files=(), cwd="", root="", umask=0,
        rlimits=(), sigactions=(), itimers=(no_timer, no_timer, no_timer),
        state=TaskState.DEAD, exit_status=_exit_status(core_name, tc.exit_code),
    )


def _exit_status(core_name: str, status: int) -> int:
    """A zombie's ``tc.exit_code``, checked to be a wait status a dead task can have."""
    where = f"tc.exit_code = {status:#x}"
    termsig = status & WAIT_TERMSIG_MASK
    if termsig == 0:
        if status & ~WAIT_EXITCODE_MASK:
            raise InconsistentImages(core_name, f"{where}: not a wait status (exit code << 8, or a signal number)")
        return status
    if termsig == WAIT_STOPPED or status >> 8:
        raise InconsistentImages(core_name, f"{where}: not the wait status of a dead task")
    if termsig > SIGRTMAX or termsig in _NON_FATAL_SIGNALS:
        raise InconsistentImages(core_name, f"{where}: killed by signal {termsig}, which does not end a process")
    if status & WAIT_COREDUMP:
        raise UnsupportedFeature(core_name, f"{where}: killed by signal {termsig} with a core dump: the "
                                 "core-dump flag (0x80) cannot be given back without dumping core again")
    return status


def _stop_signal(core_name: str, tc, notes: list[str]) -> int:
    """The signal that stops a STOPPED task again once it is restored: SIGSTOP.

    CRIU sends the dumped ``tc.stop_signo`` when it is SIGSTOP or SIGTSTP (compel's
    compel_resume_task_sig). pycrestore always sends SIGSTOP, because the others may not
    stop the task at all: a handler may catch SIGTSTP, SIGTTIN and SIGTTOU, and the kernel
    discards them in an orphaned process group (kernel/signal.c get_signal), which a
    restored tree's root group usually is. Only the stop report a parent may wait for
    again (WSTOPSIG) differs; the plan says so in a note.
    """
    signo = tc.stop_signo if tc.HasField("stop_signo") else 0
    if signo and signo not in _STOP_SIGNALS:
        raise InconsistentImages(core_name, f"tc.stop_signo = {signo}: not a stop signal "
                                 f"({', '.join(str(int(s)) for s in sorted(_STOP_SIGNALS))})")
    if signo and signo != signal.SIGSTOP:
        notes.append(f"{core_name}: stopped by {signal.Signals(signo).name} at dump, stopped by SIGSTOP after "
                     "the restore (a parent's waitpid(WUNTRACED) reports SIGSTOP)")
    return signal.SIGSTOP


def _check_zombies(tasks: tuple[Task, ...]) -> None:
    """A zombie needs a restored parent to hold it, and cannot be anyone's parent."""
    if tasks[0].is_zombie:
        raise UnsupportedFeature(f"core-{tasks[0].pid}.img", f"the root task {tasks[0].pid} is a zombie: "
                                 "nothing restored would be its parent")
    zombies = {t.pid for t in tasks if t.is_zombie}
    for task in tasks:
        if task.ppid in zombies:
            raise InconsistentImages("pstree.img", f"task {task.pid}: its parent {task.ppid} is a zombie "
                                     "(a task's children are reparented when it exits)")


def _build_thread(images: ImageSet, tid: int, core) -> Thread:
    """One thread's registers and per-thread state from its core image."""
    name = f"core-{tid}.img"
    ti = core.thread_info
    gp = ti.gpregs
    if gp.mode != REGS_NATIVE:
        raise UnsupportedFeature(name, "32-bit (compat) registers")
    gpregs = {f.name: v for f, v in gp.ListFields() if f.name != "mode"}
    fp = ti.fpregs
    fpregs = {f.name: _plain(v) for f, v in fp.ListFields() if f.name != "xsave"}
    xsave = None
    if fp.HasField("xsave"):
        xsave = {f.name: _plain(v) for f, v in fp.xsave.ListFields() if f.name != "cet"}
        _check_xsave_has_data(name, fp.xsave)
    thc = core.thread_core
    # The leader's blocked set is in tc (task_core), CRIU keeps thread_core's for others.
    blk = core.tc.blk_sigset if core.HasField("tc") else thc.blk_sigset
    sas = (thc.sas.ss_sp, thc.sas.ss_size, thc.sas.ss_flags) if thc.HasField("sas") else None
    rseq = None
    if thc.HasField("rseq_entry") and thc.rseq_entry.rseq_abi_pointer:
        r = thc.rseq_entry
        rseq = Rseq(r.rseq_abi_pointer, r.rseq_abi_size, r.signature)
    seccomp_mode = _seccomp_mode(name, core)
    return Thread(
        tid=tid,
        gpregs=gpregs,
        fpregs=fpregs,
        xsave=xsave,
        blk_sigset=blk,
        sas=sas,
        clear_tid_addr=ti.clear_tid_addr,
        futex_rla=thc.futex_rla,
        futex_rla_len=thc.futex_rla_len,
        rseq=rseq,
        comm=thc.comm or core.tc.comm,
        pending_signals=tuple(s.siginfo for s in thc.signals_p.signals),
        creds=_build_creds(images, name, thc),
        seccomp_mode=seccomp_mode,
        seccomp_filters=_seccomp_chain(images, name, thc) if seccomp_mode == SECCOMP_MODE_FILTER else (),
        pdeath_sig=_pdeath_sig(name, thc.pdeath_sig),
        sched=_sched_params(name, thc),
    )


# XSAVE components whose data CRIU's image format keeps (UserX86XsaveEntry, core-x86.proto),
# with the field that holds each; x87 and SSE are the legacy region (UserX86FpregsEntry).
XSAVE_DATA_FIELDS = {0: "fpregs", 1: "fpregs", 2: "ymmh_space", 3: "bndreg_state", 4: "bndcsr_state",
                     5: "opmask_reg", 6: "zmm_upper", 7: "hi16_zmm", 9: "pkru"}


def _check_xsave_has_data(name: str, xsave) -> None:
    """Every component in use (xstate_bv) must have its data in the image: a restore would
    otherwise drop state without a word. (CET, kept apart in xsave.cet, is refused with the
    other fields in plan/refusals.py.)

    AMX tiles (17, 18) are the case met in practice: CRIU 4.2 has no field for them.
    """
    from pycriu_restore.linux.xstate import xfeature_names  # the names live with the layout

    no_data = xsave.xstate_bv & ~sum(1 << bit for bit in XSAVE_DATA_FIELDS)
    if no_data:
        raise UnsupportedFeature(name, f"thread_info.fpregs.xsave.xstate_bv {xsave.xstate_bv:#x}: "
                                 f"{xfeature_names(no_data)} in use, and CRIU's image keeps no data for it")


def _dump_cpu(images: ImageSet, tasks: tuple[Task, ...]) -> DumpCpu | None:
    """The dump CPU: cpuinfo.img if CRIU wrote one, else the XSAVE components the cores'
    arrays reveal (CRIU writes one array per component the dump CPU had, in use or not)."""
    info = images.cpuinfo()
    if info is not None and info.x86_entry:
        x86 = info.x86_entry[0]
        return DumpCpu(xfeatures=x86.xfeatures_mask if x86.HasField("xfeatures_mask") else None,
                       capability=tuple(x86.capability), model=x86.model_id or None)
    xfeatures = 0
    for task in tasks:
        for thread in task.threads:
            for bit, field_name in XSAVE_DATA_FIELDS.items():
                if bit > 1 and (thread.xsave or {}).get(field_name):
                    xfeatures |= 1 << bit
    return DumpCpu(xfeatures=xfeatures | 0x3) if xfeatures else None


def _cap_mask(name: str, field: str, words, optional: bool = False) -> int:
    """A capability set from its u32 words (low first) as one mask."""
    words = list(words)
    if optional and not words:
        return 0  # cap_amb is absent from images made before ambient capabilities
    if len(words) != CAP_WORDS:
        raise InconsistentImages(name, f"thread_core.creds.{field} has {len(words)} words, expected {CAP_WORDS}")
    return sum(word << (32 * i) for i, word in enumerate(words))


def _build_creds(images: ImageSet, name: str, thc) -> Creds:
    """A thread's credentials (thread_core.creds); LSM labels and the legacy per-task
    creds-PID.img are refused, since the blob cannot apply them."""
    if not thc.HasField("creds"):
        legacy = sorted(p.name for p in images.directory.glob("creds-*.img"))
        if legacy:
            raise UnsupportedFeature(legacy[0], "credentials in a separate creds image (images from before "
                                     "thread_core.creds): not restored")
        raise InconsistentImages(name, "thread_core.creds is missing: the thread's credentials are unknown")
    ce = thc.creds
    for field in ("lsm_profile", "lsm_sockcreate", "apparmor_data"):
        if ce.HasField(field) and getattr(ce, field):
            raise UnsupportedFeature(name, f"thread_core.creds.{field} {getattr(ce, field)!r}: LSM labels are not applied")
    if len(ce.groups) > NGROUPS_MAX:
        raise InconsistentImages(name, f"thread_core.creds.groups has {len(ce.groups)} groups, NGROUPS_MAX is {NGROUPS_MAX}")
    creds = Creds(
        uid=ce.uid, euid=ce.euid, suid=ce.suid, fsuid=ce.fsuid,
        gid=ce.gid, egid=ce.egid, sgid=ce.sgid, fsgid=ce.fsgid,
        groups=tuple(ce.groups),
        cap_inh=_cap_mask(name, "cap_inh", ce.cap_inh),
        cap_prm=_cap_mask(name, "cap_prm", ce.cap_prm),
        cap_eff=_cap_mask(name, "cap_eff", ce.cap_eff),
        cap_bnd=_cap_mask(name, "cap_bnd", ce.cap_bnd),
        cap_amb=_cap_mask(name, "cap_amb", ce.cap_amb, optional=True),
        secbits=ce.secbits,
        no_new_privs=bool(ce.no_new_privs),
    )
    # CRIU's order sets the final securebits before raising the ambient set (the securebits
    # need CAP_SETPCAP, which the final capability sets may lack): a lock against raising
    # would make that fail.
    if creds.cap_amb and creds.secbits & SECBIT_NO_CAP_AMBIENT_RAISE:
        raise UnsupportedFeature(name, f"thread_core.creds: ambient capabilities {creds.cap_amb:#x} with securebits "
                                 f"{creds.secbits:#x} (SECBIT_NO_CAP_AMBIENT_RAISE): cannot be raised again")
    return creds


def _seccomp_mode(name: str, core) -> int:
    """thread_core.seccomp_mode (0 if absent); the per-task field of old images is refused."""
    if core.HasField("tc") and core.tc.HasField("old_seccomp_mode") and core.tc.old_seccomp_mode:
        raise UnsupportedFeature(name, "tc.old_seccomp_mode: per-task seccomp of images from before per-thread seccomp")
    thc = core.thread_core
    mode = thc.seccomp_mode if thc.HasField("seccomp_mode") else SECCOMP_MODE_DISABLED
    if mode not in (SECCOMP_MODE_DISABLED, SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER):
        raise UnsupportedFeature(name, f"thread_core.seccomp_mode {mode}")
    return mode


def _seccomp_chain(images: ImageSet, name: str, thc) -> tuple[SeccompFilter, ...]:
    """The filters of a thread in mode filter, in install order.

    thread_core.seccomp_filter is the index in seccomp.img of the first filter the thread
    installed; each filter's ``prev`` names the one installed after it (criu/seccomp.c
    writes a chain newest first and links it so; seccomp_prepare_threads() walks it from
    the thread's index), and the last has no ``prev``.
    """
    entry = images.seccomp()
    if entry is None:
        raise InconsistentImages("seccomp.img", f"missing, but {name} has thread_core.seccomp_mode filter")
    filters = entry.seccomp_filters
    if not thc.HasField("seccomp_filter"):
        raise InconsistentImages(name, "thread_core.seccomp_mode is filter but thread_core.seccomp_filter is missing")
    out: list[SeccompFilter] = []
    index, seen, total = thc.seccomp_filter, set(), 0
    while True:
        if index >= len(filters):
            raise InconsistentImages("seccomp.img", f"{name}: filter index {index}, the image has {len(filters)} filters")
        if index in seen:
            raise InconsistentImages("seccomp.img", f"{name}: the filter chain loops back to filter {index}")
        seen.add(index)
        sf = filters[index]
        nr_insns, rest = divmod(len(sf.filter), SOCK_FILTER_BYTES)
        if rest or not 1 <= nr_insns <= BPF_MAXINSNS:
            raise InconsistentImages("seccomp.img", f"filter {index}: {len(sf.filter)} bytes, expected 1 to "
                                     f"{BPF_MAXINSNS} instructions of {SOCK_FILTER_BYTES} bytes")
        if sf.flags & ~SECCOMP_RESTORABLE_FLAGS:
            raise UnsupportedFeature("seccomp.img", f"filter {index}: flags {sf.flags:#x} (only TSYNC, LOG and SPEC_ALLOW are restored)")
        total += nr_insns + SECCOMP_FILTER_PENALTY
        if total > SECCOMP_MAX_INSNS_PER_PATH:
            raise InconsistentImages("seccomp.img", f"{name}: the chain holds more than the kernel's "
                                     f"{SECCOMP_MAX_INSNS_PER_PATH} instructions per thread")
        out.append(SeccompFilter(index=index, insns=bytes(sf.filter), flags=sf.flags))
        if not sf.HasField("prev"):
            return tuple(out)
        index = sf.prev


def _pdeath_sig(name: str, signo: int) -> int:
    if not 0 <= signo <= SIGRTMAX:
        raise InconsistentImages(name, f"thread_core.pdeath_sig {signo} is not a signal (1..{SIGRTMAX})")
    return signo


def _personality(name: str, persona: int) -> int:
    if persona == PERSONALITY_QUERY:
        raise InconsistentImages(name, f"tc.personality {persona:#x} cannot be set (personality(2) only reads it)")
    return persona


def _build_posix_timers(name: str, entries, tids) -> tuple[PosixTimer, ...]:
    """tc.timers.posix, sorted by id and checked: ids unique and valid, times normalized,
    notification kinds the kernel has, SIGEV_THREAD_ID aimed at a thread of this task.
    A zero time left becomes the interval, as CRIU's prepare_posix_timers() does."""
    if len(entries) > MAX_POSIX_TIMERS:
        raise InconsistentImages(name, f"tc.timers.posix has {len(entries)} timers, more than {MAX_POSIX_TIMERS}")
    out: dict[int, PosixTimer] = {}
    for i, pt in enumerate(entries):
        where = f"tc.timers.posix[{i}] (timer id {pt.it_id})"
        if pt.it_id > INT_MAX:
            raise InconsistentImages(name, f"{where}: the id is above INT_MAX")
        if pt.it_id in out:
            raise InconsistentImages(name, f"{where}: a second timer with this id")
        if pt.insec >= NSEC_PER_SEC or pt.vnsec >= NSEC_PER_SEC:
            raise InconsistentImages(name, f"{where}: nanoseconds {pt.insec}/{pt.vnsec} not below {NSEC_PER_SEC}")
        if pt.it_sigev_notify not in _SIGEV_KINDS:
            raise UnsupportedFeature(name, f"{where}: it_sigev_notify {pt.it_sigev_notify}")
        if pt.it_sigev_notify != SIGEV_NONE and not 1 <= pt.si_signo <= SIGRTMAX:
            raise InconsistentImages(name, f"{where}: si_signo {pt.si_signo} is not a signal (1..{SIGRTMAX})")
        notify_tid = pt.notify_thread_id if pt.HasField("notify_thread_id") else 0
        if pt.it_sigev_notify & SIGEV_THREAD_ID and notify_tid not in tids:
            raise InconsistentImages(name, f"{where}: notifies thread {notify_tid}, which is not one of {list(tids)}")
        value_sec, value_nsec = (pt.vsec, pt.vnsec) if pt.vsec or pt.vnsec else (pt.isec, pt.insec)
        out[pt.it_id] = PosixTimer(timer_id=pt.it_id, clock_id=pt.clock_id, signo=pt.si_signo,
                                   notify=pt.it_sigev_notify, sival=pt.sival_ptr, notify_tid=notify_tid,
                                   interval_sec=pt.isec, interval_nsec=pt.insec,
                                   value_sec=value_sec, value_nsec=value_nsec, overrun=pt.overrun)
    return tuple(out[i] for i in sorted(out))


def _plain(value: object) -> object:
    """A protobuf scalar as is; a repeated scalar field as a list (the plan holds plain data)."""
    return value if isinstance(value, (int, float, bool, str, bytes)) else list(value)  # type: ignore[call-overload]


def _vma_kind(name: str, index: int, vma) -> VmaKind | None:
    """Classify one VmaEntry; None for [vsyscall], which the kernel provides above TASK_SIZE."""
    status = vma.status
    where = f"VMA {index} at {vma.start:#x}"
    if status & VMA_AREA_VSYSCALL:
        return None
    for bit, feature in _UNSUPPORTED_VMA_BITS.items():
        if status & bit:
            raise UnsupportedFeature(name, f"{where}: {feature}")
    if not status & VMA_AREA_REGULAR:
        raise UnsupportedFeature(name, f"{where}: status {status:#x} is not a regular mapping")
    if status & VMA_AREA_VDSO:
        return VmaKind.VDSO
    if status & VMA_AREA_VVAR:
        return VmaKind.VVAR
    if status & VMA_AREA_MEMFD:
        return VmaKind.MEMFD_SHARED
    if status & VMA_EXT_PLUGIN:
        # CRIU marks a mapping of a device a plugin handles (proc_parse.c handle_vma_plugin):
        # GPU memory, MAP_SHARED, whose contents the plugin restores, not the pages image.
        if not (status & VMA_FILE_SHARED and vma.flags & MAP_SHARED):
            raise UnsupportedFeature(name, f"{where}: a private device mapping (VMA_EXT_PLUGIN, status "
                                     f"{status:#x}, flags {vma.flags:#x}); only MAP_SHARED ones (GPU memory) are restored")
        return VmaKind.FILE_SHARED
    if status & VMA_FILE_SHARED:
        return VmaKind.FILE_SHARED
    if status & VMA_FILE_PRIVATE:
        return VmaKind.FILE_PRIVATE
    if status & VMA_ANON_SHARED:
        if vma.flags & MAP_HUGETLB:
            raise UnsupportedFeature(name, f"{where}: shared anonymous hugetlb memory (flags {vma.flags:#x})")
        return VmaKind.ANON_SHARED
    if status & VMA_ANON_PRIVATE:
        return VmaKind.ANON_PRIVATE
    raise UnsupportedFeature(name, f"{where}: status {status:#x}")


def _build_vmas(images: ImageSet, pid: int, mm, files: dict, memfds: dict) -> tuple[Vma, ...]:
    """The task's VMAs, each with the page runs that fill it; checks order, overlap and pages."""
    name = f"mm-{pid}.img"
    raw: list[tuple[object, VmaKind]] = []
    prev_end = 0
    for index, vma in enumerate(mm.vmas):
        kind = _vma_kind(name, index, vma)
        if kind is None:
            continue
        if vma.start >= vma.end or vma.start % PAGE_SIZE or vma.end % PAGE_SIZE:
            raise InconsistentImages(name, f"VMA {index}: bad range {vma.start:#x}-{vma.end:#x}")
        if vma.end > TASK_SIZE:
            raise InconsistentImages(name, f"VMA {index}: {vma.start:#x}-{vma.end:#x} ends above TASK_SIZE {TASK_SIZE:#x}")
        if vma.start < prev_end:
            raise InconsistentImages(name, f"VMA {index} at {vma.start:#x} overlaps the previous one (ends {prev_end:#x})")
        if vma.prot & ~PROT_DUMPED:
            raise InconsistentImages(name, f"VMA {index} at {vma.start:#x}: prot {vma.prot:#x} has bits other than "
                                     f"PROT_READ, PROT_WRITE and PROT_EXEC ({PROT_DUMPED:#x}), all a dump writes")
        prev_end = vma.end
        raw.append((vma, kind))

    runs_by_vma = _page_runs(images, pid, [(v.start, v.end, k) for v, k in raw])
    out = []
    for i, (vma, kind) in enumerate(raw):
        mapped = None
        if vma.status & VMA_EXT_PLUGIN:
            mapped = _plugin_mapping(files, vma, f"{name}: VMA at {vma.start:#x}")
        elif kind in (VmaKind.FILE_PRIVATE, VmaKind.FILE_SHARED):
            mapped = _mapped_file(files, vma.shmid, vma.fdflags, f"{name}: VMA at {vma.start:#x}")
        elif kind is VmaKind.MEMFD_SHARED:
            mapped = _memfd_mapping(files, memfds, vma, f"{name}: VMA at {vma.start:#x}")
        elif kind is VmaKind.ANON_SHARED:
            mapped = _anon_shmem_mapping(vma, f"{name}: VMA at {vma.start:#x}")
        flags = vma.flags
        if kind in (VmaKind.FILE_PRIVATE, VmaKind.FILE_SHARED, VmaKind.ANON_SHARED):
            flags &= ~MAP_ANONYMOUS  # the blob maps these from an fd
        out.append(
            Vma(
                start=vma.start,
                end=vma.end,
                prot=vma.prot,
                flags=flags,
                kind=kind,
                pgoff=vma.pgoff,
                madv=vma.madv,
                file=mapped,
                page_runs=tuple(runs_by_vma[i]),
            )
        )
    return tuple(out)


def _page_runs(images: ImageSet, pid: int, vmas: list[tuple[int, int, VmaKind]]) -> list[list[PageRun]]:
    """Split pagemap-PID.img into runs per VMA, with their byte offsets in the pages image.

    Only PE_PRESENT entries occupy the pages file, in pagemap order. A dumped entry may span
    adjacent VMAs, so runs are cut at VMA boundaries. Every page must fall in a VMA that can
    hold private pages; the pages file must be long enough for all of them.
    """
    name = f"pagemap-{pid}.img"
    pages_path = _pages_path(images, pid)
    try:
        pages_size = os.path.getsize(pages_path)
    except OSError as err:
        raise InconsistentImages(name, f"its pages image {pages_path.name} cannot be read: {err.strerror}") from err
    runs: list[list[PageRun]] = [[] for _ in vmas]
    offset = 0
    vi = 0
    for index, entry in enumerate(images.pagemap(pid).iter_entries()):
        nr_pages = entry.nr_pages or entry.compat_nr_pages
        if entry.flags & PE_PARENT:
            raise UnsupportedFeature(name, f"entry {index}: pages in a parent image (incremental dumps)")
        if not entry.flags & PE_PRESENT:
            continue  # neither in this image nor in a parent: a hole
        addr, end = entry.vaddr, entry.vaddr + nr_pages * PAGE_SIZE
        if offset + nr_pages * PAGE_SIZE > pages_size:
            left = max(0, (pages_size - offset) // PAGE_SIZE)
            raise InconsistentImages(name, f"entry {index} covers {nr_pages} pages, {pages_path.name} has {left} left")
        while addr < end:
            # VMAs and entries are both sorted, so one forward scan pairs them.
            while vi < len(vmas) and vmas[vi][1] <= addr:
                vi += 1
            if vi == len(vmas) or vmas[vi][0] > addr:
                raise InconsistentImages(name, f"entry {index}: page {addr:#x} is outside every VMA")
            start, vend, kind = vmas[vi]
            if kind in (VmaKind.FILE_SHARED, VmaKind.MEMFD_SHARED, VmaKind.ANON_SHARED):
                raise InconsistentImages(name, f"entry {index}: page {addr:#x} is in a shared mapping")
            piece_end = min(end, vend)
            n = (piece_end - addr) // PAGE_SIZE
            runs[vi].append(PageRun(start_addr=addr, nr_pages=n, file_offset=offset))
            offset += n * PAGE_SIZE
            addr = piece_end
    return runs


def _pages_path(images: ImageSet, pid: int) -> Path:
    pagemap = images.pagemap(pid)
    if pagemap.pages_id is None:
        raise InconsistentImages(f"pagemap-{pid}.img", "missing or without a head record: the task's memory cannot be restored")
    return images.pages_path(pagemap.pages_id)


def _build_mm(pid: int, mm, files: dict) -> MmFields:
    return MmFields(
        start_code=mm.mm_start_code,
        end_code=mm.mm_end_code,
        start_data=mm.mm_start_data,
        end_data=mm.mm_end_data,
        start_stack=mm.mm_start_stack,
        start_brk=mm.mm_start_brk,
        brk=mm.mm_brk,
        arg_start=mm.mm_arg_start,
        arg_end=mm.mm_arg_end,
        env_start=mm.mm_env_start,
        env_end=mm.mm_env_end,
        auxv=tuple(mm.mm_saved_auxv),
        exe=_mapped_file(files, mm.exe_file_id, os.O_RDONLY, f"mm-{pid}.img: exe"),
        dumpable=mm.dumpable if mm.HasField("dumpable") else None,
        thp_disabled=mm.thp_disabled,
    )


def _build_files(images: ImageSet, pid: int, files_id: int, files: dict, inherit: dict[str, int],
                 refusals: list[Refusal] | None = None) -> tuple:
    """The fd table (fdinfo-N.img) of task ``pid``: one spec per fd, read by the module that
    owns its kind (files/registry.py), or an InheritedFile where the file's name is one of
    ``inherit`` (RESOURCE -> index). With ``refusals``, a refused fd is appended there and
    the others are still read (so that all are reported at once); without, it raises."""
    name = f"fdinfo-{files_id}.img"
    out = []
    fdinfos = images.fdinfo(files_id)
    table = {fdinfo.fd: fdinfo.id for fdinfo in fdinfos}
    for fdinfo in fdinfos:
        entry = files.get(fdinfo.id)
        if entry is None:
            raise InconsistentImages(name, f"fd {fdinfo.fd}: file id {fdinfo.id} is not in files.img")
        ctx = registry.FdContext(pid=pid, fd=fdinfo.fd, cloexec=bool(fdinfo.flags & 1),  # FD_CLOEXEC
                                 file_id=fdinfo.id, entry=entry, images=images, files=files, table=table)
        type_name = registry.type_name(entry)
        kind = registry.kind_for(type_name)
        try:
            if kind is None:
                word = registry.TYPE_WORDS.get(type_name, "file")
                raise ctx.refuse(f"{word} (file type {type_name}, file id {fdinfo.id})")
            key = kind.inherit_key(ctx) if inherit else None
            if key in inherit:
                out.append(InheritedFile(fd=ctx.fd, key=key, cloexec=ctx.cloexec, index=inherit[key]))
            else:
                out.append(kind.read(ctx))
        except UnsupportedFeature as err:
            if refusals is None:
                raise
            refusals.append(Refusal(err.image, err.feature))
    return tuple(sorted(out, key=lambda f: f.fd))


def _mapped_file(files: dict, file_id: int, open_flags: int, what: str) -> MappedFile:
    """The regular file ``file_id`` as a mapping source, with the identity CRIU recorded."""
    path = _reg_path(files, file_id, what)
    reg = files[file_id].reg
    # build_id is the raw note bytes, stored as little-endian u32 words.
    build_id = b"".join(w.to_bytes(4, "little") for w in reg.build_id) or None
    size = reg.size if reg.HasField("size") else None
    return MappedFile(file_id=file_id, path=path, open_flags=open_flags, expected_size=size, build_id=build_id)


def _plugin_mapping(files: dict, vma, what: str) -> MappedFile:
    """A device mapping (VMA_EXT_PLUGIN) as CRIU dumps it: its shmid is the regular-file entry
    of the device node (cr-dump.c dump_filemap), whose name the plugin's UPDATE_VMA_MAP
    matches (/dev/kfd, /dev/dri/renderD128). The node is not opened or checked here: the
    task maps the fd its plugin returns (restore/task.py), and the device's size says nothing."""
    path = _reg_path(files, vma.shmid, what)
    # Without fdflags, CRIU's guess (files-reg.c collect_filemap): writable iff PROT_WRITE.
    guess = os.O_RDWR if vma.prot & PROT_WRITE else os.O_RDONLY
    open_flags = vma.fdflags if vma.HasField("fdflags") else guess
    return MappedFile(file_id=vma.shmid, path=path, open_flags=open_flags, plugin=True)


def _memfd_mapping(files: dict, memfds: dict, vma, what: str) -> MappedFile:
    entry = files.get(vma.shmid)
    if entry is None or not entry.HasField("memfd"):
        raise InconsistentImages("files.img", f"{what} refers to file id {vma.shmid}, which is not a memfd entry")
    inode = entry.memfd.inode_id
    if inode not in memfds:
        raise InconsistentImages("memfd.img", f"{what}: memfd inode {inode} is missing")
    return MappedFile(file_id=vma.shmid, path=f"memfd:{memfds[inode].name} (inode {inode})",
                      open_flags=vma.fdflags, memfd_inode=inode)


def _anon_shmem_mapping(vma, what: str) -> MappedFile:
    """A VMA_ANON_SHARED VMA as a mapping of the shmem object of its shmid (files/anon_shmem.py
    makes one per shmid; the blob maps it by fd, O_RDWR as /proc/PID/map_files opens it)."""
    if vma.shmid == 0:
        raise InconsistentImages(f"{what}", "shared anonymous memory with shmid 0 (no object to share)")
    if not vma.flags & MAP_SHARED:
        raise InconsistentImages(f"{what}", f"VMA_ANON_SHARED without MAP_SHARED (flags {vma.flags:#x})")
    return MappedFile(file_id=0, path=f"/dev/zero (shmid {vma.shmid})", open_flags=os.O_RDWR, shmem_id=vma.shmid)


def _reg_path(files: dict, file_id: int, what: str) -> str:
    """The path of regular-file entry ``file_id``, or an error naming ``what`` refers to it."""
    entry = files.get(file_id)
    if entry is None or not entry.HasField("reg"):
        raise InconsistentImages("files.img", f"{what} refers to file id {file_id}, which is not a regular file entry")
    if entry.reg.ext:
        raise UnsupportedFeature("files.img", f"{what}: maps the external file {entry.reg.name} (dumped with "
                                 "--external): not restored (--inherit-fd stands in for fds of one, not mappings)")
    return entry.reg.name


def _signo_for_index(index: int) -> int:
    """tc.sigactions skips SIGKILL (9) and SIGSTOP (19): entry i is signal i+1, +1 past 9, +1 past 19."""
    signo = index + 1
    if signo >= signal.SIGKILL:
        signo += 1
    if signo >= signal.SIGSTOP:
        signo += 1
    return signo


def _build_sigactions(entries: Iterable) -> tuple[SigAction, ...]:
    out = []
    for index, sa in enumerate(entries):
        if sa.compat_sigaction:
            raise UnsupportedFeature("core", f"compat sigaction for signal {_signo_for_index(index)}")
        out.append(SigAction(_signo_for_index(index), sa.sigaction, sa.flags, sa.restorer, sa.mask))
    return tuple(out)


def _itimer(t) -> ItimerValue:
    """The setitimer() argument for a dumped itimer, as CRIU's restore makes it (decode_itimer).

    A periodic timer caught between expiry and the dequeue of its SIGALRM is dumped with
    value 0: the kernel re-arms ITIMER_REAL only when that signal is dequeued. setitimer()
    with value 0 would disarm it for good, so value 0 becomes one interval.
    """
    if (t.vsec, t.vusec) == (0, 0) and (t.isec, t.iusec) != (0, 0):
        return ItimerValue(t.isec, t.iusec, t.isec, t.iusec)
    return ItimerValue(t.isec, t.iusec, t.vsec, t.vusec)


def _time_offsets(images: ImageSet) -> TimeOffsets | None:
    t = images.timens()
    if t is None:
        return None
    return TimeOffsets(t.monotonic.tv_sec, t.monotonic.tv_nsec, t.boottime.tv_sec, t.boottime.tv_nsec)


INVALID_UID = 0xFFFFFFFF  # (uid_t)-1: the loginuid of a task no login ever set
# <sched.h> policies sched_setscheduler accepts without a sched_attr; SCHED_DEADLINE (6)
# needs sched_setattr, and CRIU's dump cannot record its parameters.
_SCHED_TIMESHARE = {0: "SCHED_OTHER", 3: "SCHED_BATCH", 5: "SCHED_IDLE"}
_SCHED_REALTIME = {1: "SCHED_FIFO", 2: "SCHED_RR"}


def _sched_params(name: str, thc) -> SchedParams | None:
    """The thread's scheduling, checked as CRIU's validate_sched_parm() does; None if not dumped."""
    if not thc.HasField("sched_policy"):
        return None
    policy, nice, prio = thc.sched_policy, thc.sched_nice, thc.sched_prio
    if policy not in _SCHED_TIMESHARE and policy not in _SCHED_REALTIME:
        raise UnsupportedFeature(name, f"thread_core.sched_policy = {policy}: not restored (only "
                                 f"{', '.join(sorted({**_SCHED_TIMESHARE, **_SCHED_REALTIME}.values()))})")
    if not -20 <= nice <= 19:
        raise InconsistentImages(name, f"thread_core.sched_nice = {nice}, expected -20..19")
    if policy in _SCHED_REALTIME and not 1 <= prio <= 99:
        raise InconsistentImages(name, f"thread_core.sched_prio = {prio} with {_SCHED_REALTIME[policy]}, expected 1..99")
    if policy in _SCHED_TIMESHARE and prio != 0:
        raise InconsistentImages(name, f"thread_core.sched_prio = {prio} with {_SCHED_TIMESHARE[policy]}, expected 0")
    return SchedParams(policy=policy, nice=nice, prio=prio)
