"""Cross-checks of a checkpoint's images, run first by ``build_plan``, before any side effect.

``ImageSet`` reads a missing image as an empty one, as CRIU's restore does (criu/image.c:
open_image gives an "empty image" for ENOENT). That is right for images CRIU writes only
when it has something to say, and wrong for the others: a deleted fd table restored a task
without its fds, which died at once, with exit 0. This module decides, for every image a
task's pstree, ids, mm, fdinfo and files entries name, whether it must exist; checks that
every page run of every pagemap is well formed and accounts for its pages image exactly;
and bounds every count the kernel bounds. Each check is one row of :data:`CHECKS`, with
the error it raises; ``tests/test_plan_validate.py`` walks the table and makes every row
fail on a mutated real image.

Which images CRIU always writes (CRIU 4.2, criu/cr-dump.c cr_dump_tasks):

    core-TID.img        every thread; a zombie has core-PID.img only (dump_one_zombie)
    ids, fs, mm, pagemap-PID.img + pages-N.img     every live task (dump_one_task)
    seccomp.img         always (seccomp_collect_dump_filters, unconditional)
    timens-0.img        always, unless the tree had a time namespace of its own
                        (dump_time_ns(0) when root_ns_mask lacks CLONE_NEWTIME)
    fdinfo-N.img        only if the fd table holds an fd (images are created lazily,
                        on the first record: criu/image.c open_image_at, LAZY_IMG_FD)
    pipes-data.img      one PipeDataEntry per pipe with a read end, even an empty one
                        (criu/pipes.c dump_one_pipe_data), so lazily: only if a pipe exists

Images from a CRIU older than 4.1 may lack the always-written ones (seccomp.img and
timens-0.img are older, but nothing in such an inventory says so); CRIU 4.1 added
``plugins_entry`` to the inventory (commit 5335b35f7) and writes it always, so its
presence is what says "seccomp.img and timens-0.img exist".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from pycriu_restore.images import ImageSet
from pycriu_restore.images.flags import MMAP_STATUS
from pycriu_restore.images.schemas import fdinfo_pb2
from pycriu_restore.images.kinds import kind_by_name
from pycriu_restore.images.pagemap import PAGE_SIZE, PE_PRESENT, PagemapImage, entry_nr_pages
from pycriu_restore.plan.errors import InconsistentImages

# arch/x86/include/asm/page_64_types.h: TASK_SIZE_MAX with 4-level paging (47 bits).
TASK_SIZE = (1 << 47) - PAGE_SIZE
# <linux/threads.h>: PID_MAX_LIMIT on 64-bit, the most kernel.pid_max can be; no pid or
# tid can reach it.
PID_MAX_LIMIT = 4 * 1024 * 1024
# fs/file.c: sysctl_nr_open_max = min(INT_MAX, ~0UL / sizeof(void *)) & -BITS_PER_LONG, the
# most fs.nr_open can be: no fd number can reach it.
NR_OPEN_MAX = (2**31 - 1) & -64
# fs/pipe.c round_pipe_size: F_SETPIPE_SZ refuses a size above 1 << 31.
PIPE_SIZE_MAX = 1 << 31
# The VMA status bits of a VMA that maps a file (its shmid is a files.img id), from the
# images layer's table (criu/include/image.h).
_STATUS = dict(MMAP_STATUS)
VMA_AREA_GUARD = 1 << 16  # criu/include/image.h; crit's table has no name for it
# criu/include/image.h: a device mapping a plugin restores (CRIU's UPDATE_VMA_MAP; the amdgpu
# plugin's render-node and /dev/kfd VMAs). MMAP_STATUS does not list it either.
VMA_EXT_PLUGIN = 1 << 27
# criu/include/image.h defines these, VMA_AREA_GUARD and VMA_EXT_PLUGIN.
_KNOWN_STATUS_BITS = sum(bit for _, bit in MMAP_STATUS) | VMA_AREA_GUARD | VMA_EXT_PLUGIN
# arch/x86/include/asm/vsyscall.h VSYSCALL_ADDR: the one [vsyscall] page.
VSYSCALL_PAGE = (0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000)
VMA_FILE_BITS = _STATUS["VMA_FILE_PRIVATE"] | _STATUS["VMA_FILE_SHARED"] | _STATUS["VMA_AREA_MEMFD"]
SECCOMP_MODE_DISABLED, SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 0, 1, 2  # <linux/seccomp.h>
TASK_DEAD = 2  # compel/include/uapi/task-state.h COMPEL_TASK_DEAD: a zombie
PIPE_READ_ACCESS = {os.O_RDONLY, os.O_RDWR}  # access modes of an end CRIU reads data from

PAGEMAP = kind_by_name("PAGEMAP")
# The fd_types (fdinfo.proto) of sockets.
_SOCKET_TYPES = {fdinfo_pb2.INETSK, fdinfo_pb2.UNIXSK, fdinfo_pb2.PACKETSK, fdinfo_pb2.NETLINKSK}
_PAGES_NAME = re.compile(r"pages-(\d+)\.img$")
_FDINFO_NAME = re.compile(r"fdinfo-(\d+)\.img$")


@dataclass
class Scope:
    """What the checks share: the images and the tasks of pstree.img, live or zombie."""

    images: ImageSet
    pids: list[int]  # pstree.img order
    threads: dict[int, list[int]]  # pid -> tids (live tasks only)
    zombies: set[int]

    @property
    def live(self) -> list[int]:
        return [p for p in self.pids if p not in self.zombies]

    def missing(self, name: str, cause: str) -> InconsistentImages:
        return InconsistentImages(name, f"missing: {cause}")


@dataclass(frozen=True)
class Check:
    """One cross-check: its name, the error it raises (for the docs and the tests), its code."""

    name: str
    error: str
    run: Callable[[Scope], None]
    # The rows that only ask which images exist run before the refusals (plan/refusals.py),
    # which read them; the others after, so that a feature pycrestore refuses (pages in a
    # parent image, a shared fd table) is reported as such (exit 3), not as the
    # inconsistency it looks like to a check that assumes it away.
    early: bool = False


def check_images(images: ImageSet, early: bool | None = None) -> None:
    """Run the rows of :data:`CHECKS` in order (only the early or the late ones, if
    ``early`` says which); the first that fails raises."""
    scope = _scope(images)
    for check in CHECKS:
        if early is None or check.early == early:
            check.run(scope)


def _scope(images: ImageSet) -> Scope:
    entries = list(images.pstree())
    if not entries:
        raise InconsistentImages("pstree.img", "no tasks")
    pids = [e.pid for e in entries]
    for e in entries:
        for what, value in (("pid", e.pid), ("pgid", e.pgid), ("sid", e.sid)):
            if not 0 < value < PID_MAX_LIMIT:
                raise InconsistentImages("pstree.img", f"task {e.pid}: {what} {value} is not a pid "
                                         f"(1..{PID_MAX_LIMIT - 1}, <linux/threads.h>)")
    if len(set(pids)) != len(pids):
        dup = next(p for p in pids if pids.count(p) > 1)
        raise InconsistentImages("pstree.img", f"pid {dup} is listed {pids.count(dup)} times")
    zombies = set()
    for pid in pids:
        name = f"core-{pid}.img"
        if not images.exists(name):
            raise InconsistentImages(name, f"missing: pstree.img lists task {pid}, and CRIU writes a core image "
                                     "for every task, even a zombie")
        core = images.core(pid)
        if core.HasField("tc") and core.tc.task_state == TASK_DEAD:
            zombies.add(pid)
    # A zombie's thread list is leftover memory (plan/build.py _build_zombie): not read.
    threads = {e.pid: list(e.threads) for e in entries if e.pid not in zombies}
    return Scope(images=images, pids=pids, threads=threads, zombies=zombies)


# --- the checks ------------------------------------------------------------------------


def _check_tids(scope: Scope) -> None:
    """Every tid is a tid, and no pid or tid is taken twice in the tree."""
    owner: dict[int, int] = {p: p for p in scope.pids}
    for pid, tids in scope.threads.items():
        if len(tids) >= PID_MAX_LIMIT:
            raise InconsistentImages("pstree.img", f"task {pid}: {len(tids)} threads, more than PID_MAX_LIMIT")
        for tid in tids:
            if not 0 < tid < PID_MAX_LIMIT:
                raise InconsistentImages("pstree.img", f"task {pid}: thread {tid} is not a tid (1..{PID_MAX_LIMIT - 1})")
            if tid != pid and owner.setdefault(tid, pid) != pid:
                raise InconsistentImages("pstree.img", f"task {pid}: thread {tid} is also task/thread of {owner[tid]}")
        if len(set(tids)) != len(tids):
            raise InconsistentImages("pstree.img", f"task {pid}: a thread is listed twice in {tids}")


def _check_task_images(scope: Scope) -> None:
    """Every image CRIU writes for a live task: core per thread, ids, fs, mm, pagemap."""
    images = scope.images
    for pid in scope.live:
        for tid in scope.threads[pid]:
            if not images.exists(f"core-{tid}.img"):
                raise scope.missing(f"core-{tid}.img", f"pstree.img lists thread {tid} of task {pid}")
        for name in (f"ids-{pid}.img", f"fs-{pid}.img", f"mm-{pid}.img", f"pagemap-{pid}.img"):
            if not images.exists(name):
                raise scope.missing(name, f"CRIU writes it for every live task, and task {pid} is one "
                                    "(pstree.img, its core's task_state)")


def _check_files_image(scope: Scope) -> None:
    """files.img exists (every live task's exe (mm) and cwd and root (fs) are entries of it),
    and no two of its entries have one id (a lookup by id would silently take one of them)."""
    if scope.live and not scope.images.exists("files.img"):
        pid = scope.live[0]
        raise scope.missing("files.img", f"mm-{pid}.img names exe file id {scope.images.mm(pid).exe_file_id} "
                            f"and fs-{pid}.img cwd file id {scope.images.fs(pid).cwd_id} in it")
    seen: set[int] = set()
    for index, entry in enumerate(scope.images.files()):
        if entry.id in seen:
            raise InconsistentImages("files.img", f"entry {index}: file id {entry.id} is used by an earlier entry too")
        seen.add(entry.id)


def _check_fd_tables(scope: Scope) -> None:
    """Every fd table a task's ids name is there unless the task truly had no fd; no fd table
    is there that no task names; fd numbers are fds, each once per table."""
    images = scope.images
    named = {images.ids(pid).files_id: pid for pid in scope.live}
    for path in sorted(images.directory.glob("fdinfo-*.img")):
        m = _FDINFO_NAME.match(path.name)
        if m and int(m.group(1)) not in named:
            raise InconsistentImages(path.name, f"no task's ids image names fd table {m.group(1)} "
                                     f"(named: {sorted(named)})")
    # CRIU writes no fdinfo image for a task without fds, so absence alone proves nothing;
    # but CRIU writes a files.img entry only for something that holds it (an fd, a mapping,
    # the exe, cwd or root, a tty's or fifo's path, a file in flight), so an entry nothing
    # holds was held by an fd record that is gone, or by a lost table. Sockets are left
    # out: a unix socket's peer may be an entry of its own that no fd holds.
    refs = _referenced_file_ids(scope)
    orphans = sorted(f.id for f in images.files() if f.id not in refs and f.type not in _SOCKET_TYPES)
    lost = [(fid, pid) for fid, pid in named.items() if not images.exists(f"fdinfo-{fid}.img")]
    if orphans and lost:
        fid, pid = lost[0]
        raise scope.missing(f"fdinfo-{fid}.img", f"ids-{pid}.img names fd table {fid}, and files.img "
                            f"entries {orphans[:8]} belong to no fd, mapping, exe, cwd or root")
    if orphans:
        raise InconsistentImages("files.img", f"entries {orphans[:8]} belong to no fd, mapping, exe, cwd or root "
                                 "(CRIU writes an entry only for what holds it): an fd record is missing")
    for fid in named:
        seen: set[int] = set()
        for fdi in images.fdinfo(fid):
            if not 0 <= fdi.fd < NR_OPEN_MAX:
                raise InconsistentImages(f"fdinfo-{fid}.img", f"fd {fdi.fd} is not an fd number (0..{NR_OPEN_MAX - 1}, fs/file.c)")
            if fdi.fd in seen:
                raise InconsistentImages(f"fdinfo-{fid}.img", f"fd {fdi.fd} is listed twice")
            seen.add(fdi.fd)


def _referenced_file_ids(scope: Scope) -> set[int]:
    """The files.img ids the images refer to: fds, mapped files, exe, cwd, root."""
    images = scope.images
    ids: set[int] = set()
    for pid in scope.live:
        files_id = images.ids(pid).files_id
        ids.update(fdi.id for fdi in images.fdinfo(files_id))
        mm = images.mm(pid)
        ids.add(mm.exe_file_id)
        ids.update(v.shmid for v in mm.vmas if v.status & VMA_FILE_BITS)
        fs = images.fs(pid)
        ids.update((fs.cwd_id, fs.root_id))
    for entry in images.files():  # a tty's or a fifo's path is a regular-file entry of its own
        for kind in ("tty", "fifo"):
            if entry.HasField(kind) and getattr(entry, kind).HasField("regf_id"):
                ids.add(getattr(entry, kind).regf_id)
    for packet, _ in images.sk_queues():  # files in flight (SCM_RIGHTS)
        for scm in packet.scm:
            ids.update(scm.rights)
    return ids


def _check_pipe_data(scope: Scope) -> None:
    """pipes-data.img holds one entry per pipe with a read end (CRIU writes one for each,
    empty or not), each naming a pipe of the tree, with no more bytes than its buffer."""
    images = scope.images
    files = {f.id: f for f in images.files()}
    readable: dict[int, str] = {}  # pipe_id -> who holds a read end
    pipes: set[int] = set()
    for pid in scope.live:
        files_id = images.ids(pid).files_id
        for fdi in images.fdinfo(files_id):
            entry = files.get(fdi.id)
            if entry is None or not entry.HasField("pipe"):
                continue
            pipes.add(entry.pipe.pipe_id)
            if entry.pipe.flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR) in PIPE_READ_ACCESS:
                readable.setdefault(entry.pipe.pipe_id, f"fd {fdi.fd} of task {pid}")
    data = images.pipes_data()
    if readable and not images.exists("pipes-data.img"):
        pipe_id, who = next(iter(readable.items()))
        raise scope.missing("pipes-data.img", f"pipe {pipe_id:#x} has a read end ({who}), and CRIU writes an "
                            "entry for every such pipe (its buffer size and unread bytes)")
    seen: set[int] = set()
    for index, (entry, payload) in enumerate(data):
        where = f"entry {index} (pipe {entry.pipe_id:#x})"
        if entry.pipe_id not in pipes:
            raise InconsistentImages("pipes-data.img", f"{where}: no fd of the tree is an end of this pipe")
        if entry.pipe_id in seen:
            raise InconsistentImages("pipes-data.img", f"{where}: a second entry for this pipe")
        seen.add(entry.pipe_id)
        if entry.HasField("size") and not 0 < entry.size <= PIPE_SIZE_MAX:
            raise InconsistentImages("pipes-data.img", f"{where}: buffer size {entry.size}, expected 1..{PIPE_SIZE_MAX} "
                                     "(fs/pipe.c round_pipe_size)")
        if entry.HasField("size") and len(payload) > entry.size:
            raise InconsistentImages("pipes-data.img", f"{where}: {len(payload)} unread bytes in a {entry.size}-byte buffer")
    lacking = sorted(set(readable) - seen)
    if lacking:
        raise InconsistentImages("pipes-data.img", f"no entry for pipe {lacking[0]:#x}, which has a read end "
                                 f"({readable[lacking[0]]}); CRIU writes one for every such pipe")


def _check_always_written(scope: Scope) -> None:
    """seccomp.img and timens-0.img, which a CRIU that writes ``plugins_entry`` always writes."""
    images = scope.images
    if not images.inventory.HasField("plugins_entry"):
        return  # a CRIU before 4.1: nothing says which images it wrote
    if not images.exists("seccomp.img"):
        for tid in (t for pid in scope.live for t in scope.threads[pid]):
            thc = images.core(tid).thread_core
            if thc.HasField("seccomp_mode") and thc.seccomp_mode == SECCOMP_MODE_FILTER:
                raise InconsistentImages("seccomp.img", f"missing, but core-{tid}.img has thread_core.seccomp_mode filter")
        raise scope.missing("seccomp.img", "CRIU >= 4.1 (inventory.img has plugins_entry) writes it for every dump, "
                            "with or without filters (criu/seccomp.c); without it the filters are unknown")
    own_timens = any(p.name != "timens-0.img" for p in images.directory.glob("timens-*.img"))
    if not own_timens and not images.exists("timens-0.img"):
        raise scope.missing("timens-0.img", "CRIU >= 4.1 (inventory.img has plugins_entry) writes the dump's clocks "
                            "for every tree without a time namespace of its own (criu/cr-dump.c dump_time_ns(0)); "
                            "without it the monotonic and boot-time clocks would jump")


def _check_vmas(scope: Scope) -> None:
    """Every VMA's status is made of known bits, and one marked [vsyscall] (which the plan
    skips: the kernel provides it) is the vsyscall page itself, so no other VMA can be
    dropped by a stray bit."""
    for pid in scope.live:
        name = f"mm-{pid}.img"
        for index, vma in enumerate(scope.images.mm(pid).vmas):
            if vma.status & ~_KNOWN_STATUS_BITS:
                raise InconsistentImages(name, f"VMA {index} at {vma.start:#x}: status {vma.status:#x} has bits "
                                         f"{vma.status & ~_KNOWN_STATUS_BITS:#x} that CRIU does not define")
            if vma.status & _STATUS["VMA_AREA_VSYSCALL"] and (vma.start, vma.end) != VSYSCALL_PAGE:
                raise InconsistentImages(name, f"VMA {index} at {vma.start:#x}-{vma.end:#x}: marked [vsyscall], which "
                                         f"is {VSYSCALL_PAGE[0]:#x}-{VSYSCALL_PAGE[1]:#x}")


def _check_pagemaps(scope: Scope) -> None:
    """Every pagemap (each task's, each shared memory object's): a head naming its own pages
    image, entries that are non-empty, page-aligned, sorted and non-overlapping, a task's
    inside its VMAs, and present pages that account for the pages image to the byte."""
    images = scope.images
    names = [f"pagemap-{pid}.img" for pid in scope.live]
    names += sorted(p.name for p in images.directory.glob("pagemap-shmem-*.img"))
    # Shared anonymous memory keeps its pages in pagemap-shmem-<shmid>.img, which CRIU writes
    # for every shmid a VMA maps (criu/shmem.c): say which one is gone, before its pages
    # image below looks orphaned.
    for pid in scope.live:
        for vma in images.mm(pid).vmas:
            shmem = f"pagemap-shmem-{vma.shmid}.img"
            if vma.status & _STATUS["VMA_ANON_SHARED"] and not vma.status & _STATUS["VMA_AREA_MEMFD"] \
                    and not images.exists(shmem):
                raise scope.missing(shmem, f"mm-{pid}.img maps shared memory {vma.shmid} at "
                                    f"{vma.start:#x}, whose pages it holds")
    vmas = {f"pagemap-{pid}.img": sorted((v.start, v.end) for v in images.mm(pid).vmas) for pid in scope.live}
    owner: dict[int, str] = {}
    for name in names:
        pagemap = PagemapImage(images.path(name), PAGEMAP)
        if pagemap.pages_id is None:
            raise InconsistentImages(name, "missing or without a head record: its pages image is unknown")
        pages = f"pages-{pagemap.pages_id}.img"
        if pagemap.pages_id in owner:
            raise InconsistentImages(name, f"names {pages}, which {owner[pagemap.pages_id]} names too")
        owner[pagemap.pages_id] = name
        if not images.exists(pages):
            raise scope.missing(pages, f"{name} keeps its pages there")
        size = os.path.getsize(images.path(pages))
        present = _check_entries(name, pagemap, vmas.get(name), pages, size)
        if present * PAGE_SIZE != size:
            raise InconsistentImages(name, f"its present entries hold {present} pages ({present * PAGE_SIZE} bytes), "
                                     f"{pages} has {size} bytes: {size - present * PAGE_SIZE} bytes belong to no entry")
    for path in sorted(images.directory.glob("pages-*.img")):
        m = _PAGES_NAME.match(path.name)
        if m and int(m.group(1)) not in owner:
            raise InconsistentImages(path.name, f"no pagemap names pages image {m.group(1)}")


def _check_entries(name: str, pagemap: PagemapImage, vmas: list[tuple[int, int]] | None,
                   pages: str, pages_bytes: int) -> int:
    """The entries of one pagemap (see _check_pagemaps); returns the number of present pages.
    ``pages_bytes`` is the size of its pages image ``pages``, which the present pages may not pass."""
    prev_end, present, vi = 0, 0, 0
    for index, entry in enumerate(pagemap.iter_entries()):
        nr_pages = entry_nr_pages(entry)
        where = f"entry {index} at {entry.vaddr:#x}"
        if nr_pages == 0:
            raise InconsistentImages(name, f"{where}: 0 pages (CRIU never writes an empty run)")
        if entry.vaddr % PAGE_SIZE:
            raise InconsistentImages(name, f"{where}: not page-aligned ({PAGE_SIZE}-byte pages)")
        if nr_pages > TASK_SIZE // PAGE_SIZE or entry.vaddr + nr_pages * PAGE_SIZE > TASK_SIZE:
            raise InconsistentImages(name, f"{where}: {nr_pages} pages end above TASK_SIZE {TASK_SIZE:#x}")
        if entry.vaddr < prev_end:
            raise InconsistentImages(name, f"{where}: overlaps or comes before the previous entry (which ends at "
                                     f"{prev_end:#x}); entries are sorted and disjoint")
        end = entry.vaddr + nr_pages * PAGE_SIZE
        if vmas is not None:
            # Both sorted: one forward scan. An entry may span adjacent VMAs, never a gap.
            addr = entry.vaddr
            while addr < end:
                while vi < len(vmas) and vmas[vi][1] <= addr:
                    vi += 1
                if vi == len(vmas) or vmas[vi][0] > addr:
                    raise InconsistentImages(name, f"{where}: page {addr:#x} is outside every VMA of its mm image")
                addr = min(end, vmas[vi][1])
        if entry.flags & PE_PRESENT:
            if (present + nr_pages) * PAGE_SIZE > pages_bytes:
                left = max(0, pages_bytes // PAGE_SIZE - present)
                raise InconsistentImages(name, f"entry {index} covers {nr_pages} pages, {pages} has {left} left")
            present += nr_pages
        prev_end = end
    return present


CHECKS: tuple[Check, ...] = (
    Check("pstree-tids", "pstree.img: task P: thread T is not a tid / is also task/thread of Q / is listed twice",
          _check_tids, early=True),
    Check("task-images", "core-T.img / ids-P.img / fs-P.img / mm-P.img / pagemap-P.img: missing", _check_task_images,
          early=True),
    Check("files-image", "files.img: missing: mm-P.img names exe file id N ... / entry I: file id N is used by an earlier entry too", _check_files_image, early=True),
    Check("fd-tables", "fdinfo-N.img: missing / no task's ids image names fd table N / fd F is listed twice",
          _check_fd_tables),
    Check("pipe-data", "pipes-data.img: missing / no entry for pipe X / no fd of the tree is an end of this pipe",
          _check_pipe_data),
    Check("always-written", "seccomp.img / timens-0.img: missing: CRIU >= 4.1 writes it for every dump",
          _check_always_written),
    Check("vmas", "mm-P.img: VMA I: status has bits CRIU does not define / marked [vsyscall] elsewhere", _check_vmas),
    Check("pagemaps", "pagemap-P.img: entry I: 0 pages / not page-aligned / overlaps / outside every VMA / "
          "present pages != pages-N.img size; pages-N.img: missing / named by no pagemap", _check_pagemaps),
)
