"""What happens to every field of every image record the plan reads: the coverage table.

pycrestore's rule is that state in the images is *applied*, or the restore is *refused* with
exit code 3 naming it; nothing is dropped without a word. This table is where that is
decided, one line per field of the project's schemas (``images/proto/*.proto``):

    APPLIED   the restore sets it; ``where`` names the plan attribute, blob step or function
    REFUSED   the restore cannot set it: a value other than the accepted one (by default the
              field's protobuf default, or the field being absent) makes ``check_refusals``
              (plan/refusals.py) raise UnsupportedFeature before anything is forked
    IGNORED   not state of the restored process; ``where`` says why leaving it is safe

The facts come from upstream CRIU's restore (criu/cr-restore.c, criu/pie/restorer.c,
criu/files*.c, criu/sockets.c): when CRIU restores a field and pycrestore does not, the
field is REFUSED, not IGNORED.

Paths are relative to a record: ``thread_core.sched_policy`` is a field of CoreEntry.
``subtree=True`` gives one disposition to a field and everything below it (a sub-message of
a kind pycrestore does not restore). tests/test_plan_coverage.py walks the descriptors and
checks the table against them both ways, so a schema change forces a decision here; it also
mutates real images to prove each REFUSED check fires and each probed APPLIED field reaches
the plan. docs/fidelity.md is checked against this table.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from pycriu_restore.files.registry import KIND_MODULES
from pycriu_restore.files.unix_socket import USK_EXTERN
from pycriu_restore.images.flags import PMAP_FLAGS
from pycriu_restore.images.schemas import (
    core_pb2,
    cpuinfo_pb2,
    fdinfo_pb2,
    fs_pb2,
    ids_pb2,
    inventory_pb2,
    memfd_pb2,
    mm_pb2,
    pagemap_pb2,
    pipe_data_pb2,
    pstree_pb2,
    seccomp_pb2,
    sk_queues_pb2,
    tcp_stream_pb2,
    timens_pb2,
    tty_pb2,
)


class Disposition(enum.Enum):
    APPLIED = "applied"
    REFUSED = "refused"
    IGNORED = "ignored"


@dataclass(frozen=True)
class RefusalContext:
    """What an ``accepts`` check may compare a value with: the dump's own reference values."""

    inventory: inventory_pb2.InventoryEntry
    # ids-PID.img field name -> id value -> number of tasks holding it (CLONE_VM etc. sharing)
    id_holders: dict[str, dict[int, int]]
    # network namespace ids the restore makes (plan/netns.py restored_net_namespaces)
    net_namespaces: frozenset[int] = frozenset()


Accepts = Callable[[object, RefusalContext], bool]


@dataclass(frozen=True)
class Field:
    """One field of one record kind, and what the restore does with it."""

    path: str
    disposition: Disposition
    where: str  # APPLIED: where it is applied; REFUSED: what is not restored; IGNORED: why safe
    subtree: bool = False  # the disposition covers every field below ``path`` too
    # REFUSED only: True if the value can be restored as is (default: equal to the field's
    # default; a message field: absent; a repeated field: empty).
    accepts: Accepts | None = None
    names: dict[int, str] | None = None  # value -> name, for the error message
    # Tests only: a value the check must refuse (default: derived from the field type); for a
    # message field a dict (json_format), for a repeated message field a list of dicts.
    bad: object = None
    # REFUSED only: once this refuses a record, its other fields are not examined (a files.img
    # entry of a kind not restored: its own fields would only repeat the refusal).
    final: bool = False
    # APPLIED only: where the value lands in the plan, as "tasks[0].threads[0].comm"; the
    # coverage test mutates the image field and expects this to change.
    probe: str | None = None


@dataclass(frozen=True)
class RecordKind:
    """The records of one image kind: their message and the table of their fields."""

    name: str  # the label used in docs and tests: "core", "files", ...
    files: str  # the file names, as CRIU prints them
    message: type[Message]
    fields: tuple[Field, ...]

    def field(self, path: str) -> Field:
        for f in self.fields:
            if f.path == path:
                return f
        raise KeyError(f"{self.name}: no field {path} in the coverage table")


SHARED = "<shared>"  # Field.bad: the test gives two tasks the same id


def A(path: str, where: str, probe: str | None = None, subtree: bool = False) -> Field:
    return Field(path, Disposition.APPLIED, where, subtree=subtree, probe=probe)


def R(path: str, what: str = "not restored", accepts: Accepts | None = None, *, names: dict[int, str] | None = None,
      bad: object = None, subtree: bool = False, final: bool = False) -> Field:
    return Field(path, Disposition.REFUSED, what, subtree=subtree, accepts=accepts, names=names, bad=bad, final=final)


def I(path: str, why: str, subtree: bool = False) -> Field:
    return Field(path, Disposition.IGNORED, why, subtree=subtree)


# The other helper's blob work (creds, seccomp, POSIX timers, personality, pdeath_sig,
# child_subreaper) is marked applied there; the lead reconciles the wording.
BLOB_CREDS_STEP = "blob (creds/seccomp/timers step)"
SIGFRAME = "blob sigframe (blob/sigframe.py, blob/xsave.py): rt_sigreturn loads it"
SIGFRAME_XSAVE = "blob sigframe XSAVE area (blob/xsave.py)"

INVALID_UID = 0xFFFFFFFF  # (uid_t)-1: loginuid never set
PE_PARENT = dict(PMAP_FLAGS)["PE_PARENT"]
PE_LAZY = dict(PMAP_FLAGS)["PE_LAZY"]
PE_PRESENT = dict(PMAP_FLAGS)["PE_PRESENT"]
# files.img kinds the plan restores: those a module owns (files/registry.py); any other
# FileEntry type is refused.
# (KIND_MODULES also names "SHMEM", shared anonymous memory, which is no FileEntry type.)
SUPPORTED_FILE_TYPES = {fdinfo_pb2.fd_types.Value(name): name for name in KIND_MODULES
                        if name in fdinfo_pb2.fd_types.keys()}
# <sched.h>
SCHED_POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE",
                  6: "SCHED_DEADLINE"}


def _in_root_cgroup_set(value: object, ctx: RefusalContext) -> bool:
    """CRIU writes no cgroup.img when every task is in the dumper's own cgroup set: then a
    task's cg_set is inventory.root_cg_set, and the restored task stays where it is born."""
    return value == 0 or value == ctx.inventory.root_cg_set


def _root_ns(name: str) -> Accepts:
    """A task in the dumper's own namespace (inventory.root_ids): restored in ours, as CRIU."""
    def accepts(value: object, ctx: RefusalContext) -> bool:
        root = ctx.inventory.root_ids
        return value == 0 or (ctx.inventory.HasField("root_ids") and value == getattr(root, name))
    return accepts


def _root_or_restored_net_ns(value: object, ctx: RefusalContext) -> bool:
    """In the dumper's network namespace, or in one the images hold and netns/ makes."""
    return _root_ns("net_ns_id")(value, ctx) or value in ctx.net_namespaces


def _not_shared(name: str) -> Accepts:
    """The object (mm, fs, sighand, fd table) belongs to this task alone."""
    return lambda value, ctx: ctx.id_holders.get(name, {}).get(value, 0) <= 1  # type: ignore[call-overload]


def _pagemap_flags_ok(value: object, ctx: RefusalContext) -> bool:
    flags = int(value)  # type: ignore[call-overload]
    if flags & PE_PARENT:
        return False  # pages in a parent image (incremental dump)
    return not (flags & PE_LAZY and not flags & PE_PRESENT)  # lazy pages left on a page server


def _only(*values: object) -> Accepts:
    return lambda value, ctx: value in values


_FOWN = (
    # CRIU restore_fown(): F_SETSIG, then F_SETOWN_EX under the dumped uid/euid; so does
    # files/owner.py, in the task once its fds are installed (restore/task.py).
    ("fown.signum", "A", "FdOwner.signum: F_SETSIG (files/owner.py restore)"),
    ("fown.pid", "A", "FdOwner.pid: F_SETOWN_EX; an owner other than the task, an ancestor or a child is "
     "refused by files/owner.py read"),
    ("fown.pid_type", "A", "FdOwner.pid_type: struct f_owner_ex type"),
    ("fown.uid", "A", "FdOwner.uid: the real uid F_SETOWN_EX is called with"),
    ("fown.euid", "A", "FdOwner.euid: the effective uid F_SETOWN_EX is called with (sigio_perm)"),
)


def _fown(prefix: str) -> tuple[Field, ...]:
    make = {"R": R, "I": I, "A": A}
    return tuple(make[d](f"{prefix}.{p}", w) for p, d, w in _FOWN)


_ITIMER_PROBES = {"real": 0, "virt": 1, "prof": 2}
_ITIMER_NAMES = {"isec": "interval_sec", "iusec": "interval_usec", "vsec": "value_sec", "vusec": "value_usec"}

INVENTORY = RecordKind("inventory", "inventory.img", inventory_pb2.InventoryEntry, (
    A("img_version", "images/imageset.py ImageSet.open: only the accepted format versions are read"),
    R("fdinfo_per_id", "fd tables per pid (images older than CRIU 1.3)", _only(True), bad=False),
    I("root_ids", "the dumper's own namespace ids: the reference ids-PID.img is compared with",
      subtree=True),
    I("ns_per_id", "names the layout of namespace images; the plan opens none (a task in its own "
      "namespace is refused through ids-PID.img)"),
    I("root_cg_set", "the dumper's cgroup set: the reference core cg_set is compared with"),
    I("lsmtype", "which LSM the creds' profiles are for; the profiles are refused when set"),
    I("dump_uptime", "dump-side bookkeeping (pid reuse detection between pre-dumps)"),
    I("pre_dump_mode", "how parent (pre-dump) images were written; pages in a parent are refused"),
    R("tcp_close", "dumped with --tcp-close (connections without their state, to be restored closed)"),
    A("network_lock_method", "files/inet_lock.py release: the lock a CRIU dump on this host left for the "
      "connections (nftables table or iptables rules) is removed once they are restored"),
    A("plugins_entry", "restore/orchestrator.py: every plugin the dump used (CRIU's names) must be loaded, "
      "or the restore is refused before any fork, as CRIU's 'Missing required plugin' (plugins/api.py "
      "missing_plugins); a plugin file no loaded plugin claims fails the restore too", subtree=True),
    A("dump_criu_run_id", "files/inet_lock.py release: names the dump's nftables lock table (CRIU-<id>)"),
    R("allow_uprobes", "dumped with --allow-uprobes (uprobes areas are not restored)"),
))

PSTREE = RecordKind("pstree", "pstree.img", pstree_pb2.PstreeEntry, (
    A("pid", "Task.pid: clone3 set_tid (restore/tree.py)"),
    A("ppid", "Task.ppid: the task is forked by its parent (restore/task.py)"),
    A("pgid", "Task.pgid: setpgid (restore/task.py _set_session)", probe="tasks[0].pgid"),
    A("sid", "Task.sid: setsid (restore/task.py _set_session)", probe="tasks[0].sid"),
    A("threads", "Task.threads: blob step create_threads (clone3 set_tid)"),
))

_GPREGS = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
           "ip", "flags", "sp")
_FPREGS_SCALARS = ("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr", "mxcsr_mask")
_XSAVE = ("xstate_bv", "ymmh_space", "bndreg_state", "bndcsr_state", "opmask_reg", "zmm_upper", "hi16_zmm", "pkru")
_TLS_IGNORED = ("entry_number", "base_addr", "limit", "seg_32bit", "contents_h", "contents_l", "read_exec_only",
                "limit_in_pages", "usable")
_TC = "tasks[0]"
_TH = "tasks[0].threads[0]"

CORE = RecordKind("core", "core-TID.img", core_pb2.CoreEntry, (
    A("mtype", "plan/build.py _build_task: only X86_64 is accepted, others refused there"),
    A("thread_info", "Thread (the sub-fields below)"),
    A("thread_info.clear_tid_addr", "Thread.clear_tid_addr: blob thread_state (set_tid_address)",
      probe=f"{_TH}.clear_tid_addr"),
    A("thread_info.gpregs", "Thread.gpregs"),
    *(A(f"thread_info.gpregs.{r}", SIGFRAME, probe=f"{_TH}.gpregs['{r}']") for r in _GPREGS),
    A("thread_info.gpregs.cs", SIGFRAME),
    A("thread_info.gpregs.ss", SIGFRAME),
    A("thread_info.gpregs.fs", SIGFRAME),
    A("thread_info.gpregs.gs", SIGFRAME),
    A("thread_info.gpregs.fs_base", "blob thread_state (arch_prctl ARCH_SET_FS)", probe=f"{_TH}.gpregs['fs_base']"),
    A("thread_info.gpregs.gs_base", "blob thread_state (arch_prctl ARCH_SET_GS)", probe=f"{_TH}.gpregs['gs_base']"),
    I("thread_info.gpregs.orig_ax", "not part of a sigcontext: at dump compel already rewound an "
      "interrupted syscall (ip -= 2, ax = orig_ax), so the syscall restarts"),
    I("thread_info.gpregs.ds", "64-bit tasks: no ds/es in the sigcontext, CRIU does not restore them either"),
    I("thread_info.gpregs.es", "64-bit tasks: no ds/es in the sigcontext, CRIU does not restore them either"),
    A("thread_info.gpregs.mode", "plan/build.py _build_thread: only NATIVE, compat refused there"),
    A("thread_info.fpregs", "Thread.fpregs"),
    *(A(f"thread_info.fpregs.{r}", SIGFRAME_XSAVE, probe=f"{_TH}.fpregs['{r}']") for r in _FPREGS_SCALARS),
    A("thread_info.fpregs.st_space", SIGFRAME_XSAVE),
    A("thread_info.fpregs.xmm_space", SIGFRAME_XSAVE),
    I("thread_info.fpregs.padding", "the FXSAVE reserved bytes (sw_reserved): the kernel's, rewritten "
      "for every frame; CRIU does not restore them either"),
    A("thread_info.fpregs.xsave", "Thread.xsave"),
    *(A(f"thread_info.fpregs.xsave.{r}", SIGFRAME_XSAVE) for r in _XSAVE),
    A("thread_info.fpregs.xsave.cet", "always dumped where the CPU has CET: its fields are checked"),
    R("thread_info.fpregs.xsave.cet.cet", "CET user state (shadow stack)"),
    R("thread_info.fpregs.xsave.cet.ssp", "shadow stack pointer"),
    A("thread_info.tls", "the GDT TLS slots; set_thread_area is needed only for a present one"),
    R("thread_info.tls.seg_not_present", "a GDT TLS descriptor (set_thread_area)", _only(True), bad=False),
    *(I(f"thread_info.tls.{f}", "meaningful only for a present descriptor, which is refused")
      for f in _TLS_IGNORED),
    A("tc", "Task (the sub-fields below)"),
    A("tc.task_state", "Task.state: ALIVE runs; DEAD is forked and exits at once, a zombie under its parent "
      "(restore/zombie.py); STOPPED is restored, then sent SIGSTOP before detach (restore/orchestrator.py); "
      "other values refused (plan/build.py _build_task)"),
    A("tc.exit_code", "Task.exit_status (zombies): the zombie exits with that code or is killed by that "
      "signal (restore/zombie.py); 0 for other tasks, as CRIU dumps them"),
    A("tc.personality", BLOB_CREDS_STEP),
    I("tc.flags", "the task's PF_* flags from /proc/PID/stat: the kernel's own; CRIU does not restore them"),
    A("tc.blk_sigset", "Thread.blk_sigset (leader): sigframe uc_sigmask", probe=f"{_TH}.blk_sigset"),
    A("tc.comm", "Task.comm / Thread.comm: blob thread_state (PR_SET_NAME)", probe=f"{_TC}.comm"),
    A("tc.timers", "Task.itimers"),
    *(A(f"tc.timers.{t}", "Task.itimers") for t in _ITIMER_PROBES),
    *(A(f"tc.timers.{t}.{f}", "Task.itimers: blob step itimers (setitimer)",
        probe=f"{_TC}.itimers[{i}].{_ITIMER_NAMES[f]}") for t, i in _ITIMER_PROBES.items() for f in _ITIMER_NAMES),
    A("tc.timers.posix", BLOB_CREDS_STEP, subtree=True),
    A("tc.rlimits", "Task.rlimits"),
    A("tc.rlimits.rlimits", "Task.rlimits: blob step rlimits (setrlimit)"),
    A("tc.rlimits.rlimits.cur", "Task.rlimits: blob step rlimits", probe=f"{_TC}.rlimits[0][0]"),
    A("tc.rlimits.rlimits.max", "Task.rlimits: blob step rlimits", probe=f"{_TC}.rlimits[0][1]"),
    R("tc.cg_set", "membership of a cgroup set other than the dumper's (cgroup.img)", _in_root_cgroup_set, bad=77),
    A("tc.signals_s", "Task.shared_pending_signals"),
    A("tc.signals_s.signals", "Task.shared_pending_signals: blob step pending_signals"),
    A("tc.signals_s.signals.siginfo", "Task.shared_pending_signals: rt_sigqueueinfo"),
    R("tc.old_seccomp_mode", "seccomp in the pre-CRIU-2.x layout"),
    R("tc.old_seccomp_filter", "seccomp in the pre-CRIU-2.x layout"),
    A("tc.loginuid", "Task.loginuid: restore/task.py writes /proc/self/loginuid", probe=f"{_TC}.loginuid"),
    A("tc.oom_score_adj", "Task.oom_score_adj: restore/task.py writes /proc/self/oom_score_adj",
      probe=f"{_TC}.oom_score_adj"),
    A("tc.sigactions", "Task.sigactions: blob step sigactions (rt_sigaction)"),
    A("tc.sigactions.sigaction", "SigAction.handler", probe=f"{_TC}.sigactions[0].handler"),
    A("tc.sigactions.flags", "SigAction.flags", probe=f"{_TC}.sigactions[0].flags"),
    A("tc.sigactions.restorer", "SigAction.restorer", probe=f"{_TC}.sigactions[0].restorer"),
    A("tc.sigactions.mask", "SigAction.mask", probe=f"{_TC}.sigactions[0].mask"),
    A("tc.sigactions.compat_sigaction", "plan/build.py _build_sigactions: compat refused there"),
    R("tc.sigactions.mask_extended", "a signal mask above signal 64 (MIPS)"),
    A("tc.child_subreaper", BLOB_CREDS_STEP),
    R("tc.blk_sigset_extended", "a blocked mask above signal 64 (MIPS)"),
    A("tc.stop_signo", "Task.stop_signo (stopped tasks): SIGSTOP is sent before detach; SIGTSTP/SIGTTIN/SIGTTOU "
      "become SIGSTOP with a plan note (plan/build.py _stop_signal says why)"),
    R("tc.membarrier_registration_mask", "membarrier() registrations"),
    I("ids", "a legacy copy; ids-PID.img is required and read instead", subtree=True),
    A("thread_core", "Thread (the sub-fields below)"),
    A("thread_core.futex_rla", "Thread.futex_rla: blob thread_state (set_robust_list)", probe=f"{_TH}.futex_rla"),
    A("thread_core.futex_rla_len", "Thread.futex_rla_len: blob thread_state", probe=f"{_TH}.futex_rla_len"),
    A("thread_core.sched_nice", "Thread.sched: restore/sched.py setpriority from the orchestrator",
      probe=f"{_TH}.sched.nice"),
    A("thread_core.sched_policy", "Thread.sched: restore/sched.py sched_setscheduler from the orchestrator"),
    A("thread_core.sched_prio", "Thread.sched: restore/sched.py sched_setscheduler from the orchestrator"),
    A("thread_core.blk_sigset", "Thread.blk_sigset (threads but the leader): sigframe uc_sigmask"),
    A("thread_core.sas", "Thread.sas: sigframe uc_stack"),
    A("thread_core.sas.ss_sp", "Thread.sas: sigframe uc_stack", probe=f"{_TH}.sas[0]"),
    A("thread_core.sas.ss_size", "Thread.sas: sigframe uc_stack", probe=f"{_TH}.sas[1]"),
    A("thread_core.sas.ss_flags", "Thread.sas: sigframe uc_stack", probe=f"{_TH}.sas[2]"),
    A("thread_core.pdeath_sig", BLOB_CREDS_STEP),
    A("thread_core.signals_p", "Thread.pending_signals"),
    A("thread_core.signals_p.signals", "Thread.pending_signals: blob step pending_signals"),
    A("thread_core.signals_p.signals.siginfo", "Thread.pending_signals: rt_tgsigqueueinfo"),
    A("thread_core.creds", BLOB_CREDS_STEP),
    *(A(f"thread_core.creds.{f}", BLOB_CREDS_STEP)
      for f in ("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid", "cap_inh", "cap_prm", "cap_eff",
                "cap_bnd", "cap_amb", "secbits", "groups", "no_new_privs")),
    R("thread_core.creds.lsm_profile", "an LSM profile (AppArmor/SELinux)"),
    R("thread_core.creds.lsm_sockcreate", "an LSM socket-create label"),
    R("thread_core.creds.apparmor_data", "AppArmor policy data"),
    A("thread_core.seccomp_mode", BLOB_CREDS_STEP),
    A("thread_core.seccomp_filter", BLOB_CREDS_STEP),
    A("thread_core.comm", "Thread.comm: blob thread_state (PR_SET_NAME)", probe=f"{_TH}.comm"),
    R("thread_core.blk_sigset_extended", "a blocked mask above signal 64 (MIPS)"),
    A("thread_core.rseq_entry", "Thread.rseq: blob thread_state (rseq registration)"),
    A("thread_core.rseq_entry.rseq_abi_pointer", "Thread.rseq.abi_pointer", probe=f"{_TH}.rseq.abi_pointer"),
    A("thread_core.rseq_entry.rseq_abi_size", "Thread.rseq.abi_size", probe=f"{_TH}.rseq.abi_size"),
    A("thread_core.rseq_entry.signature", "Thread.rseq.signature", probe=f"{_TH}.rseq.signature"),
    R("thread_core.rseq_entry.rseq_cs_pointer", "an rseq critical section in progress (rseq_cs)"),
    R("thread_core.cg_set", "membership of a cgroup set other than the dumper's (cgroup.img)",
      _in_root_cgroup_set, bad=77),
    R("thread_core.timerslack_ns", "a timer slack (PR_SET_TIMERSLACK)"),
))

_MM = ("start_code", "end_code", "start_data", "end_data", "start_stack", "start_brk", "brk", "arg_start", "arg_end",
       "env_start", "env_end")

MM = RecordKind("mm", "mm-PID.img", mm_pb2.MmEntry, (
    *(A(f"mm_{f}", f"MmFields.{f}: blob step set_mm (PR_SET_MM_MAP)", probe=f"{_TC}.mm.{f}") for f in _MM),
    A("exe_file_id", "MmFields.exe: blob step set_mm (PR_SET_MM_MAP exe_fd)"),
    A("mm_saved_auxv", "MmFields.auxv: blob step set_mm"),
    A("vmas", "Task.vmas: blob steps map_vmas, fill_pages, protect_vmas"),
    A("vmas.start", "Vma.start"),
    A("vmas.end", "Vma.end"),
    A("vmas.pgoff", "Vma.pgoff"),
    A("vmas.shmid", "Vma.file: the files.img id of the mapped file (or memfd); for VMA_ANON_SHARED the shmem "
      "object's inode number: MappedFile.shmem_id, one AnonSharedMemory per shmid (files/anon_shmem.py); for "
      "VMA_EXT_PLUGIN the device node's entry, whose name the plugin matches"),
    A("vmas.prot", "Vma.prot: blob step protect_vmas"),
    A("vmas.flags", "Vma.flags: blob step map_vmas"),
    A("vmas.status", "Vma.kind: plan/build.py _vma_kind (kinds not restored are refused there; VMA_ANON_SHARED: "
      "VmaKind.ANON_SHARED, mapped MAP_SHARED from the root's shmem object, files/anon_shmem.py; VMA_EXT_PLUGIN: "
      "MappedFile.plugin, mapped through the fd and at the offset the task's plugin gives, restore/task.py "
      "_map_device_vmas)"),
    I("vmas.fd", "dump-side: the fd the dumper mapped through (always -1 in images); files come from shmid"),
    A("vmas.madv", "Vma.madv: blob steps map_vmas (hg/nh, before the fill: they choose the page size) and protect_vmas (the rest)"),
    A("vmas.fdflags", "MappedFile.open_flags: the mode the mapped file is opened with"),
    A("dumpable", "MmFields.dumpable: blob (PR_SET_DUMPABLE 0 or 1)", probe=f"{_TC}.mm.dumpable"),
    R("dumpable", "dumpable 2 (suid_dumpable), which PR_SET_DUMPABLE cannot set", _only(0, 1), bad=2),
    R("aios", "an AIO ring (io_setup)", bad=[{"id": 1, "nr_req": 1, "ring_len": 4096}]),
    I("aios.id", "part of aios, refused"),
    I("aios.nr_req", "part of aios, refused"),
    I("aios.ring_len", "part of aios, refused"),
    A("thp_disabled", "MmFields.thp_disabled: blob (PR_SET_THP_DISABLE)", probe=f"{_TC}.mm.thp_disabled"),
))

PAGEMAP_HEAD = RecordKind("pagemap-head", "pagemap-PID.img, pagemap-shmem-ID.img (first record)",
                          pagemap_pb2.PagemapHead, (
    A("pages_id", "Task.pages_path / SharedMemory.pages_path: names pages-N.img"),
))

PAGEMAP = RecordKind("pagemap", "pagemap-PID.img, pagemap-shmem-ID.img", pagemap_pb2.PagemapEntry, (
    A("vaddr", "PageRun.start_addr: blob step fill_pages"),
    A("compat_nr_pages", "PageRun.nr_pages when nr_pages is 0"),
    R("in_parent", "pages in a parent image (incremental dumps)"),
    R("flags", "pages in a parent image or left on a page server (PE_PARENT, PE_LAZY without PE_PRESENT)",
      _pagemap_flags_ok, bad=PE_LAZY),
    A("nr_pages", "PageRun.nr_pages"),
))

FS = RecordKind("fs", "fs-PID.img", fs_pb2.FsEntry, (
    A("cwd_id", "Task.cwd: restore/task.py _restore_fs (chdir)"),
    A("root_id", "Task.root: restore/task.py _restore_fs (chroot)"),
    A("umask", "Task.umask: restore/task.py run_child (umask, before the fds)", probe=f"{_TC}.umask"),
))

IDS = RecordKind("ids", "ids-PID.img", ids_pb2.TaskKobjIdsEntry, (
    R("vm_id", "an address space shared between processes (CLONE_VM)", _not_shared("vm_id"), bad=SHARED),
    R("files_id", "an fd table shared between processes (CLONE_FILES)", _not_shared("files_id"), bad=SHARED),
    R("fs_id", "fs info shared between processes (CLONE_FS)", _not_shared("fs_id"), bad=SHARED),
    R("sighand_id", "signal handlers shared between processes (CLONE_SIGHAND)", _not_shared("sighand_id"), bad=SHARED),
    R("pid_ns_id", "a pid namespace of its own", _root_ns("pid_ns_id"), bad=999),
    R("net_ns_id", "a network namespace other than ours without netns-ID.img (one with it is made by "
      "netns/namespace.py, the root cloned into it)", _root_or_restored_net_ns, bad=999),
    R("ipc_ns_id", "an IPC namespace of its own", _root_ns("ipc_ns_id"), bad=999),
    R("uts_ns_id", "a UTS namespace of its own", _root_ns("uts_ns_id"), bad=999),
    R("mnt_ns_id", "a mount namespace of its own", _root_ns("mnt_ns_id"), bad=999),
    R("user_ns_id", "a user namespace of its own", _root_ns("user_ns_id"), bad=999),
    R("cgroup_ns_id", "a cgroup namespace of its own", _root_ns("cgroup_ns_id"), bad=999),
    A("time_ns_id", "the root enters a new time namespace from timens-0.img (restore/task.py), whichever "
      "it was dumped in"),
))

FDINFO = RecordKind("fdinfo", "fdinfo-N.img", fdinfo_pb2.FdinfoEntry, (
    A("id", "links the fd to its files.img entry"),
    A("flags", "cloexec of OpenFile/PipeEnd/UnixSocketEnd/ExtFileEnd (FD_CLOEXEC)", probe=f"{_TC}.files[0].cloexec"),
    I("type", "a copy of the files.img entry's type, which decides"),
    A("fd", "the fd number (files/__init__.py install)"),
    R("xattr_security_selinux", "an SELinux label on the fd"),
))

_FILE_KIND_ID = "the same id as FileEntry.id, which links it"

# FileEntry payloads of fd kinds pycrestore does not restore (yet), and what each one is.
_UNRESTORED_FILE_KINDS = (
    ("nsf", "an fd on a namespace file (/proc/PID/ns/*)"),
    ("psk", "a packet socket (AF_PACKET)"),
    ("nlsk", "a netlink socket"),
    ("tunf", "a tun/tap fd"),
    ("ffy", "a fanotify instance and its marks"),
    ("fifo", "a FIFO (named pipe)"),
    ("bpf", "a BPF map"),
    ("pidfd", "a pidfd"),
)


def _required_fields(field: FieldDescriptor) -> dict[str, object]:
    """The smallest valid value of a message field (its required fields, zero): the ``bad``
    value tests/test_plan_coverage.py sets to prove that a refused payload is refused."""
    out: dict[str, object] = {}
    for sub in field.message_type.fields:
        if not sub.is_required:
            continue
        if sub.type == FieldDescriptor.TYPE_MESSAGE:
            out[sub.name] = _required_fields(sub)
        elif sub.type == FieldDescriptor.TYPE_STRING:
            out[sub.name] = ""
        elif sub.type == FieldDescriptor.TYPE_BOOL:
            out[sub.name] = False
        else:
            out[sub.name] = 0
    return out


# INETSK entries (files/inet.py): read() turns them into InetSocket, refusing (naming task, fd
# and socket) the families, types, protocols and states it cannot rebuild; create_socket()
# applies the rest, finish_socket() the last of it once every task is restored.
_INET = "files/inet.py"
_TTY = "files/tty.py"
_INET_SOCKET = (
    A("isk", f"InetSocketFd / InetSocket ({_INET} read)"),
    I("isk.id", _FILE_KIND_ID),
    A("isk.ino", "InetSocket.ino: names the connection's tcp-stream-<ino>.img"),
    A("isk.family", f"socket(): IPv4 and IPv6; other families refused by {_INET} read"),
    A("isk.type", f"socket(): TCP (SOCK_STREAM) and UDP (SOCK_DGRAM); others refused by {_INET} read"),
    A("isk.proto", f"socket(): IPPROTO_TCP, IPPROTO_UDP; others refused by {_INET} read"),
    A("isk.state", f"LISTEN: bind + listen; ESTABLISHED TCP: TCP repair ({_INET} _repair_connection, "
      f"only with --tcp-established); CLOSE: bind only; other states refused by {_INET} read"),
    A("isk.src_port", f"bind() ({_INET} _bind)"),
    A("isk.dst_port", "connect(): a TCP connection in repair mode (no SYN), a UDP socket plainly"),
    A("isk.flags", "InetSocket.flags: F_SETFL (O_NONBLOCK), last"),
    A("isk.backlog", "listen(backlog)"),
    A("isk.src_addr", f"bind() ({_INET} _bind)"),
    A("isk.dst_addr", "connect()"),
    A("isk.fown", "checked through its fields"),
    *_fown("isk"),
    A("isk.opts", "the socket options below"),
    A("isk.opts.so_sndbuf", f"SO_SNDBUFFORCE, before the queues are refilled ({_INET} _set_buffers)"),
    A("isk.opts.so_rcvbuf", f"SO_RCVBUFFORCE, before the queues are refilled ({_INET} _set_buffers)"),
    A("isk.opts.so_snd_tmo_sec", "SO_SNDTIMEO"),
    A("isk.opts.so_snd_tmo_usec", "SO_SNDTIMEO"),
    A("isk.opts.so_rcv_tmo_sec", "SO_RCVTIMEO"),
    A("isk.opts.so_rcv_tmo_usec", "SO_RCVTIMEO"),
    A("isk.opts.reuseaddr", f"SO_REUSEADDR: forced on while the tree's sockets are bound, the dumped value "
      f"once all exist ({_INET} finish_socket, from files/inet_lock.py)"),
    A("isk.opts.so_priority", "SO_PRIORITY"),
    A("isk.opts.so_rcvlowat", "SO_RCVLOWAT"),
    A("isk.opts.so_mark", "SO_MARK"),
    A("isk.opts.so_passcred", "SO_PASSCRED"),
    A("isk.opts.so_passsec", "SO_PASSSEC"),
    A("isk.opts.so_dontroute", "SO_DONTROUTE"),
    A("isk.opts.so_no_check", "SO_NO_CHECK"),
    A("isk.opts.so_bound_dev", "SO_BINDTODEVICE"),
    R("isk.opts.so_filter", "a socket filter (SO_ATTACH_FILTER)"),
    A("isk.opts.so_reuseport", f"SO_REUSEPORT: as reuseaddr ({_INET} finish_socket)"),
    A("isk.opts.so_broadcast", "SO_BROADCAST"),
    A("isk.opts.so_keepalive", "SO_KEEPALIVE"),
    A("isk.opts.tcp_keepcnt", "TCP_KEEPCNT (older images; tcp_opts.keepcnt wins)"),
    A("isk.opts.tcp_keepidle", "TCP_KEEPIDLE (older images; tcp_opts.keepidle wins)"),
    A("isk.opts.tcp_keepintvl", "TCP_KEEPINTVL (older images; tcp_opts.keepintvl wins)"),
    A("isk.opts.so_oobinline", "SO_OOBINLINE"),
    A("isk.opts.so_linger", "SO_LINGER on, with this many seconds"),
    A("isk.opts.so_buf_lock", "SO_BUF_LOCK, after the sizes (which lock both): autotuning goes on as dumped"),
    A("isk.v6only", "IPV6_V6ONLY, before bind"),
    A("isk.ip_opts", "the IP options below"),
    A("isk.ip_opts.freebind", "IP_FREEBIND / IPV6_FREEBIND"),
    R("isk.ip_opts.raw", "raw-socket IP options (raw sockets are refused)", subtree=True, bad={"hdrincl": True}),
    A("isk.ip_opts.pktinfo", "IP_PKTINFO / IPV6_RECVPKTINFO"),
    A("isk.ip_opts.tos", "IP_TOS"),
    A("isk.ip_opts.ttl", "IP_TTL"),
    A("isk.ifname", "IPv6: the scope id of bind(), by if_nametoindex"),
    R("isk.ns_id", "a socket of a network namespace the restore does not make", _root_or_restored_net_ns,
      bad=999),
    A("isk.shutdown", f"UDP: shutdown(2); a shut-down TCP socket (a FIN in a queue) refused by {_INET} read"),
    A("isk.tcp_opts", "the TCP options below"),
    A("isk.tcp_opts.cork", "TCP_CORK"),
    A("isk.tcp_opts.nodelay", "TCP_NODELAY"),
    A("isk.tcp_opts.keepcnt", "TCP_KEEPCNT"),
    A("isk.tcp_opts.keepidle", "TCP_KEEPIDLE"),
    A("isk.tcp_opts.keepintvl", "TCP_KEEPINTVL"),
)

FILES = RecordKind("files", "files.img", fdinfo_pb2.FileEntry, (
    R("type", "a file of this kind", lambda v, ctx: v in SUPPORTED_FILE_TYPES,
      names={v: k for k, v in fdinfo_pb2.fd_types.items()}, bad=3, final=True),
    A("id", "links fdinfo, VMAs, fs and exe to the entry"),
    A("reg", "OpenFile / MappedFile"),
    I("reg.id", _FILE_KIND_ID),
    A("reg.flags", "OpenFile.flags: open()", probe=f"{_TC}.files[OpenFile].flags"),
    A("reg.pos", "OpenFile.pos: lseek()", probe=f"{_TC}.files[OpenFile].pos"),
    *_fown("reg"),
    A("reg.fown", "checked through its fields"),
    A("reg.name", "OpenFile.path / MappedFile.path"),
    I("reg.mnt_id", "paths are opened in the restorer's mount namespace; a task in another mount "
      "namespace is refused (ids mnt_ns_id)"),
    A("reg.size", "OpenFile.expected_size / MappedFile.expected_size: checked as CRIU does"),
    A("reg.ext", "an external file (dumped with --external file[...]): its fds take the caller's fd with "
                 "--inherit-fd fd[N]:NAME (files/inherited.py); files/regular.py refuses it without one, "
                 "plan/build.py _reg_path refuses a mapping of it"),
    A("reg.mode", "OpenFile.expected_mode: checked"),
    A("reg.build_id", "MappedFile.build_id: checked as CRIU does"),
    R("reg.checksum", "a file checksum to validate (--file-validation checksum)"),
    R("reg.checksum_config", "a file checksum to validate (--file-validation checksum)"),
    R("reg.checksum_parameter", "a file checksum to validate (--file-validation checksum)"),
    A("efd", "EventfdFd (files/eventfd.py)"),
    I("efd.id", _FILE_KIND_ID),
    A("efd.flags", "EventfdFd.flags: O_NONBLOCK via F_SETFL; other flags refused (files/eventfd.py read)"),
    A("efd.counter", "EventfdFd.counter: eventfd(counter) (files/eventfd.py)"),
    A("efd.fown", "checked through its fields"),
    *_fown("efd"),
    A("epfd", "EpollFd (files/epoll.py), installed after its targets"),
    I("epfd.id", _FILE_KIND_ID),
    A("epfd.flags", "EpollFd.flags: O_NONBLOCK via F_SETFL; other flags refused (files/epoll.py read)"),
    A("epfd.fown", "checked through its fields"),
    *_fown("epfd"),
    A("epfd.tfd", "EpollFd.watches: epoll_ctl(EPOLL_CTL_ADD) each (files/epoll.py)"),
    I("epfd.tfd.id", "the epoll's own id in images of CRIU < 3.x (eventpoll-tfd.img); 0 when embedded"),
    A("epfd.tfd.tfd", "EpollWatch.target_fd: the task's fd, installed first (depends_on)"),
    A("epfd.tfd.events", "EpollWatch.events: epoll_ctl"),
    A("epfd.tfd.data", "EpollWatch.data: epoll_ctl (the u64 epoll_wait returns)"),
    I("epfd.tfd.dev", "identifies the target file for CRIU's dump-time check of dup'ed targets; "
      "the target is the task's fd tfd"),
    I("epfd.tfd.inode", "identifies the target file for CRIU's dump-time check of dup'ed targets"),
    I("epfd.tfd.pos", "identifies the target file for CRIU's dump-time check of dup'ed targets"),
    A("sgfd", "SignalfdFd (files/signalfd.py)"),
    I("sgfd.id", _FILE_KIND_ID),
    A("sgfd.flags", "SignalfdFd.flags: SFD_NONBLOCK; other flags refused (files/signalfd.py read)"),
    A("sgfd.fown", "checked through its fields"),
    *_fown("sgfd"),
    A("sgfd.sigmask", "SignalfdFd.sigmask: signalfd4 (files/signalfd.py)"),
    A("tfd", "TimerfdFd (files/timerfd.py)"),
    I("tfd.id", _FILE_KIND_ID),
    A("tfd.flags", "TimerfdFd.flags: TFD_NONBLOCK; other flags refused (files/timerfd.py read)"),
    A("tfd.fown", "checked through its fields"),
    *_fown("tfd"),
    A("tfd.clockid", "TimerfdFd.clockid: timerfd_create"),
    A("tfd.ticks", "TimerfdFd.ticks: TFD_IOC_SET_TICKS after arming, as CRIU's timerfd_arm"),
    A("tfd.settime_flags", "TimerfdFd.settime_flags: timerfd_settime (ABSTIME: now is added)"),
    A("tfd.vsec", "TimerfdFd.value: time left, timerfd_settime"),
    A("tfd.vnsec", "TimerfdFd.value: time left, timerfd_settime"),
    A("tfd.isec", "TimerfdFd.interval: timerfd_settime"),
    A("tfd.insec", "TimerfdFd.interval: timerfd_settime"),
    A("ify", "InotifyFd (files/inotify.py)"),
    I("ify.id", _FILE_KIND_ID),
    A("ify.flags", "InotifyFd.flags: IN_NONBLOCK; other flags refused (files/inotify.py read)"),
    A("ify.fown", "checked through its fields"),
    *_fown("ify"),
    A("ify.wd", "InotifyFd.watches: inotify_add_watch each (files/inotify.py)"),
    I("ify.wd.id", "the inotify's own id in images of old CRIU (inotify-wd.img); 0 when embedded"),
    I("ify.wd.i_ino", "identifies the watched inode for the handle; the watch is re-added by path"),
    A("ify.wd.mask", "InotifyWatch.mask: the event bits (IN_ALL_EVENTS), as CRIU's restore_one_inotify"),
    R("ify.wd.ignored_mask", "an ignored mask (inotify keeps none)"),
    I("ify.wd.s_dev", "identifies the watched inode for the handle; the watch is re-added by path"),
    A("ify.wd.wd", "InotifyWatch.wd: INOTIFY_IOC_SETNEXTWD, then checked"),
    A("ify.wd.f_handle", "through its path"),
    I("ify.wd.f_handle.bytes", "the file handle is stale after a reinstall; the path is used "
      "(a watch without one is refused, files/inotify.py read)"),
    I("ify.wd.f_handle.type", "the file handle is stale after a reinstall; the path is used"),
    I("ify.wd.f_handle.handle", "the file handle is stale after a reinstall; the path is used"),
    A("ify.wd.f_handle.path", "InotifyWatch.path: inotify_add_watch"),
    I("ify.wd.f_handle.mnt_id", "paths are opened in the restorer's mount namespace"),
    # fd kinds no restore code handles yet: the whole payload is refused (any set payload is).
    *(R(name, what, subtree=True, bad=_required_fields(fdinfo_pb2.FileEntry.DESCRIPTOR.fields_by_name[name]))
      for name, what in _UNRESTORED_FILE_KINDS),
    A("ext", "ExtFileEnd: restored by a plugin (plugins/api.py restore_ext_file)"),
    A("ext.id", "ExtFileEnd.file_id"),
    A("ext.fown", "checked through its fields"),
    *_fown("ext"),
    A("usk", "UnixSocketEnd (the fd) / UnixSocket (the socket, made by the root: files/unix_build.py)"),
    I("usk.id", _FILE_KIND_ID),
    A("usk.ino", "UnixSocketEnd.socket_id"),
    A("usk.type", "UnixSocket.sock_type: stream, datagram, seqpacket; others refused by files/unix_socket.py read"),
    A("usk.state", "UnixSocket.state/making: listen(), connect(), socketpair() or accept(); states other than "
      "connected, unconnected and listening refused by files/unix_socket.py read"),
    A("usk.flags", "UnixSocketEnd.flags (O_NONBLOCK)"),
    R("usk.uflags", "CRIU's service socket flags (USK_* other than USK_EXTERN); USK_EXTERN marks a socket "
                    "outside the tree (--ext-unix-sk), never made: a socket of the tree connected to it is "
                    "refused (files/unix_socket.py) unless --inherit-fd replaces it",
      accepts=lambda value, ctx: value in (0, USK_EXTERN), bad=2),
    A("usk.backlog", "UnixSocket.backlog: listen(backlog) of a listening socket; for the others it is the "
      "count of queued packets, which sk-queues.img holds"),
    A("usk.peer", "UnixSocket.peer/making: the socket it is connected to (socketpair, accept from the listener "
      "carrying its name, or connect() to the peer's name); a peer outside the images refused by files/unix_socket.py read"),
    A("usk.fown", "checked through its fields"),
    *_fown("usk"),
    A("usk.opts", "the socket options below"),
    A("usk.opts.so_sndbuf", "UnixSocket.bufs: SO_SNDBUFFORCE, after the queues (files/unix_build.py)",
      probe="unix_sockets[0].sockets[0].bufs[0]"),
    A("usk.opts.so_rcvbuf", "UnixSocket.bufs: SO_RCVBUFFORCE, after the queues (files/unix_build.py)",
      probe="unix_sockets[0].sockets[0].bufs[1]"),
    R("usk.opts.so_snd_tmo_sec", "a send timeout (SO_SNDTIMEO)"),
    R("usk.opts.so_snd_tmo_usec", "a send timeout (SO_SNDTIMEO)"),
    R("usk.opts.so_rcv_tmo_sec", "a receive timeout (SO_RCVTIMEO)"),
    R("usk.opts.so_rcv_tmo_usec", "a receive timeout (SO_RCVTIMEO)"),
    R("usk.opts.reuseaddr", "SO_REUSEADDR"),
    R("usk.opts.so_priority", "SO_PRIORITY"),
    R("usk.opts.so_rcvlowat", "SO_RCVLOWAT other than 1", _only(0, 1), bad=7),
    R("usk.opts.so_mark", "SO_MARK"),
    R("usk.opts.so_passcred", "SO_PASSCRED"),
    R("usk.opts.so_passsec", "SO_PASSSEC"),
    R("usk.opts.so_dontroute", "SO_DONTROUTE"),
    R("usk.opts.so_no_check", "SO_NO_CHECK"),
    R("usk.opts.so_bound_dev", "SO_BINDTODEVICE"),
    R("usk.opts.so_filter", "a socket filter (SO_ATTACH_FILTER)"),
    R("usk.opts.so_reuseport", "SO_REUSEPORT"),
    R("usk.opts.so_broadcast", "SO_BROADCAST"),
    R("usk.opts.so_keepalive", "SO_KEEPALIVE"),
    R("usk.opts.tcp_keepcnt", "TCP_KEEPCNT"),
    R("usk.opts.tcp_keepidle", "TCP_KEEPIDLE"),
    R("usk.opts.tcp_keepintvl", "TCP_KEEPINTVL"),
    R("usk.opts.so_oobinline", "SO_OOBINLINE"),
    R("usk.opts.so_linger", "SO_LINGER", lambda v, ctx: False, bad=5),  # dumped only when lingering is on
    R("usk.opts.so_buf_lock", "SO_BUF_LOCK"),
    A("usk.name", "UnixSocket.name: bind() to the path (a stale socket file removed first) or abstract name; "
      "a connected stream/seqpacket socket made by socketpair() stays unbound, as in CRIU's bind_unix_sk"),
    A("usk.shutdown", "UnixSocket.shutdown_how: shutdown(2) after the queues (files/unix_build.py)"),
    A("usk.file_perms", "UnixSocket.file_perms: chown and chmod of the socket file after bind()"),
    A("usk.file_perms.mode", "UnixSocket.file_perms: chmod of the socket file"),
    A("usk.file_perms.uid", "UnixSocket.file_perms: chown of the socket file"),
    A("usk.file_perms.gid", "UnixSocket.file_perms: chown of the socket file"),
    A("usk.name_dir", "UnixSocket.name_dir: a relative name is bound and connected to from this directory"),
    A("usk.deleted", "UnixSocket.deleted: bound, then its file unlinked once all are connected; a socket "
      "connected to such a name refused by files/unix_socket.py read"),
    R("usk.ns_id", "a socket of a network namespace the restore does not make", _root_or_restored_net_ns,
      bad=999),
    I("usk.mnt_id", "set only for a tree with its own mount namespace, which is refused (ids mnt_ns_id): "
      "names are bound in the restorer's"),
    A("pipe", "PipeEnd"),
    I("pipe.id", _FILE_KIND_ID),
    A("pipe.pipe_id", "PipeEnd.pipe_id: ends with one pipe_id are one pipe"),
    A("pipe.flags", "PipeEnd.flags: O_NONBLOCK via F_SETFL (files/pipe.py)", probe=f"{_TC}.files[PipeEnd].flags"),
    A("pipe.fown", "checked through its fields"),
    *_fown("pipe"),
    A("tty", f"PtyFd ({_TTY} read): a pty master or slave; other terminals refused there"),
    I("tty.id", _FILE_KIND_ID),
    A("tty.tty_info_id", "links the fd to its tty-info.img entry (the pair, by pty index)"),
    A("tty.flags", f"open() access mode and F_SETFL (O_NONBLOCK, O_APPEND); other flags refused by {_TTY} read"),
    A("tty.fown", "checked through its fields"),
    *_fown("tty"),
    A("tty.regf_id", "the path the master (/dev/ptmx) or slave (/dev/pts/N) is opened by"),
    A("memfd", "MappedFile.memfd_inode: a memfd mapped MAP_SHARED"),
    I("memfd.id", _FILE_KIND_ID),
    I("memfd.flags", "the open mode of an fd holding the memfd; memfd fds are refused (plan/build.py "
      "_build_files), mappings open it with vmas.fdflags"),
    I("memfd.pos", "the offset of an fd holding the memfd; memfd fds are refused (plan/build.py _build_files)"),
    A("memfd.fown", "checked through its fields"),
    *_fown("memfd"),
    A("memfd.inode_id", "MappedFile.memfd_inode: links memfd.img"),
    *_INET_SOCKET,
))

_TTY_PARAMS = f"{_TTY} _apply, as CRIU's restore_tty_params"
_TERMIOS = "TCSETS (TIOCSLCKTRMIOS for termios_locked)"


def _termios_fields(prefix: str) -> tuple[Field, ...]:
    return (
        A(prefix, f"{_TERMIOS}: {_TTY_PARAMS}"),
        A(f"{prefix}.c_iflag", _TERMIOS),
        A(f"{prefix}.c_oflag", _TERMIOS),
        A(f"{prefix}.c_cflag", _TERMIOS),
        A(f"{prefix}.c_lflag", _TERMIOS),
        A(f"{prefix}.c_line", _TERMIOS),
        I(f"{prefix}.c_ispeed", "CRIU neither fills nor applies it (termios_copy); the speed is in c_cflag"),
        I(f"{prefix}.c_ospeed", "CRIU neither fills nor applies it (termios_copy); the speed is in c_cflag"),
        A(f"{prefix}.c_cc", f"{_TERMIOS}: the first 19 bytes of the words as CRIU packs them ({_TTY} _control_chars)"),
    )


TTY_INFO = RecordKind("tty-info", "tty-info.img", tty_pb2.TtyInfoEntry, (
    A("id", "links files.img tty entries and tty-data.img"),
    A("type", f"PTY; other terminal types refused by {_TTY} read"),
    A("locked", "TIOCSPTLCK 1 on the master, after every slave is open"),
    A("exclusive", "TIOCEXCL, after every open (CRIU dumps it but does not set it)"),
    A("packet_mode", "TIOCPKT on the master"),
    A("sid", f"the session whose leader takes the slave as controlling terminal (TIOCSCTTY, {_TTY} after_session); "
      "--shell-job: the outside session, replaced by the caller's (restore/terminals.py)"),
    A("pgrp", f"the foreground group: TIOCSPGRP by its leader ({_TTY} after_session)"),
    A("rdev", f"master (ptmx or a Unix98 master major) or slave; a slave's must match pty.index ({_TTY} read)"),
    *_termios_fields("termios"),
    *_termios_fields("termios_locked"),
    A("winsize", f"TIOCSWINSZ: {_TTY_PARAMS}"),
    A("winsize.ws_row", "TIOCSWINSZ"),
    A("winsize.ws_col", "TIOCSWINSZ"),
    A("winsize.ws_xpixel", "TIOCSWINSZ"),
    A("winsize.ws_ypixel", "TIOCSWINSZ"),
    A("pty", "the pair's index: /dev/ptmx is opened until TIOCGPTN gives it (as CRIU's __pty_open_ptmx_index)"),
    A("pty.index", "TIOCGPTN; under --pid-ns in a devpts of the namespace's own (restore/terminals.py)"),
    I("dev", "the devpts instance at dump; the slave is opened by its path in the restorer's (or --pid-ns's own)"),
    A("uid", "fchown of the slave's /dev/pts node (a master's entry names /dev/ptmx, shared by all: left as is)"),
    A("gid", "fchown of the slave's /dev/pts node (a master's entry names /dev/ptmx, shared by all: left as is)"),
))

TTY_DATA = RecordKind("tty-data", "tty-data.img", tty_pb2.TtyDataEntry, (
    A("tty_id", "the side (tty-info id) whose reader had not read the bytes"),
    A("data", f"written into the other side of the pair after its settings, as CRIU's pty_restore_queued_data ({_TTY})"),
))

_REPAIR = f"{_INET} _repair_connection (TCP repair, libsoccr's order)"
TCP_STREAM = RecordKind("tcp-stream", "tcp-stream-INO.img", tcp_stream_pb2.TcpStreamEntry, (
    A("inq_len", "TcpStream.inq: that many payload bytes, refilled into the receive queue"),
    A("inq_seq", f"TCP_QUEUE_SEQ of the receive queue (inq_seq - inq_len, then the refill): {_REPAIR}"),
    A("outq_len", "TcpStream.outq: the payload bytes after inq, the send queue"),
    A("outq_seq", f"TCP_QUEUE_SEQ of the send queue (outq_seq - outq_len, then the refill): {_REPAIR}"),
    A("opt_mask", f"TCP_REPAIR_OPTIONS: SACK, window scale, timestamps ({_INET} negotiated_options)"),
    A("snd_wscale", "TCP_REPAIR_OPTIONS TCPOPT_WINDOW"),
    A("mss_clamp", "TCP_REPAIR_OPTIONS TCPOPT_MAXSEG"),
    A("rcv_wscale", "TCP_REPAIR_OPTIONS TCPOPT_WINDOW"),
    A("timestamp", "TCP_TIMESTAMP: the connection's timestamp clock continues (PAWS)"),
    A("cork", "TCP_CORK (older images; TcpOptsEntry in newer ones)"),
    A("nodelay", "TCP_NODELAY (older images; TcpOptsEntry in newer ones)"),
    A("unsq_len", f"the never-sent tail of outq: sent with a plain send() once repair mode is off "
      f"({_INET} finish_socket); the rest is refilled as sent-but-unacknowledged"),
    A("snd_wl1", "TCP_REPAIR_WINDOW, after the queues"),
    A("snd_wnd", "TCP_REPAIR_WINDOW, after the queues"),
    A("max_window", "TCP_REPAIR_WINDOW, after the queues"),
    A("rcv_wnd", "TCP_REPAIR_WINDOW, after the queues"),
    A("rcv_wup", "TCP_REPAIR_WINDOW, after the queues"),
))

PIPES_DATA = RecordKind("pipes-data", "pipes-data.img", pipe_data_pb2.PipeDataEntry, (
    A("pipe_id", "PipeBuffer.pipe_id"),
    A("bytes", "PipeBuffer.queued: the record's payload length"),
    A("size", "PipeBuffer.size_bytes: F_SETPIPE_SZ (files/pipe.py)", probe="pipes[0].size_bytes"),
))

SK_QUEUES = RecordKind("sk-queues", "sk-queues.img", sk_queues_pb2.SkPacketEntry, (
    A("id_for", "UnixSocket.queued: the socket the packet waits on; sent through a socket connected to it "
      "(files/unix_build.py)"),
    A("length", "UnixSocket.queued: one message per record (datagram/seqpacket boundaries kept)"),
    R("scm", "fds or credentials in flight (SCM_RIGHTS)", bad=[{"type": 1, "rights": [3]}]),
    I("scm.type", "part of scm, refused"),
    I("scm.rights", "part of scm, refused"),
    R("ucred", "sender credentials of a queued packet (SCM_CREDENTIALS)", bad={"uid": 0, "gid": 0, "pid": 1}),
    I("ucred.uid", "part of ucred, refused"),
    I("ucred.gid", "part of ucred, refused"),
    I("ucred.pid", "part of ucred, refused"),
))

TIMENS = RecordKind("timens", "timens-0.img", timens_pb2.TimensEntry, (
    A("monotonic", "TimeOffsets: restore/task.py _enter_time_namespace"),
    A("monotonic.tv_sec", "TimeOffsets.monotonic_sec", probe="timens.monotonic_sec"),
    A("monotonic.tv_nsec", "TimeOffsets.monotonic_nsec", probe="timens.monotonic_nsec"),
    A("boottime", "TimeOffsets: restore/task.py _enter_time_namespace"),
    A("boottime.tv_sec", "TimeOffsets.boottime_sec", probe="timens.boottime_sec"),
    A("boottime.tv_nsec", "TimeOffsets.boottime_nsec", probe="timens.boottime_nsec"),
))

SECCOMP = RecordKind("seccomp", "seccomp.img", seccomp_pb2.SeccompEntry, (
    A("seccomp_filters", BLOB_CREDS_STEP, subtree=True),
))

MEMFD = RecordKind("memfd", "memfd.img", memfd_pb2.MemfdInodeEntry, (
    A("name", "SharedMemory.name: memfd_create (files/memfd.py)", probe="shared_memory[0].name"),
    R("uid", "a memfd owner other than root (fchown)"),
    R("gid", "a memfd group other than root (fchown)"),
    A("size", "SharedMemory.size_bytes: ftruncate"),
    A("shmid", "SharedMemory: names pagemap-shmem-<shmid>.img"),
    A("seals", "SharedMemory.seals: F_ADD_SEALS", probe="shared_memory[0].seals"),
    A("inode_id", "SharedMemory.inode_id: links files.img memfd entries"),
    R("hugetlb_flag", "a hugetlb memfd (MFD_HUGETLB)"),
    R("mode", "memfd permissions other than a new memfd's 0777 (fchmod)", _only(0, 0o100777), bad=0o100600),
))

CPUINFO = RecordKind("cpuinfo", "cpuinfo.img", cpuinfo_pb2.CpuinfoEntry, (
    A("x86_entry", "RestorePlan.dump_cpu: the CPU compatibility check before the restore (restore/cpucap.py)",
      subtree=True),
    I("ppc64_entry", "another architecture's CPU; cores of other machines are refused (core mtype)", subtree=True),
    I("s390_entry", "another architecture's CPU; cores of other machines are refused (core mtype)", subtree=True),
))

RECORD_KINDS: tuple[RecordKind, ...] = (INVENTORY, PSTREE, CORE, MM, PAGEMAP_HEAD, PAGEMAP, FS, IDS, FDINFO, FILES,
                                       PIPES_DATA, SK_QUEUES, TCP_STREAM, TTY_INFO, TTY_DATA, TIMENS, SECCOMP, MEMFD,
                                       CPUINFO)
BY_NAME = {k.name: k for k in RECORD_KINDS}


def is_repeated(fd: FieldDescriptor) -> bool:
    """Whether a field is repeated (protobuf 6+ spells it ``is_repeated``, older ones ``label``)."""
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def schema_paths(descriptor: Descriptor, prefix: str = "") -> list[tuple[str, FieldDescriptor]]:
    """Every field below ``descriptor``, depth first, as (dotted path, field descriptor)."""
    out = []
    for field in descriptor.fields:
        path = prefix + field.name
        out.append((path, field))
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            out.extend(schema_paths(field.message_type, path + "."))
    return out


def covering(kind: RecordKind, path: str) -> list[Field]:
    """The table lines that decide ``path``: its own (there may be several, e.g. applied for some
    values and refused for others), else the nearest subtree line above it."""
    own = [f for f in kind.fields if f.path == path]
    if own:
        return own
    parts = path.split(".")
    for n in range(len(parts) - 1, 0, -1):
        above = [f for f in kind.fields if f.path == ".".join(parts[:n]) and f.subtree]
        if above:
            return above
    return []


def refused_fields() -> list[tuple[RecordKind, Field]]:
    """Every REFUSED line of the table, in table order."""
    return [(k, f) for k in RECORD_KINDS for f in k.fields if f.disposition is Disposition.REFUSED]


_PROBE_STEP = re.compile(r"\.?(\w+)|\[(\d+)\]|\['(\w+)'\]|\[([A-Z]\w*)\]")


def probe(plan: object, expr: str) -> object:
    """Follow a probe path such as ``tasks[0].threads[0].gpregs['ip']`` through the plan;
    ``files[PipeEnd]`` is the first element of that class."""
    value = plan
    for attr, index, key, cls in _PROBE_STEP.findall(expr):
        if cls:
            value = next(v for v in value if type(v).__name__ == cls)  # type: ignore[attr-defined]
        elif attr:
            value = getattr(value, attr)
        elif index:
            value = value[int(index)]  # type: ignore[index]
        else:
            value = value[key]  # type: ignore[index]
    return value


def render_markdown() -> str:
    """The table as Markdown, one section per record kind (docs/fidelity.md embeds it)."""
    lines = []
    for kind in RECORD_KINDS:
        counts = {d: sum(1 for f in kind.fields if f.disposition is d) for d in Disposition}
        lines += [f"### {kind.name} ({kind.files}, `{kind.message.DESCRIPTOR.name}`)", "",
                  f"{counts[Disposition.APPLIED]} applied, {counts[Disposition.REFUSED]} refused, "
                  f"{counts[Disposition.IGNORED]} ignored.", "",
                  "| field | disposition | where / what / why |", "| --- | --- | --- |"]
        for f in kind.fields:
            path = f"`{f.path}`" + (" (and below)" if f.subtree else "")
            lines.append(f"| {path} | {f.disposition.value} | {f.where.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown())
