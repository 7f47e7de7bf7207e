"""ctypes mirror of ``restorer_blob/abi.h``: the arguments the restorer blob reads.

Every ``#define`` and every struct of abi.h appears here under the same name, with the same
fields in the same order; abi.h documents what each field means, and its header comment
states the entry and status protocol. tests/test_blob_abi.py compiles abi.h with gcc and
checks each value, size and offset against this module, so the two cannot drift apart.

Rules (from abi.h): fixed-width fields only; an address is a ``c_uint64`` in the task's
address space; holes are explicit ``_pad`` fields left at zero; any layout change bumps
``BLOB_ABI_VERSION`` on both sides.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint32, c_uint64

BLOB_ARGS_MAGIC = 0x42435950  # "PYCB" in memory, little-endian
BLOB_STATUS_MAGIC = 0x54535942  # "BYST": the blob has started writing status
BLOB_ABI_VERSION = 6  # 6: fill threads, blob_vma.fill_madv

BLOB_PAGE_SIZE = 4096
BLOB_STACK_BYTES = 32768          # the leader's stack
BLOB_THREAD_STACK_BYTES = 16384   # each other thread's stack
BLOB_FILL_STACK_BYTES = 8192      # each fill worker's stack
BLOB_MAX_FILL_THREADS = 16        # fill threads per task, the leader included
BLOB_SIGFRAME_ALIGN = 64
BLOB_SIGINFO_BYTES = 128
BLOB_MAX_IOVS = 1024
BLOB_CAP_WORDS = 2                # _LINUX_CAPABILITY_U32S_3 (linux/capability.h)
BLOB_MAX_GROUPS = 65536           # NGROUPS_MAX (linux/limits.h)
BLOB_MAX_BPF_INSNS = 4096         # BPF_MAXINSNS (linux/bpf_common.h)
BLOB_BPF_INSN_BYTES = 8           # sizeof(struct sock_filter) (linux/filter.h)
BLOB_SIGEVENT_BYTES = 64          # sizeof(struct sigevent) (asm-generic/siginfo.h)

BLOB_ENTRY_RESTORE_TASK = "restore_task"
BLOB_SYSCALL_GADGET = "blob_syscall_gadget"

# clone3 flags of a restored thread: CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND |
# CLONE_THREAD | CLONE_SYSVSEM (linux/sched.h).
BLOB_THREAD_CLONE_FLAGS = 0x50F00

# clone3 flags of a fill worker: CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND |
# CLONE_THREAD | CLONE_UNTRACED | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID (linux/sched.h).
BLOB_FILL_CLONE_FLAGS = 0xB10F00

# blob_args.fault_step values that are not steps (tests only, faults.py).
BLOB_FAULT_FILL_WORKER = 0x100    # every fill worker fails its first batch with EIO

# blob_args.flags
BLOB_F_EXIT = 1 << 0
BLOB_F_NO_TRAP = 1 << 1
BLOB_F_SET_MM = 1 << 2

# The blob's own exit statuses; args.exit_code must be below BLOB_EXIT_RESERVED.
BLOB_EXIT_RESERVED = 240
BLOB_EXIT_BAD_MAGIC = 240
BLOB_EXIT_STEP_FAILED = 245

# blob_status.state
BLOB_STATE_RUNNING = 1
BLOB_STATE_OK = 2
BLOB_STATE_FAILED = 3

# blob_status.step (restorer.c's blob_steps[] gives the order). Threads other than the
# leader run THREAD_STATE and PENDING_SIGNALS only.
BLOB_STEP_CHECK_ARGS = 1
BLOB_STEP_BLOCK_SIGNALS = 2
BLOB_STEP_UNREGISTER_RSEQ = 3
BLOB_STEP_PARK_VDSO = 4
BLOB_STEP_UNMAP_OLD = 5
BLOB_STEP_MAP_VMAS = 6
BLOB_STEP_FILL_PAGES = 7
BLOB_STEP_PROTECT_VMAS = 8
BLOB_STEP_PLACE_VDSO = 9
BLOB_STEP_CLOSE_FDS = 10
BLOB_STEP_SET_MM = 11
BLOB_STEP_SIGACTIONS = 12
BLOB_STEP_THREAD_STATE = 13
BLOB_STEP_RLIMITS = 14
BLOB_STEP_PENDING_SIGNALS = 15
BLOB_STEP_ITIMERS = 16
BLOB_STEP_CREATE_THREADS = 17     # runs between THREAD_STATE and RLIMITS
BLOB_STEP_PERSONALITY = 18        # after PROTECT_VMAS, before CREATE_THREADS
BLOB_STEP_POSIX_TIMERS = 19       # create (disarmed), after RLIMITS
BLOB_STEP_SECCOMP = 20            # every thread, after PENDING_SIGNALS
BLOB_STEP_CREDS = 21              # every thread, after SECCOMP
BLOB_STEP_LATE_PRCTLS = 22        # every thread, after CREDS
BLOB_STEP_ARM_POSIX_TIMERS = 23   # last, after ITIMERS

# blob_thread.seccomp_mode: SECCOMP_MODE_* (linux/seccomp.h)
BLOB_SECCOMP_DISABLED = 0
BLOB_SECCOMP_STRICT = 1
BLOB_SECCOMP_FILTER = 2


class BlobStatus(ctypes.Structure):
    """struct blob_status: where the blob is and what went wrong (written by the blob)."""

    _fields_ = [
        ("magic", c_uint32),
        ("state", c_uint32),
        ("step", c_uint32),
        ("err", c_uint32),
        ("index", c_uint32),
        ("_pad", c_uint32),
        ("addr", c_uint64),
    ]


class BlobRseq(ctypes.Structure):
    """struct blob_rseq: an rseq(2) area to unregister or register."""

    _fields_ = [
        ("addr", c_uint64),
        ("len", c_uint32),
        ("sig", c_uint32),
    ]


class BlobVma(ctypes.Structure):
    """struct blob_vma: one VMA to map at its checkpointed address."""

    _fields_ = [
        ("start", c_uint64),
        ("end", c_uint64),
        ("pgoff", c_uint64),
        ("madv", c_uint64),
        ("fill_madv", c_uint64),
        ("prot", c_uint32),
        ("map_prot", c_uint32),
        ("flags", c_uint32),
        ("fd", c_int32),
        ("plan_index", c_uint32),
        ("_pad", c_uint32),
    ]


class BlobPageRead(ctypes.Structure):
    """struct blob_page_read: one preadv(2) batch from the pages image."""

    _fields_ = [
        ("file_off", c_uint64),
        ("first_iov", c_uint32),
        ("nr_iovs", c_uint32),
    ]


class BlobIovec(ctypes.Structure):
    """struct blob_iovec: struct iovec with fixed-width fields."""

    _fields_ = [
        ("base", c_uint64),
        ("len", c_uint64),
    ]


class BlobFillWorker(ctypes.Structure):
    """struct blob_fill_worker: one thread that reads page batches during step FILL_PAGES."""

    _fields_ = [
        ("tid", c_int32),
        ("alive", c_uint32),
        ("stack_top", c_uint64),
    ]


class BlobFillState(ctypes.Structure):
    """struct blob_fill_state: the next batch to take and the first failure (blob-written)."""

    _fields_ = [
        ("next_read", c_uint32),
        ("failed", c_uint32),
        ("err", c_uint32),
        ("index", c_uint32),
        ("addr", c_uint64),
    ]


class BlobVdsoArea(ctypes.Structure):
    """struct blob_vdso_area: a kernel-made area ([vvar], [vdso] ...), parked then placed."""

    _fields_ = [
        ("runtime_start", c_uint64),
        ("park_start", c_uint64),
        ("target_start", c_uint64),
        ("len", c_uint64),
    ]


class BlobSigaction(ctypes.Structure):
    """struct blob_sigaction: one rt_sigaction(2) call (kernel struct sigaction, x86-64)."""

    _fields_ = [
        ("signo", c_uint32),
        ("_pad", c_uint32),
        ("handler", c_uint64),
        ("flags", c_uint64),
        ("restorer", c_uint64),
        ("mask", c_uint64),
    ]


class BlobRlimit(ctypes.Structure):
    """struct blob_rlimit: one prlimit64(2) call on the task itself."""

    _fields_ = [
        ("resource", c_uint32),
        ("_pad", c_uint32),
        ("cur", c_uint64),
        ("max", c_uint64),
    ]


class BlobSiginfo(ctypes.Structure):
    """struct blob_siginfo: a raw siginfo_t to queue again."""

    _fields_ = [
        ("bytes", c_uint8 * BLOB_SIGINFO_BYTES),
    ]


class BlobItimer(ctypes.Structure):
    """struct blob_itimer: struct itimerval for setitimer(2)."""

    _fields_ = [
        ("interval_sec", c_uint64),
        ("interval_usec", c_uint64),
        ("value_sec", c_uint64),
        ("value_usec", c_uint64),
    ]


class BlobMm(ctypes.Structure):
    """struct blob_mm: the layout of struct prctl_mm_map (linux/prctl.h)."""

    _fields_ = [
        ("start_code", c_uint64),
        ("end_code", c_uint64),
        ("start_data", c_uint64),
        ("end_data", c_uint64),
        ("start_brk", c_uint64),
        ("brk", c_uint64),
        ("start_stack", c_uint64),
        ("arg_start", c_uint64),
        ("arg_end", c_uint64),
        ("env_start", c_uint64),
        ("env_end", c_uint64),
        ("auxv", c_uint64),
        ("auxv_size", c_uint32),
        ("exe_fd", c_uint32),
    ]


class BlobCreds(ctypes.Structure):
    """struct blob_creds: one thread's credentials (capability sets: 2 u32 words, low first)."""

    _fields_ = [
        ("uid", c_uint32),
        ("euid", c_uint32),
        ("suid", c_uint32),
        ("fsuid", c_uint32),
        ("gid", c_uint32),
        ("egid", c_uint32),
        ("sgid", c_uint32),
        ("fsgid", c_uint32),
        ("cap_inh", c_uint32 * BLOB_CAP_WORDS),
        ("cap_prm", c_uint32 * BLOB_CAP_WORDS),
        ("cap_eff", c_uint32 * BLOB_CAP_WORDS),
        ("cap_bnd", c_uint32 * BLOB_CAP_WORDS),
        ("cap_amb", c_uint32 * BLOB_CAP_WORDS),
        ("secbits", c_uint32),
        ("no_new_privs", c_uint32),
        ("nr_groups", c_uint32),
        ("_pad", c_uint32),
        ("groups", c_uint64),
    ]


class BlobSeccompFilter(ctypes.Structure):
    """struct blob_seccomp_filter: one BPF program for seccomp(SECCOMP_SET_MODE_FILTER)."""

    _fields_ = [
        ("insns", c_uint64),
        ("nr_insns", c_uint32),
        ("flags", c_uint32),
    ]


class BlobPosixTimer(ctypes.Structure):
    """struct blob_posix_timer: timer_create() arguments and the itimerspec to arm it with."""

    _fields_ = [
        ("timer_id", c_uint32),
        ("clock_id", c_uint32),
        ("sigev_notify", c_int32),
        ("sigev_signo", c_int32),
        ("sival", c_uint64),
        ("notify_tid", c_int32),
        ("_pad", c_uint32),
        ("interval_sec", c_uint64),
        ("interval_nsec", c_uint64),
        ("value_sec", c_uint64),
        ("value_nsec", c_uint64),
    ]


class BlobThread(ctypes.Structure):
    """struct blob_thread: per-thread state the blob sets from inside each thread.

    ``status`` is written by threads[1..] themselves; the leader reports in BlobArgs.status.
    """

    _fields_ = [
        ("status", BlobStatus),
        ("tid", c_uint32),
        ("_pad", c_uint32),
        ("stack_top", c_uint64),
        ("sigframe", c_uint64),
        ("fs_base", c_uint64),
        ("gs_base", c_uint64),
        ("clear_child_tid", c_uint64),
        ("robust_list", c_uint64),
        ("robust_list_len", c_uint64),
        ("rseq", BlobRseq),
        ("comm", c_uint8 * 16),
        ("siginfos", c_uint64),
        ("nr_siginfos", c_uint32),
        ("_pad1", c_uint32),
        ("creds", c_uint64),
        ("seccomp_filters", c_uint64),
        ("nr_seccomp_filters", c_uint32),
        ("seccomp_mode", c_uint32),
        ("pdeath_sig", c_uint32),
        ("dumpable", c_int32),
    ]


class BlobArgs(ctypes.Structure):
    """struct blob_args: everything restore_task needs; the blob writes ``status`` back."""

    _fields_ = [
        ("magic", c_uint32),
        ("abi_version", c_uint32),
        ("args_size", c_uint32),
        ("flags", c_uint32),
        ("status", BlobStatus),
        ("bootstrap_start", c_uint64),
        ("bootstrap_len", c_uint64),
        ("task_size", c_uint64),
        ("stack_top", c_uint64),
        ("exit_code", c_uint32),
        ("fault_step", c_uint32),  # tests only (faults.py): BLOB_STEP_* to fail with EIO
        ("self_rseq", BlobRseq),
        ("vmas", c_uint64),
        ("nr_vmas", c_uint32),
        ("pages_fd", c_int32),
        ("page_reads", c_uint64),
        ("nr_page_reads", c_uint32),
        ("nr_iovs", c_uint32),
        ("iovs", c_uint64),
        ("vdso_areas", c_uint64),
        ("nr_vdso_areas", c_uint32),
        ("nr_close_fds", c_uint32),
        ("close_fds", c_uint64),
        ("mm", BlobMm),
        ("dumpable", c_int32),
        ("thp_disabled", c_int32),
        ("sigactions", c_uint64),
        ("nr_sigactions", c_uint32),
        ("nr_rlimits", c_uint32),
        ("rlimits", c_uint64),
        ("siginfos", c_uint64),
        ("nr_siginfos", c_uint32),
        ("nr_threads", c_uint32),
        ("threads", c_uint64),
        ("itimers", BlobItimer * 3),
        ("posix_timers", c_uint64),
        ("nr_posix_timers", c_uint32),
        ("personality", c_uint32),
        ("child_subreaper", c_uint32),
        ("fill_threads", c_uint32),
        ("fill_workers", c_uint64),
        ("fill", BlobFillState),
    ]

    @classmethod
    def new(cls) -> BlobArgs:
        """Zeroed args with a valid header (magic, version, size), no pages fd, no exe fd
        and the task-wide prctls left alone (dumpable, thp_disabled = -1, personality
        0xffffffff).

        Every array is empty, no flag is set and the status is zero (the blob sets its
        magic when it starts): the caller fills in what it needs.
        """
        args = cls()
        args.magic = BLOB_ARGS_MAGIC
        args.abi_version = BLOB_ABI_VERSION
        args.args_size = ctypes.sizeof(cls)
        args.pages_fd = -1
        args.mm.exe_fd = 0xFFFF_FFFF
        args.dumpable = -1
        args.thp_disabled = -1
        args.personality = 0xFFFF_FFFF
        return args


# The C name of each mirrored struct (what tests/test_blob_abi.py compares).
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "blob_status": BlobStatus,
    "blob_rseq": BlobRseq,
    "blob_vma": BlobVma,
    "blob_page_read": BlobPageRead,
    "blob_iovec": BlobIovec,
    "blob_fill_worker": BlobFillWorker,
    "blob_fill_state": BlobFillState,
    "blob_vdso_area": BlobVdsoArea,
    "blob_sigaction": BlobSigaction,
    "blob_rlimit": BlobRlimit,
    "blob_siginfo": BlobSiginfo,
    "blob_itimer": BlobItimer,
    "blob_mm": BlobMm,
    "blob_creds": BlobCreds,
    "blob_seccomp_filter": BlobSeccompFilter,
    "blob_posix_timer": BlobPosixTimer,
    "blob_thread": BlobThread,
    "blob_args": BlobArgs,
}

# Offset of the status record in struct blob_args: fixed in every ABI version (abi.h).
STATUS_OFFSET = BlobArgs.status.offset
