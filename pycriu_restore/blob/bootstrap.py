"""A task's bootstrap region: the blob, its arguments, the vdso park, signal frames, stacks.

The orchestrator maps one anonymous RWX region in the stopped task, writes
:attr:`Bootstrap.image` there and enters the blob (restorer_blob/abi.h, "Entry", "status
protocol" and "Threads"). Everything the blob needs lives in this region; every pointer in
the arguments is an absolute address inside it. For a task of n threads (thread 0 is the
leader, ``Task.threads`` order)::

    base  (page-aligned; free in the task's current layout AND in the checkpointed one)
    +--------------------------------------+ base
    | blob image (restorer.elf, relocated) |  entry = restore_task, syscall_gadget
    +--------------------------------------+ base + blob.size_bytes     = args_addr
    | struct blob_args                     |  leader's status record at args_addr + 16
    | arrays, each 8-byte aligned: vmas,   |    = status_addr = thread_status_addrs[0]
    |   page reads, iovecs, vdso areas,    |
    |   fds to close, auxv, sigactions,    |
    |   rlimits, siginfos, then per thread |
    |   its siginfos, groups, creds,       |
    |   seccomp programs and filters,      |
    |   threads: struct blob_thread[n]     |  threads[i].status (its first 32 bytes), i >= 1
    |   posix timers                       |    = thread_status_addrs[i]
    +--------------------------------------+ page-aligned               = park
    | vdso park area                       |  the span [vvar] .. [vdso] of the running
    |   ([vvar][vvar_vclock][vdso])        |  kernel; zeros until the blob mremaps the areas
    |                                      |  here (and holes after it moves them on)
    +--------------------------------------+ page-aligned               = sigframes[0]
    | rt_sigframe + XSAVE area, thread 0   |  each sigframe_bytes(xstate_size) long, a
    | rt_sigframe + XSAVE area, thread 1   |  multiple of 64: every frame stays 64-byte
    | ...                                  |  aligned (sigframe.py)     = sigframes[i]
    | rt_sigframe + XSAVE area, thread n-1 |
    +--------------------------------------+ page-aligned
    | stack of fill worker 0               |  BLOB_FILL_STACK_BYTES each, for the
    | ...                                  |  fill_threads - 1 workers of step FILL_PAGES
    | stack of fill worker f-2             |  (none for a one-thread fill)
    +--------------------------------------+
    | stack of thread n-1                  |  BLOB_THREAD_STACK_BYTES each, grow down;
    | ...                                  |  clone3 gets [top - BLOB_THREAD_STACK_BYTES, top)
    | stack of thread 1                    |
    +--------------------------------------+ base + size - BLOB_STACK_BYTES
    | stack of thread 0 (the leader),      |  grows down
    |   BLOB_STACK_BYTES                   |
    +--------------------------------------+ base + size                = stack_top

Page fill: the pages image is read by ``fill_threads`` threads of the task at once, the leader
and workers the blob makes and joins inside step FILL_PAGES (restorer.c). How many
(:func:`fill_thread_count`) is decided here from the bytes to read and the CPUs the
orchestrator may use; :func:`fill_batches` cuts the preadv batches into pieces so that each
thread has some, and the orchestrator gives each worker a tid (``RuntimeLayout.fill_tids``).

The region stays mapped until the orchestrator removes it with munmap through
``syscall_gadget``, after every thread has passed rt_sigreturn (the frames are read then).

Everything here is pure: :func:`build_bootstrap` reads the plan and the running task's
:class:`RuntimeLayout` and returns bytes. Every check runs here, before the orchestrator
writes anything: a vdso that does not fit (VdsoMismatch), FPU state this CPU cannot hold
(FpuStateMismatch), malformed thread state (BadThreadState).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pycriu_restore import faults
from pycriu_restore.blob import abi
from pycriu_restore.blob.cpuid import XsaveComponent, xsave_components
from pycriu_restore.blob.errors import BadThreadState, VdsoMismatch
from pycriu_restore.blob.loader import Blob, load_blob
from pycriu_restore.blob.status import STEP_NAMES
from pycriu_restore.blob.sigframe import Sigframe, build_sigframe, sigframe_bytes
from pycriu_restore.linux.procmaps import MapEntry
from pycriu_restore.linux.ptrace import RseqConfig
from pycriu_restore.blob.kernel_frame import KernelFrame
from pycriu_restore.plan.build import TASK_SIZE
from pycriu_restore.plan.model import PosixTimer, Task, Thread, Vma, VmaKind
from pycriu_restore.files.fdlayout import ServiceFds

PAGE_SIZE = abi.BLOB_PAGE_SIZE
# TASK_SIZE (plan/build.py, 4-level paging): the blob unmaps [0, TASK_SIZE) around its
# region; [vsyscall] lies above.
# <asm-generic/mman-common.h>: the "place it exactly here" flags. The blob adds
# MAP_FIXED_NOREPLACE itself; a dumped flag word never carries either.
MAP_FIXED = 0x10
MAP_FIXED_NOREPLACE = 0x100000

# The areas the kernel maps into every process, as /proc/PID/maps names them (6.18: three,
# research/feasibility-spike.md §3), in the order they appear.
VVAR, VVAR_VCLOCK, VDSO = "[vvar]", "[vvar_vclock]", "[vdso]"
KERNEL_AREAS = (VVAR, VVAR_VCLOCK, VDSO)
# <asm-generic/mman-common.h>: the advice that chooses the page size of anonymous memory as
# it is first touched. blob_vma.fill_madv gives them before the fill, not after.
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
PAGE_SIZE_ADVICE = (1 << MADV_HUGEPAGE) | (1 << MADV_NOHUGEPAGE)
# x86-64 PMD size (hpage_pmd_size): pieces of a batch end on such a boundary, so that two
# fill threads do not fault the same huge page.
HUGE_PAGE_BYTES = 2 << 20
# Fill threads: at most this many per task (the leader included; abi.BLOB_MAX_FILL_THREADS
# is the blob's hard limit), and one more only for each FILL_BYTES_PER_THREAD of pages:
# making and joining a thread costs ~0.1 ms, reading 8 MiB ~3-5 ms on one thread here.
FILL_MAX_THREADS = 8
FILL_BYTES_PER_THREAD = 8 << 20
# Pieces per fill thread: a few, so that a thread that is slowed (a cold page, another
# task's threads on its CPU) does not hold the step up while the others are idle.
FILL_PIECES_PER_THREAD = 4
# PR_SET_DUMPABLE accepts 0 and 1 only (SUID_DUMP_DISABLE/USER; linux/sched/coredump.h).
SETTABLE_DUMPABLE = (0, 1)

_ARRAY_ALIGN = 8
# What PYCRESTORE_FAULT=blob.<name> may name (faults.py): every step, and the fill workers'
# own fault (each fails its first batch: a failure in a thread other than the leader).
BLOB_FAULTS = {**STEP_NAMES, abi.BLOB_FAULT_FILL_WORKER: "fill_worker"}
# struct blob_mm.exe_fd meaning "leave the exe link as it is" (abi.h: (uint32_t)-1).
KEEP_EXE = 0xFFFFFFFF


@dataclass(frozen=True)
class RuntimeLayout:
    """What the stopped task looks like now, as far as the bootstrap region cares.

    The orchestrator fills it from the task (:meth:`from_task`): the kernel's own areas
    from /proc/PID/maps (``(start, end)``, None if absent), glibc's rseq registration from
    PTRACE_GET_RSEQ_CONFIGURATION (None if nothing is registered; take its length from
    there: glibc 2.36's ``__rseq_size`` says 20 where 32 bytes are registered), and the
    signal frame's XSAVE size and features from a frame this kernel made for a fresh task
    (kernel_frame.py; the restored task is one). ``xsave_layout`` is this CPU's component
    offsets; None (the default) asks CPUID (cpuid.xsave_components), tests pin another
    machine's.
    """

    vvar: tuple[int, int] | None
    vvar_vclock: tuple[int, int] | None
    vdso: tuple[int, int] | None
    rseq: RseqConfig | None
    xstate_size: int             # sw_bytes.xstate_size: fpstate->user_size
    xfeatures: int               # sw_bytes.xfeatures: fpstate->user_xfeatures
    xsave_layout: tuple[XsaveComponent, ...] | None = None
    # The running task's exe is already the image's exe file (the orchestrator runs the same
    # binary as the restored program, e.g. Debian's python3): PR_SET_MM_MAP must then leave
    # the exe link alone, since the kernel refuses to replace an exe file that is still
    # mapped (replace_mm_exe_file: EBUSY), and the blob just closes the exe service fd.
    keep_exe: bool = False
    # Tids for the blob's fill workers (step FILL_PAGES), one per worker: the fill uses
    # 1 + len(fill_tids) threads. The orchestrator picks them (restore/fill_tids.py): free,
    # and none that any task of the checkpoint needs; 0 lets the kernel choose. Empty: the
    # leader fills alone.
    fill_tids: tuple[int, ...] = ()

    @property
    def fill_threads(self) -> int:
        return 1 + len(self.fill_tids)

    @classmethod
    def from_task(cls, maps: Iterable[MapEntry], rseq: RseqConfig | None,
                  frame: KernelFrame) -> RuntimeLayout:
        """Build from the task's maps, its rseq configuration and the kernel's frame layout."""
        found = {m.path: (m.start, m.end) for m in maps if m.path in KERNEL_AREAS}
        if rseq is not None and not rseq.abi_pointer:
            rseq = None
        return cls(vvar=found.get(VVAR), vvar_vclock=found.get(VVAR_VCLOCK), vdso=found.get(VDSO),
                   rseq=rseq, xstate_size=frame.xstate_size, xfeatures=frame.xfeatures)

    def kernel_areas(self) -> list[tuple[str, int, int]]:
        """The kernel's areas that exist, as (name, start, end), lowest first."""
        named = ((VVAR, self.vvar), (VVAR_VCLOCK, self.vvar_vclock), (VDSO, self.vdso))
        return sorted(((name, r[0], r[1]) for name, r in named if r is not None),
                      key=lambda area: area[1])

    @property
    def park_bytes(self) -> int:
        """Room the park area needs: the whole span of the kernel's areas, gaps included."""
        areas = self.kernel_areas()
        return areas[-1][2] - areas[0][1] if areas else 0


@dataclass(frozen=True)
class Bootstrap:
    """One task's bootstrap region, ready to write at ``base`` (see the module docstring).

    The tuples are index-aligned with ``Task.threads`` (entry 0: the leader).
    """

    base: int
    size: int                    # bytes, page multiple: the mmap length
    image: bytes                 # ``size`` bytes: the whole region's content
    entry: int                   # RIP: restore_task
    stack_top: int               # RSP at entry
    args_addr: int               # RDI at entry
    status_addr: int             # the leader's record (abi.STATUS_OFFSET into the args)
    syscall_gadget: int          # a `syscall` instruction, for the final munmap
    sigframes: tuple[int, ...]   # each thread's rt_sigframe; rt_sigreturn RSP = frame + 8
    # Each thread's status record (status.STATUS_BYTES, decode_status): entry 0 is
    # status_addr, entry i the status field of struct blob_thread i.
    thread_status_addrs: tuple[int, ...]
    notes: tuple[str, ...] = ()  # what was accepted but not restored exactly (for the log)
    fill_threads: int = 1        # threads that read the pages (step FILL_PAGES), the leader included

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(frozen=True)
class PageBatch:
    """One preadv: ``iovs`` (address, bytes) filled from consecutive file bytes at ``file_off``."""

    file_off: int
    iovs: tuple[tuple[int, int], ...]

    @property
    def size_bytes(self) -> int:
        return sum(length for _addr, length in self.iovs)


def page_batches(vmas: Sequence[Vma]) -> list[PageBatch]:
    """Merge the page runs of ``vmas`` into preadv batches, in pages-file order.

    Runs contiguous in the file share a batch (up to BLOB_MAX_IOVS iovecs); runs contiguous
    in memory too share an iovec. VDSO and VVAR runs are left out: the running kernel's
    areas replace them, so the file bytes are skipped.
    """
    runs = sorted((run for vma in vmas if vma.kind not in (VmaKind.VDSO, VmaKind.VVAR)
                   for run in vma.page_runs), key=lambda run: run.file_offset)
    batches: list[tuple[int, list[list[int]]]] = []
    file_end = -1
    for run in runs:
        length = run.nr_pages * PAGE_SIZE
        if batches and run.file_offset == file_end:
            iovs = batches[-1][1]
            if iovs[-1][0] + iovs[-1][1] == run.start_addr:
                iovs[-1][1] += length
            elif len(iovs) < abi.BLOB_MAX_IOVS:
                iovs.append([run.start_addr, length])
            else:
                batches.append((run.file_offset, [[run.start_addr, length]]))
        else:
            batches.append((run.file_offset, [[run.start_addr, length]]))
        file_end = run.file_offset + length
    return [PageBatch(off, tuple((a, n) for a, n in iovs)) for off, iovs in batches]


def fill_bytes(vmas: Sequence[Vma]) -> int:
    """Bytes the blob reads from the pages image for ``vmas`` (vdso/vvar runs are skipped)."""
    return sum(run.nr_pages * PAGE_SIZE for vma in vmas
               if vma.kind not in (VmaKind.VDSO, VmaKind.VVAR) for run in vma.page_runs)


def fill_thread_count(vmas: Sequence[Vma], cpus: int) -> int:
    """How many threads should fill ``vmas``: 1 .. min(cpus, FILL_MAX_THREADS), one per
    FILL_BYTES_PER_THREAD of pages (a small task fills alone: a thread costs more than
    it saves)."""
    by_size = fill_bytes(vmas) // FILL_BYTES_PER_THREAD
    return max(1, min(cpus, FILL_MAX_THREADS, abi.BLOB_MAX_FILL_THREADS, by_size))


def fill_batches(batches: Sequence[PageBatch], threads: int) -> list[PageBatch]:
    """``batches`` cut into pieces for ``threads`` fill threads; unchanged for one thread.

    A piece is about total / (threads * FILL_PIECES_PER_THREAD) bytes (at least one huge
    page) and ends on a HUGE_PAGE_BYTES boundary of memory where an iovec crosses one;
    each piece is one preadv, so the count of system calls stays a few per thread. The
    pieces keep file order, and together cover every byte of ``batches`` once.
    """
    if threads <= 1:
        return list(batches)
    total = sum(b.size_bytes for b in batches)
    target = max(HUGE_PAGE_BYTES, total // (threads * FILL_PIECES_PER_THREAD))
    pieces: list[PageBatch] = []
    for batch in batches:
        off = batch.file_off
        iovs: list[tuple[int, int]] = []
        size = 0
        for addr, length in batch.iovs:
            while length:
                take = length
                if size + length > target:
                    # End the piece at the first huge-page boundary at or after the target.
                    cut = addr + (target - size)
                    cut = -(-cut // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
                    take = min(length, cut - addr)
                iovs.append((addr, take))
                size += take
                addr += take
                length -= take
                if size >= target:
                    pieces.append(PageBatch(off, tuple(iovs)))
                    off += size
                    iovs, size = [], 0
        if iovs:
            pieces.append(PageBatch(off, tuple(iovs)))
    return pieces


@functools.cache
def default_blob() -> Blob:
    """The packaged restorer.elf, loaded once, with every symbol the region needs."""
    return load_blob(required_symbols=(abi.BLOB_ENTRY_RESTORE_TASK, abi.BLOB_SYSCALL_GADGET))


def bootstrap_size(task: Task, runtime: RuntimeLayout, *, blob: Blob | None = None) -> int:
    """Bytes of ``task``'s bootstrap region (a page multiple): what the orchestrator maps.

    The same for every base address; ``blob`` defaults to the packaged one.
    """
    blob = blob or default_blob()
    return _Layout.of(_Contents.of(task, ServiceFds.for_task(task), runtime), runtime,
                      blob).size


def build_bootstrap(task: Task, base: int, runtime: RuntimeLayout, service: ServiceFds, *,
                    blob: Blob | None = None, extra_flags: int = 0,
                    set_mm: bool = True) -> Bootstrap:
    """Lay out ``task``'s bootstrap region at ``base`` and return its bytes and addresses.

    ``base`` must be page-aligned with :func:`bootstrap_size` bytes free there in both the
    current and the checkpointed layout (the orchestrator picks it); ``service`` names the
    fds the task holds open for the blob. ``extra_flags`` (abi.BLOB_F_NO_TRAP, BLOB_F_EXIT)
    and ``set_mm=False`` exist for running the blob without a tracer in tests.
    Raises VdsoMismatch, FpuStateMismatch or BadThreadState (nothing has been written
    anywhere then); AssertionError if ``base`` breaks its precondition or the plan has no
    thread (plan/ guarantees a main thread).
    """
    blob = blob or default_blob()
    if not task.threads:
        raise AssertionError(f"build_bootstrap: task {task.pid} has no thread")
    contents = _Contents.of(task, service, runtime)
    layout = _Layout.of(contents, runtime, blob)
    _check_region(task, runtime, base, layout.size)

    components = _components(runtime)
    frames = [build_sigframe(thread, base + layout.sigframe_off + i * layout.sigframe_stride,
                             xstate_size=runtime.xstate_size, xfeatures=runtime.xfeatures,
                             components=components)
              for i, thread in enumerate(task.threads)]
    args_addr = base + layout.args_off
    writer = _ArgsWriter(args_addr)
    args = abi.BlobArgs.new()
    args.flags = extra_flags | (abi.BLOB_F_SET_MM if set_mm else 0)
    args.fault_step = faults.blob_step(BLOB_FAULTS)  # 0 unless a test armed blob.<step>
    args.bootstrap_start, args.bootstrap_len = base, layout.size
    args.task_size = TASK_SIZE
    args.stack_top = base + layout.size
    if runtime.rseq is not None:
        args.self_rseq = abi.BlobRseq(runtime.rseq.abi_pointer, runtime.rseq.abi_size,
                                      runtime.rseq.signature)

    args.vmas, args.nr_vmas = writer.array(abi.BlobVma, contents.vmas)
    args.pages_fd = service.pages
    args.page_reads, args.nr_page_reads = writer.array(abi.BlobPageRead, contents.reads)
    args.iovs, args.nr_iovs = writer.array(abi.BlobIovec, contents.iovs)
    # One thread per piece at most: a worker with nothing to take would only cost its clone.
    workers = runtime.fill_tids[:max(0, min(len(runtime.fill_tids), len(contents.reads) - 1))]
    args.fill_threads = 1 + len(workers)
    args.fill_workers, _count = writer.array(abi.BlobFillWorker, [
        abi.BlobFillWorker(tid=tid, stack_top=base + layout.fill_stack_top_off(i))
        for i, tid in enumerate(workers)])
    vdso_areas = _vdso_areas(task, runtime, base + layout.park_off)
    args.vdso_areas, args.nr_vdso_areas = writer.array(abi.BlobVdsoArea, vdso_areas)
    args.close_fds, args.nr_close_fds = writer.array(ctypes.c_int32, contents.close_fds)

    auxv_addr, nr_auxv = writer.array(ctypes.c_uint64, contents.auxv)
    _fill_mm(args.mm, task, auxv_addr, nr_auxv, KEEP_EXE if runtime.keep_exe else service.exe)
    notes = list(_prctl_fields(args, task))

    args.sigactions, args.nr_sigactions = writer.array(abi.BlobSigaction, contents.sigactions)
    args.rlimits, args.nr_rlimits = writer.array(abi.BlobRlimit, contents.rlimits)
    args.siginfos, args.nr_siginfos = writer.array(abi.BlobSiginfo, contents.shared_siginfos)
    blob_threads = [_blob_thread(thread, writer, stack_top=base + layout.stack_top_off(i),
                                 frame=frame)
                    for i, (thread, frame) in enumerate(zip(task.threads, frames))]
    for bt in blob_threads:  # each thread sets it again after its own creds (abi.h)
        bt.dumpable = args.dumpable
    args.threads, args.nr_threads = writer.array(abi.BlobThread, blob_threads)
    args.posix_timers, args.nr_posix_timers = writer.array(
        abi.BlobPosixTimer, [_blob_posix_timer(t) for t in task.posix_timers])
    notes += _overrun_notes(task)
    args.personality = task.personality
    args.child_subreaper = int(task.child_subreaper)
    for slot, timer in zip(args.itimers, task.itimers):
        slot.interval_sec, slot.interval_usec = timer.interval_sec, timer.interval_usec
        slot.value_sec, slot.value_usec = timer.value_sec, timer.value_usec

    args_bytes = writer.finish(args)
    if len(args_bytes) > layout.args_bytes:
        raise AssertionError(f"build_bootstrap: args need {len(args_bytes)} bytes, "
                             f"the layout gave {layout.args_bytes}")
    image = bytearray(layout.size)
    image[:blob.size_bytes] = blob.image_at(base)
    image[layout.args_off:layout.args_off + len(args_bytes)] = args_bytes
    for frame in frames:
        offset = frame.addr - base
        image[offset:offset + len(frame.data)] = frame.data
    status_addr = args_addr + abi.STATUS_OFFSET
    # threads[i].status of struct blob_thread i, for every thread but the leader.
    thread_records = tuple(args.threads + i * ctypes.sizeof(abi.BlobThread) + abi.BlobThread.status.offset
                           for i in range(1, len(blob_threads)))
    return Bootstrap(
        base=base, size=layout.size, image=bytes(image),
        entry=base + blob.entry_offset(abi.BLOB_ENTRY_RESTORE_TASK),
        stack_top=base + layout.stack_top_off(0), args_addr=args_addr, status_addr=status_addr,
        syscall_gadget=base + blob.entry_offset(abi.BLOB_SYSCALL_GADGET),
        sigframes=tuple(frame.addr for frame in frames),
        thread_status_addrs=(status_addr, *thread_records), notes=tuple(notes),
        fill_threads=args.fill_threads)


def _components(runtime: RuntimeLayout) -> dict[int, XsaveComponent]:
    """The XSAVE layout to build frames with: the runtime's if pinned, else this CPU's."""
    if runtime.xsave_layout is None:
        return xsave_components()
    return {comp.number: comp for comp in runtime.xsave_layout}


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@dataclass(frozen=True)
class _Contents:
    """The arrays that do not depend on where the region is (so they size the args area)."""

    vmas: list[abi.BlobVma]
    reads: list[abi.BlobPageRead]
    iovs: list[abi.BlobIovec]
    close_fds: list[int]
    auxv: list[int]
    sigactions: list[abi.BlobSigaction]
    rlimits: list[abi.BlobRlimit]
    shared_siginfos: list[abi.BlobSiginfo]
    nr_threads: int
    thread_siginfos: int           # count, for sizing
    thread_extra_bytes: int        # creds, groups, seccomp filters of every thread, rounded
    nr_posix_timers: int

    @classmethod
    def of(cls, task: Task, service: ServiceFds, runtime: RuntimeLayout) -> _Contents:
        keep_exe = runtime.keep_exe
        reads, iovs = [], []
        for batch in fill_batches(page_batches(task.vmas), runtime.fill_threads):
            reads.append(abi.BlobPageRead(file_off=batch.file_off, first_iov=len(iovs),
                                          nr_iovs=len(batch.iovs)))
            iovs.extend(abi.BlobIovec(base=addr, len=length) for addr, length in batch.iovs)
        return cls(
            vmas=[_blob_vma(index, vma, service, task.mm.thp_disabled)
                  for index, vma in enumerate(task.vmas)
                  if vma.kind not in (VmaKind.VDSO, VmaKind.VVAR)],
            reads=reads, iovs=iovs,
            # The pages image, then each mapped file once; the exe fd stays for PR_SET_MM_MAP
            # (which closes it), unless the exe link is kept.
            close_fds=[service.pages, *sorted(set(service.mapped.values())), *sorted(service.plugin.values()),
                       *([service.exe] if keep_exe else [])],
            auxv=list(task.mm.auxv),
            sigactions=[abi.BlobSigaction(signo=sa.signo, handler=sa.handler, flags=sa.flags,
                                          restorer=sa.restorer, mask=sa.mask)
                        for sa in task.sigactions],
            rlimits=[abi.BlobRlimit(resource=number, cur=cur, max=max_)
                     for number, (cur, max_) in enumerate(task.rlimits)],
            shared_siginfos=[_siginfo(f"task {task.pid}", raw) for raw in task.shared_pending_signals],
            nr_threads=len(task.threads),
            thread_siginfos=sum(len(t.pending_signals) for t in task.threads),
            thread_extra_bytes=sum(_thread_extra_bytes(t) for t in task.threads),
            nr_posix_timers=len(task.posix_timers),
        )


@dataclass(frozen=True)
class _Layout:
    """Offsets of the region's parts from its base (the module docstring's diagram)."""

    args_off: int
    args_bytes: int
    park_off: int
    sigframe_off: int              # thread 0's frame; thread i's is sigframe_stride further
    sigframe_stride: int           # sigframe_bytes(xstate_size): a multiple of 64
    fill_stack_off: int            # the fill workers' stacks, worker 0's lowest
    stack_off: int                 # the lowest thread stack
    size: int

    def fill_stack_top_off(self, worker: int) -> int:
        """Offset of the top of fill worker ``worker``'s stack (BLOB_FILL_STACK_BYTES each)."""
        return self.fill_stack_off + (worker + 1) * abi.BLOB_FILL_STACK_BYTES

    def stack_top_off(self, index: int) -> int:
        """Offset of the top of thread ``index``'s stack: the leader's at the region's end,
        thread i >= 1's BLOB_STACK_BYTES + (i - 1) * BLOB_THREAD_STACK_BYTES below it."""
        if index == 0:
            return self.size
        return self.size - abi.BLOB_STACK_BYTES - (index - 1) * abi.BLOB_THREAD_STACK_BYTES

    @classmethod
    def of(cls, contents: _Contents, runtime: RuntimeLayout, blob: Blob) -> _Layout:
        counts = [
            (ctypes.sizeof(abi.BlobVma), len(contents.vmas)),
            (ctypes.sizeof(abi.BlobPageRead), len(contents.reads)),
            (ctypes.sizeof(abi.BlobIovec), len(contents.iovs)),
            (ctypes.sizeof(abi.BlobVdsoArea), len(runtime.kernel_areas())),
            (ctypes.sizeof(ctypes.c_int32), len(contents.close_fds)),
            (ctypes.sizeof(ctypes.c_uint64), len(contents.auxv)),
            (ctypes.sizeof(abi.BlobSigaction), len(contents.sigactions)),
            (ctypes.sizeof(abi.BlobRlimit), len(contents.rlimits)),
            (ctypes.sizeof(abi.BlobSiginfo), len(contents.shared_siginfos)),
            (ctypes.sizeof(abi.BlobThread), contents.nr_threads),
            (ctypes.sizeof(abi.BlobSiginfo), contents.thread_siginfos),
            (1, contents.thread_extra_bytes),
            (ctypes.sizeof(abi.BlobPosixTimer), contents.nr_posix_timers),
            (ctypes.sizeof(abi.BlobFillWorker), runtime.fill_threads - 1),
        ]
        args_bytes = ctypes.sizeof(abi.BlobArgs) + sum(
            _round_up(size * count, _ARRAY_ALIGN) for size, count in counts)
        args_off = blob.size_bytes
        park_off = args_off + _round_up(args_bytes, PAGE_SIZE)
        sigframe_off = park_off + _round_up(runtime.park_bytes, PAGE_SIZE)
        stride = sigframe_bytes(runtime.xstate_size)
        fill_stack_off = sigframe_off + _round_up(stride * contents.nr_threads, PAGE_SIZE)
        stack_off = fill_stack_off + (runtime.fill_threads - 1) * abi.BLOB_FILL_STACK_BYTES
        size = (stack_off + max(contents.nr_threads - 1, 0) * abi.BLOB_THREAD_STACK_BYTES
                + abi.BLOB_STACK_BYTES)
        return cls(args_off=args_off, args_bytes=_round_up(args_bytes, PAGE_SIZE),
                   park_off=park_off, sigframe_off=sigframe_off, sigframe_stride=stride,
                   fill_stack_off=fill_stack_off, stack_off=stack_off, size=size)


class _ArgsWriter:
    """Lays out the arrays after struct blob_args, each 8-byte aligned; returns addresses."""

    def __init__(self, args_addr: int) -> None:
        self._addr = args_addr
        self._buf = bytearray(ctypes.sizeof(abi.BlobArgs))

    def array(self, ctype: type, items: Sequence) -> tuple[int, int]:
        """Append ``items`` as a C array of ``ctype``; return (address, count), (0, 0) if empty."""
        if not items:
            return 0, 0
        data = bytes((ctype * len(items))(*items))
        offset = _round_up(len(self._buf), _ARRAY_ALIGN)
        self._buf += bytes(offset - len(self._buf)) + data
        return self._addr + offset, len(items)

    def finish(self, args: abi.BlobArgs) -> bytes:
        """The whole args area: the struct itself, then the arrays."""
        self._buf[:ctypes.sizeof(args)] = bytes(args)
        return bytes(self._buf)


def _check_region(task: Task, runtime: RuntimeLayout, base: int, size: int) -> None:
    """The region must be page-aligned, below TASK_SIZE, and clear of every VMA of the plan
    and every kernel area of the running task (the orchestrator chose it so)."""
    end = base + size
    if base % PAGE_SIZE or base <= 0 or end > TASK_SIZE:
        raise AssertionError(f"build_bootstrap: region {base:#x}-{end:#x} is not a page-aligned "
                             f"range below TASK_SIZE {TASK_SIZE:#x}")
    for index, vma in enumerate(task.vmas):
        if vma.start < end and base < vma.end:
            raise AssertionError(f"build_bootstrap: region {base:#x}-{end:#x} overlaps VMA {index} "
                                 f"({vma.start:#x}-{vma.end:#x}) of task {task.pid}")
    for name, start, stop in runtime.kernel_areas():
        if start < end and base < stop:
            raise AssertionError(f"build_bootstrap: region {base:#x}-{end:#x} overlaps the "
                                 f"running {name} ({start:#x}-{stop:#x})")


def _blob_vma(index: int, vma: Vma, service: ServiceFds, thp_disabled: bool) -> abi.BlobVma:
    """One VMA descriptor: its fd (the service fd of its file), writable while filled.

    The checkpointed MADV_HUGEPAGE / MADV_NOHUGEPAGE go in fill_madv, given before the
    fill: the kernel picks a page's size when it is first touched, so advice given after
    would leave an "nh" VMA filled with huge pages (THP "always") or an "hg" one with
    4 KiB pages (THP "madvise"). Not when the task had THP disabled (PR_SET_THP_DISABLE,
    set only after the fill by step SET_MM): it had no huge page, so the advice waits.
    There is no advice that gives back a VMA with neither flag, so a VMA the image has
    without "hg" is never filled with MADV_HUGEPAGE: it fills with huge pages only where
    the system's THP mode is "always", as the original would have.
    """
    flags = vma.flags & ~(MAP_FIXED | MAP_FIXED_NOREPLACE)
    if vma.file is None:
        fd = -1
        flags |= mmap.MAP_ANONYMOUS
    else:
        found = service.fd_of(vma)  # a device mapping (plugin) has one of its own
        if found is None:
            raise AssertionError(f"build_bootstrap: VMA {index} maps {(vma.file.path, vma.file.open_flags)}, which "
                                 f"has no service fd (ServiceFds.mapped has {sorted(service.mapped)}, "
                                 f"plugin {sorted(service.plugin)})")
        fd = found
    map_prot = vma.prot | mmap.PROT_WRITE if vma.page_runs else vma.prot
    fill_madv = 0 if thp_disabled else vma.madv & PAGE_SIZE_ADVICE
    return abi.BlobVma(start=vma.start, end=vma.end, pgoff=vma.pgoff, madv=vma.madv & ~fill_madv,
                       fill_madv=fill_madv, prot=vma.prot, map_prot=map_prot, flags=flags, fd=fd,
                       plan_index=index)


def _vdso_areas(task: Task, runtime: RuntimeLayout, park_addr: int) -> list[abi.BlobVdsoArea]:
    """Where each running kernel area is parked, and where it goes (the image's VMAs).

    CRIU 4.2 records [vvar] and [vvar_vclock] as ONE VVAR VMA (6 pages on 6.18 = 4 + 2): the
    two running areas go to its start and start + len([vvar]). The vdso code reaches vvar
    at a fixed distance, so that distance must be the same in the image as here.
    """
    areas = runtime.kernel_areas()
    where = f"task {task.pid}"
    image = {kind: [(i, v) for i, v in enumerate(task.vmas) if v.kind is kind]
             for kind in (VmaKind.VDSO, VmaKind.VVAR)}
    for kind, found in image.items():
        if len(found) > 1:
            raise VdsoMismatch(f"{where}: the image has {len(found)} {kind.value} VMAs (at "
                               f"{', '.join(hex(v.start) for _i, v in found)}), expected one",
                               pid=task.pid)
    vdso_vma = image[VmaKind.VDSO][0][1] if image[VmaKind.VDSO] else None
    vvar_vma = image[VmaKind.VVAR][0][1] if image[VmaKind.VVAR] else None
    targets: dict[str, int] = {}
    if vdso_vma is not None:
        if runtime.vdso is None:
            raise VdsoMismatch(f"{where}: the image has a [vdso] at {vdso_vma.start:#x}, this "
                               "kernel gave the task none", pid=task.pid)
        _same_size(where, "[vdso]", vdso_vma, runtime.vdso[1] - runtime.vdso[0], task.pid)
        targets[VDSO] = vdso_vma.start
    if vvar_vma is not None:
        if runtime.vvar is None:
            raise VdsoMismatch(f"{where}: the image has a [vvar] at {vvar_vma.start:#x}, this "
                               "kernel gave the task none", pid=task.pid)
        vvar_len = runtime.vvar[1] - runtime.vvar[0]
        total = vvar_len
        if runtime.vvar_vclock is not None:
            if runtime.vvar_vclock[0] != runtime.vvar[1]:
                raise VdsoMismatch(f"{where}: this kernel's [vvar_vclock] at "
                                   f"{runtime.vvar_vclock[0]:#x} does not follow [vvar] (ends "
                                   f"{runtime.vvar[1]:#x}); the image records them as one VMA",
                                   pid=task.pid)
            total += runtime.vvar_vclock[1] - runtime.vvar_vclock[0]
            targets[VVAR_VCLOCK] = vvar_vma.start + vvar_len
        _same_size(where, "[vvar]" + ("+[vvar_vclock]" if runtime.vvar_vclock else ""), vvar_vma,
                   total, task.pid)
        targets[VVAR] = vvar_vma.start
    if vdso_vma is not None and vvar_vma is not None and runtime.vvar is not None:
        image_gap = vdso_vma.start - vvar_vma.start
        runtime_gap = runtime.vdso[0] - runtime.vvar[0]
        if image_gap != runtime_gap:
            raise VdsoMismatch(f"{where}: the image's [vdso] is {image_gap:#x} bytes from its "
                               f"[vvar], this kernel's {runtime_gap:#x}", pid=task.pid)
    if not areas:
        return []
    span_start = areas[0][1]
    return [abi.BlobVdsoArea(runtime_start=start, park_start=park_addr + start - span_start,
                             target_start=targets.get(name, 0), len=end - start)
            for name, start, end in areas]


def _same_size(where: str, name: str, vma: Vma, runtime_len: int, pid: int) -> None:
    if vma.size != runtime_len:
        raise VdsoMismatch(f"{where}: image {name} at {vma.start:#x} is {vma.size} bytes, this "
                           f"kernel's is {runtime_len}", pid=pid)


def _fill_mm(mm: abi.BlobMm, task: Task, auxv_addr: int, nr_auxv: int, exe_fd: int) -> None:
    """struct prctl_mm_map from the plan's MmFields, the auxv array and the exe service fd."""
    fields = task.mm
    for name in ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                 "start_stack", "arg_start", "arg_end", "env_start", "env_end"):
        setattr(mm, name, getattr(fields, name))
    mm.auxv = auxv_addr
    mm.auxv_size = nr_auxv * ctypes.sizeof(ctypes.c_uint64)
    mm.exe_fd = exe_fd


def _prctl_fields(args: abi.BlobArgs, task: Task) -> Iterable[str]:
    """Set dumpable and thp_disabled; yield a note for what cannot be set."""
    args.thp_disabled = int(task.mm.thp_disabled)
    dumpable = task.mm.dumpable
    if dumpable in SETTABLE_DUMPABLE:
        args.dumpable = dumpable
    elif dumpable is not None:
        yield (f"task {task.pid}: dumpable {dumpable} cannot be set with PR_SET_DUMPABLE "
               "(0 or 1 only): left as the kernel has it")


def _siginfo(where: str, raw: bytes) -> abi.BlobSiginfo:
    if len(raw) != abi.BLOB_SIGINFO_BYTES:
        raise BadThreadState(f"{where}: a pending siginfo is {len(raw)} bytes, expected "
                             f"{abi.BLOB_SIGINFO_BYTES}")
    return abi.BlobSiginfo.from_buffer_copy(raw)


def _thread_extra_bytes(thread: Thread) -> int:
    """Bytes _blob_thread's creds and seccomp arrays take in the args area (each array
    rounded to _ARRAY_ALIGN, as _ArgsWriter.array lays them out)."""
    total = 0
    if thread.creds is not None:
        total += _round_up(ctypes.sizeof(abi.BlobCreds), _ARRAY_ALIGN)
        total += _round_up(4 * len(thread.creds.groups), _ARRAY_ALIGN)
    if thread.seccomp_filters:
        total += ctypes.sizeof(abi.BlobSeccompFilter) * len(thread.seccomp_filters)
        total += sum(_round_up(len(f.insns), _ARRAY_ALIGN) for f in thread.seccomp_filters)
    return total


def _cap_words(mask: int) -> list[int]:
    """A capability mask as abi.BLOB_CAP_WORDS u32 words, low first (capset's layout)."""
    return [(mask >> (32 * i)) & 0xFFFF_FFFF for i in range(abi.BLOB_CAP_WORDS)]


def _blob_creds(thread: Thread, writer: _ArgsWriter) -> int:
    """Write ``thread``'s struct blob_creds and its groups; return its address (0: none)."""
    creds = thread.creds
    if creds is None:
        return 0
    bc = abi.BlobCreds(uid=creds.uid, euid=creds.euid, suid=creds.suid, fsuid=creds.fsuid,
                       gid=creds.gid, egid=creds.egid, sgid=creds.sgid, fsgid=creds.fsgid,
                       secbits=creds.secbits, no_new_privs=int(creds.no_new_privs))
    for name in ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"):
        getattr(bc, name)[:] = _cap_words(getattr(creds, name))
    bc.groups, bc.nr_groups = writer.array(ctypes.c_uint32, creds.groups)
    addr, _count = writer.array(abi.BlobCreds, [bc])
    return addr


def _blob_seccomp(thread: Thread, writer: _ArgsWriter) -> tuple[int, int]:
    """Write ``thread``'s filter programs and their descriptors (install order)."""
    descriptors = []
    for f in thread.seccomp_filters:
        insns, _count = writer.array(ctypes.c_uint8, f.insns)
        descriptors.append(abi.BlobSeccompFilter(insns=insns, nr_insns=f.nr_insns, flags=f.flags))
    return writer.array(abi.BlobSeccompFilter, descriptors)


def _blob_posix_timer(timer: PosixTimer) -> abi.BlobPosixTimer:
    return abi.BlobPosixTimer(timer_id=timer.timer_id, clock_id=timer.clock_id, sigev_notify=timer.notify,
                              sigev_signo=timer.signo, sival=timer.sival, notify_tid=timer.notify_tid,
                              interval_sec=timer.interval_sec, interval_nsec=timer.interval_nsec,
                              value_sec=timer.value_sec, value_nsec=timer.value_nsec)


def _overrun_notes(task: Task) -> list[str]:
    """POSIX timers whose overrun count was not 0: no system call sets it (CRIU 4.2 keeps
    it in the image and does not restore it either); it restarts from 0 at the next expiry."""
    return [f"POSIX timer {t.timer_id}: overrun {t.overrun} at dump is not restored (no call sets it)"
            for t in task.posix_timers if t.overrun]


def _blob_thread(thread: Thread, writer: _ArgsWriter, *, stack_top: int,
                 frame: Sigframe) -> abi.BlobThread:
    """struct blob_thread for ``thread``; its pending signals go into their own array."""
    bt = abi.BlobThread(tid=thread.tid, stack_top=stack_top, sigframe=frame.addr,
                        fs_base=int(thread.gpregs.get("fs_base", 0)),
                        gs_base=int(thread.gpregs.get("gs_base", 0)),
                        clear_child_tid=thread.clear_tid_addr, robust_list=thread.futex_rla,
                        robust_list_len=thread.futex_rla_len)
    if thread.rseq is not None:
        bt.rseq = abi.BlobRseq(thread.rseq.abi_pointer, thread.rseq.abi_size, thread.rseq.signature)
    comm = thread.comm.encode("utf-8", "replace")[:15]
    bt.comm[:len(comm)] = comm
    bt.siginfos, bt.nr_siginfos = writer.array(
        abi.BlobSiginfo, [_siginfo(f"thread {thread.tid}", raw) for raw in thread.pending_signals])
    bt.creds = _blob_creds(thread, writer)
    bt.seccomp_mode = thread.seccomp_mode
    bt.seccomp_filters, bt.nr_seccomp_filters = _blob_seccomp(thread, writer)
    bt.pdeath_sig = thread.pdeath_sig
    return bt
