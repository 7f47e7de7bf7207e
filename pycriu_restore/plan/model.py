"""The restore plan: everything the orchestrator needs, as plain, validated data.

``plan.build.build_plan(images)`` turns an :class:`~pycriu_restore.images.ImageSet` into a
:class:`RestorePlan`. Building it has no side effects and needs no root, so every check of
the images (overlapping VMAs, pages outside any VMA, a missing main thread ...) runs before
the first fork. The orchestrator (``restore/``) only reads the plan; the blob's argument
structs are written from it.

Addresses are virtual addresses of the restored task; sizes are in bytes unless the name
says pages (``nr_pages``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TaskState(enum.IntEnum):
    """``core.tc.task_state``: what the task was doing at dump (compel/include/uapi/task-state.h,
    COMPEL_TASK_*; crit prints 3 as "Zombie" and 2 as a bare number, so go by the numbers)."""

    ALIVE = 1  # running or sleeping: restored in full, then it runs
    DEAD = 2  # a zombie: exited, not yet reaped by its parent; only core-PID.img exists
    STOPPED = 3  # stopped by a stop signal: restored in full, then stopped again


class VmaKind(enum.Enum):
    """How the blob recreates a VMA (CRIU's VMA_AREA_* status bits, reduced to what differs)."""

    ANON_PRIVATE = "anon-private"  # mmap(MAP_PRIVATE|MAP_ANONYMOUS), pages from the pages image
    FILE_PRIVATE = "file-private"  # mmap(MAP_PRIVATE, fd, pgoff), dirty pages overlaid from the image
    FILE_SHARED = "file-shared"  # mmap(MAP_SHARED, fd, pgoff): the file itself holds the content
    MEMFD_SHARED = "memfd-shared"  # MAP_SHARED on a memfd restored from memfd.img (+ shmem pagemap)
    # MAP_SHARED|MAP_ANONYMOUS (VMA_ANON_SHARED): MAP_SHARED on the one shmem object of its
    # shmid, made by the root and filled from pagemap-shmem-<shmid>.img (files/anon_shmem.py)
    ANON_SHARED = "anon-shared"
    VDSO = "vdso"  # the running kernel's [vdso], moved to the dumped address
    VVAR = "vvar"  # the running kernel's [vvar] (+ [vvar_vclock]), moved likewise


@dataclass(frozen=True)
class PageRun:
    """``nr_pages`` consecutive pages at ``start_addr``, stored at ``file_offset`` in the pages image."""

    start_addr: int
    nr_pages: int
    file_offset: int


@dataclass(frozen=True)
class MappedFile:
    """A file a VMA maps (or the exe link): opened by the task before it enters the blob."""

    file_id: int  # FileEntry id in files.img
    path: str
    open_flags: int  # O_RDONLY / O_RDWR, from VmaEntry.fdflags
    # Identity checks as CRIU does them at restore (files-reg.c): size, and the GNU
    # build-id note of ELF files. None means "the image recorded none".
    expected_size: int | None = None
    build_id: bytes | None = None
    # Set for a MAP_SHARED mapping of a memfd (memfd.img): the blob maps the one memfd that
    # every task sharing it received, instead of opening ``path``.
    memfd_inode: int | None = None
    # Set for MAP_SHARED|MAP_ANONYMOUS memory (VMA_ANON_SHARED): the blob maps the one shmem
    # object of this shmid (AnonSharedMemory) that every task sharing it received; ``path``
    # only names it in messages.
    shmem_id: int | None = None
    # A device mapping (VMA_EXT_PLUGIN: /dev/kfd, /dev/dri/renderD*): the task asks its
    # plugins (update_vma_map) for the fd and the new offset to map it through, as CRIU's
    # open_filemap does; ``path`` is the device's name in the image, which the plugin matches.
    plugin: bool = False


@dataclass(frozen=True)
class Vma:
    """One VMA of the restored task (``mm-PID.img``), with the pages that fill it."""

    start: int
    end: int
    prot: int  # PROT_* as dumped
    flags: int  # MAP_* as dumped (MAP_GROWSDOWN for the stack)
    kind: VmaKind
    pgoff: int = 0  # byte offset into the file for file VMAs
    madv: int = 0  # bit (1 << MADV_x) for each madvise() to apply after the pages are in
    file: MappedFile | None = None
    page_runs: tuple[PageRun, ...] = ()

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def nr_present_pages(self) -> int:
        return sum(run.nr_pages for run in self.page_runs)


@dataclass(frozen=True)
class OpenFile:
    """A regular file (or device node such as /dev/null) to open at fd ``fd``."""

    fd: int
    path: str
    flags: int  # open() flags as dumped, O_CREAT never included
    pos: int
    cloexec: bool
    file_id: int = 0  # FileEntry id: fds of several tasks with one id share one open file
    # CRIU's identity checks at restore (files-reg.c): the size must match unless the
    # file is opened O_APPEND (logs grow) or is not a regular file; the build-id of
    # mapped ELF files must match. None means "not checked".
    expected_size: int | None = None
    expected_mode: int | None = None


@dataclass(frozen=True)
class PipeEnd:
    """One end of a pipe at fd ``fd``; ends with the same ``pipe_id`` are one pipe."""

    fd: int
    pipe_id: int
    flags: int  # O_RDONLY for the read end, O_WRONLY for the write end, plus O_NONBLOCK
    cloexec: bool


@dataclass(frozen=True)
class InheritedFile:
    """An fd the caller hands over (CRIU's --inherit-fd fd[N]:RESOURCE) in place of the
    file the images name ``key`` ("pipe:[INO]", a path without its leading "/"): installed
    at ``fd`` as it is, not re-created (files/inherited.py)."""

    fd: int
    key: str
    cloexec: bool
    index: int  # the key's place among the --inherit-fd resources given: its shared object's key


@dataclass(frozen=True)
class PipeBuffer:
    """A pipe's kernel buffer at dump (``pipes-data.img``): its size and the unread bytes."""

    pipe_id: int
    size_bytes: int | None
    queued: bytes = b""


@dataclass(frozen=True)
class ExtFileEnd:
    """An fd of a kind only a plugin can restore (files.img type EXT: /dev/kfd, ...)."""

    fd: int
    file_id: int  # ExtFileEntry id: names the plugin's images (amdgpu-kfd-<id>.img)
    flags: int
    cloexec: bool


@dataclass(frozen=True)
class UnixSocketEnd:
    """An fd holding a unix socket (``socket_id`` is its inode number in the images)."""

    fd: int
    socket_id: int
    flags: int  # O_NONBLOCK etc. of the open file
    cloexec: bool


@dataclass(frozen=True)
class SharedMemory:
    """A memfd (``memfd.img``) that tasks map MAP_SHARED: created once, filled, shared by fd."""

    inode_id: int
    name: str
    size_bytes: int
    seals: int
    pages_path: str
    page_runs: tuple[PageRun, ...]  # start_addr here is the offset in the memfd


@dataclass(frozen=True)
class AnonSharedMemory:
    """MAP_SHARED|MAP_ANONYMOUS memory (VMA_ANON_SHARED VMAs with one ``shmid``): one shmem
    object, created once by the root and filled, which every VMA with this shmid maps."""

    shmid: int  # the dumped object's inode number: names pagemap-shmem-<shmid>.img
    size_bytes: int  # the largest pgoff + size of the VMAs that map it (criu/shmem.c collect_shmem)
    pages_path: str
    page_runs: tuple[PageRun, ...]  # start_addr here is the offset in the object


@dataclass(frozen=True)
class SigAction:
    """One rt_sigaction() entry (``tc.sigactions``): handler, flags, restorer, mask."""

    signo: int
    handler: int
    flags: int
    restorer: int
    mask: int


@dataclass(frozen=True)
class ItimerValue:
    """setitimer() argument: interval and remaining value, each in seconds + microseconds."""

    interval_sec: int
    interval_usec: int
    value_sec: int
    value_usec: int


@dataclass(frozen=True)
class Rseq:
    """A thread's rseq registration: re-registered by the blob for the same area."""

    abi_pointer: int
    abi_size: int
    signature: int


@dataclass(frozen=True)
class Creds:
    """One thread's credentials (``thread_core.creds``), set by the thread itself in the blob.

    Capability sets are 64-bit masks (bit n: capability n; the image keeps two u32 words).
    """

    uid: int
    euid: int
    suid: int
    fsuid: int
    gid: int
    egid: int
    sgid: int
    fsgid: int
    groups: tuple[int, ...]  # supplementary groups, in the dumped order
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    secbits: int  # securebits (linux/securebits.h), locks included
    no_new_privs: bool


@dataclass(frozen=True)
class SeccompFilter:
    """One seccomp BPF program (``seccomp.img``): ``insns`` is a struct sock_filter array."""

    index: int  # its position in seccomp.img (for messages)
    insns: bytes
    flags: int  # SECCOMP_FILTER_FLAG_* to install it with

    @property
    def nr_insns(self) -> int:
        return len(self.insns) // 8


@dataclass(frozen=True)
class PosixTimer:
    """One POSIX timer (``tc.timers.posix``): recreated with its id, then armed."""

    timer_id: int
    clock_id: int
    signo: int
    notify: int  # sigev_notify: SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4 (| SIGNAL)
    sival: int  # sigev_value.sival_ptr
    notify_tid: int  # the thread SIGEV_THREAD_ID signals; 0 otherwise
    interval_sec: int
    interval_nsec: int
    value_sec: int  # time left at dump; never 0/0 (CRIU's rule: then the interval)
    value_nsec: int
    overrun: int  # timer_getoverrun() at dump: no call sets it, so not restored


@dataclass(frozen=True)
class SchedParams:
    """A thread's scheduling (``thread_core.sched_*``): set from the orchestrator (restore/sched.py)."""

    policy: int  # SCHED_OTHER 0, FIFO 1, RR 2, BATCH 3, IDLE 5
    nice: int  # -20..19
    prio: int  # sched_priority: 1..99 for FIFO/RR, else 0


@dataclass(frozen=True)
class Thread:
    """One thread (``core-TID.img``): registers, FPU state and per-thread kernel state."""

    tid: int
    gpregs: dict[str, int]  # user_regs_struct field name -> value (CRIU's names: ax, ip, ...)
    fpregs: dict[str, object]  # the fxsave fields, st_space, xmm_space
    xsave: dict[str, object] | None  # xstate_bv, ymmh_space, pkru ... (None: fxsave only)
    blk_sigset: int
    sas: tuple[int, int, int] | None  # sigaltstack: ss_sp, ss_size, ss_flags
    clear_tid_addr: int
    futex_rla: int
    futex_rla_len: int
    rseq: Rseq | None
    comm: str
    pending_signals: tuple[bytes, ...] = ()  # 128-byte siginfo_t, private to this thread
    # None only for hand-made test tasks (the blob then keeps the restorer's creds);
    # build_plan always sets it from the images.
    creds: Creds | None = None
    seccomp_mode: int = 0  # SECCOMP_MODE_*: disabled 0, strict 1, filter 2
    seccomp_filters: tuple[SeccompFilter, ...] = ()  # mode 2: install order, the chain's root first
    pdeath_sig: int = 0  # PR_SET_PDEATHSIG; 0: none
    sched: SchedParams | None = None  # None: the image has none (CRIU then uses SCHED_OTHER, nice 0)


@dataclass(frozen=True)
class MmFields:
    """The mm_struct fields restored with PR_SET_MM_MAP (``mm-PID.img``)."""

    start_code: int
    end_code: int
    start_data: int
    end_data: int
    start_stack: int
    start_brk: int
    brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    auxv: tuple[int, ...]  # saved auxv, key/value pairs
    exe: MappedFile  # the /proc/PID/exe link, set with PR_SET_MM_MAP
    dumpable: int | None = None
    thp_disabled: bool = False


@dataclass(frozen=True)
class Task:
    """One process of the tree: identity, memory, files and signal state.

    A zombie (``state`` DEAD) is only an identity (pid, ppid, pgid, sid, comm) and an
    ``exit_status``: it has no threads, VMAs, files or mm (None), and its other fields are
    empty. Its parent forks it, and it exits at once (restore/zombie.py).
    """

    pid: int
    ppid: int
    pgid: int
    sid: int
    comm: str
    threads: tuple[Thread, ...]  # the main thread (tid == pid) first
    vmas: tuple[Vma, ...]  # sorted by address, vsyscall left out
    pages_path: str  # pages-N.img for this task's page runs
    mm: MmFields | None  # None for a zombie
    # One spec per fd, sorted by fd: OpenFile, PipeEnd, ... and the classes of the kind
    # modules under files/ (files/registry.py); each has .fd and .cloexec.
    files: tuple
    cwd: str
    root: str
    umask: int
    rlimits: tuple[tuple[int, int], ...]  # (cur, max) by RLIMIT_* number
    sigactions: tuple[SigAction, ...]
    itimers: tuple[ItimerValue, ItimerValue, ItimerValue]  # real, virtual, prof
    shared_pending_signals: tuple[bytes, ...] = ()
    personality: int = 0
    posix_timers: tuple[PosixTimer, ...] = ()  # sorted by timer id
    child_subreaper: bool = False
    loginuid: int | None = None  # /proc/PID/loginuid; None: never set (the image's (uid_t)-1)
    oom_score_adj: int | None = None  # /proc/PID/oom_score_adj; None: not in the image
    state: TaskState = TaskState.ALIVE
    # DEAD: the wait status the parent will read (wait(2): exit code << 8, or the signal
    # that killed it), as the kernel keeps it in task_struct.exit_code.
    exit_status: int = 0
    # STOPPED: the signal the orchestrator sends it just before detach, to stop it again.
    stop_signo: int = 0
    # files/owner.py FdOwner: F_SETSIG / F_SETOWN_EX of the fds that have them, set once
    # every fd is installed.
    fd_owners: tuple = ()

    @property
    def main_thread(self) -> Thread:
        return self.threads[0]

    @property
    def is_zombie(self) -> bool:
        return self.state is TaskState.DEAD


@dataclass(frozen=True)
class TimeOffsets:
    """Clocks at dump time (``timens-0.img``): the new time namespace starts from these."""

    monotonic_sec: int
    monotonic_nsec: int
    boottime_sec: int
    boottime_nsec: int


@dataclass(frozen=True)
class DumpCpu:
    """What the images say of the CPU they were dumped on (restore/cpucap.py compares it).

    From cpuinfo.img when CRIU wrote one; otherwise ``xfeatures`` is inferred from the
    xsave arrays of the cores (CRIU writes one per component the dump CPU had) and the rest
    is unknown.
    """

    xfeatures: int | None  # XSAVE components the dump kernel enabled
    capability: tuple[int, ...] = ()  # the kernel's x86_capability words (cpuinfo.img only)
    model: str | None = None


@dataclass(frozen=True)
class RestorePlan:
    """The whole restore, root task first."""

    images_dir: str
    tasks: tuple[Task, ...]  # parents before their children
    timens: TimeOffsets | None = None
    # Kernel objects used by more than one task, or by one task through several fds: the
    # root task creates each once, before it forks, so every task inherits the same object.
    # files/registry.py SharedObject: (kind, key, nr_fds, spec), made by each kind's module.
    shared: tuple = ()
    notes: tuple[str, ...] = field(default=())  # things accepted but not restored, for the log
    dump_cpu: DumpCpu | None = None
    # The --inherit-fd resources some fd of the tree takes from the caller, sorted; the
    # orchestrator hands their fds to the root task (files/inherited.py).
    inherited: tuple[str, ...] = ()

    @property
    def root(self) -> Task:
        return self.tasks[0]

    def shared_of(self, kind: str) -> tuple:
        """The specs of the shared objects of one kind ("PIPE"), in plan order."""
        return tuple(obj.spec for obj in self.shared if obj.kind == kind)

    @property
    def shared_files(self) -> tuple[OpenFile, ...]:  # one per FileEntry id held by several fds
        return self.shared_of("REG")

    @property
    def pipes(self) -> tuple[PipeBuffer, ...]:  # one per pipe_id, with its unread bytes
        return self.shared_of("PIPE")

    @property
    def unix_sockets(self) -> tuple:  # files/unix_socket.py UnixSockets: every unix socket of the tree
        return self.shared_of("UNIXSK")

    @property
    def shared_memory(self) -> tuple[SharedMemory, ...]:
        return self.shared_of("MEMFD")

    @property
    def anon_shared_memory(self) -> tuple[AnonSharedMemory, ...]:
        return self.shared_of("SHMEM")

    @property
    def live_tasks(self) -> tuple[Task, ...]:
        """The tasks that get memory, registers and files: all but the zombies."""
        return tuple(t for t in self.tasks if not t.is_zombie)

    def tasks_threads(self) -> tuple[Thread, ...]:
        """Every thread of every task, in plan order."""
        return tuple(thread for task in self.tasks for thread in task.threads)

    def children(self, task: Task) -> tuple[Task, ...]:
        """The tasks whose parent is ``task``, in pstree order."""
        return tuple(t for t in self.tasks if t.ppid == task.pid and t is not task)
