"""The VMAs of mm-PID.img: /proc/PID/smaps turned into VmaEntry records (images/vma.proto).

As CRIU's parse_smaps and handle_vma (criu/proc_parse.c) do it:

    prot      from the rwx letters;  flags  MAP_SHARED or MAP_PRIVATE from the p/s letter,
              plus VmFlags: gd MAP_GROWSDOWN, lo MAP_LOCKED, nr MAP_NORESERVE,
              ht MAP_HUGETLB, dp MAP_DROPPABLE
    madv      VmFlags as madvise(2) advice bits: sr rr dc dd mg hg nh wf
    status    what the area is:
                [vsyscall]              VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE (not REGULAR)
                [vdso]                  REGULAR | VDSO | ANON_PRIVATE
                [vvar], [vvar_vclock]   REGULAR | VVAR | ANON_PRIVATE, merged into ONE
                                        VMA (6.18 splits the vvar in two; CRIU 4.2 keeps
                                        one and the restore remaps it whole)
                [heap]                  REGULAR | HEAP | ANON_PRIVATE
                a file                  REGULAR | FILE_PRIVATE or FILE_SHARED; shmid = the
                                        file's id in files.img, fdflags = O_RDONLY (O_RDWR
                                        for a writable shared map)
                anything else           REGULAR | ANON_PRIVATE ([stack] included)
              anonymous areas get MAP_ANONYMOUS in flags
    start     a MAP_GROWSDOWN area (the stack) starts one page lower than /proc shows,
              when that page is free: the kernel hides its guard page
              (criu/proc_parse.c vma_list_add, kdat.stack_guard_gap_hidden)

An area with VM_IO or VM_PFNMAP (io, pf) other than the vvar, shared anonymous memory and
[uprobes] raise CannotDump: CRIU needs extra machinery (or refuses) for them too.
"""

from __future__ import annotations

from pycriu_restore.dump.errors import CannotDump
from pycriu_restore.dump.files import FileTable
from pycriu_restore.dump.procfs import SmapsEntry
from pycriu_restore.images.flags import MMAP_FLAGS, MMAP_PROT, MMAP_STATUS, RFILE_FLAGS
from pycriu_restore.images.schemas import vma_pb2
from pycriu_restore.linux.memory import MAP_HUGETLB, MAP_LOCKED, MAP_NORESERVE  # bits crit has no name for

_PROT = dict(MMAP_PROT)
_FLAGS = dict(MMAP_FLAGS)
_STATUS = dict(MMAP_STATUS)
PROT_READ, PROT_WRITE, PROT_EXEC = _PROT["PROT_READ"], _PROT["PROT_WRITE"], _PROT["PROT_EXEC"]
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = _FLAGS["MAP_SHARED"], _FLAGS["MAP_PRIVATE"], _FLAGS["MAP_ANON"]
MAP_GROWSDOWN, MAP_DROPPABLE = _FLAGS["MAP_GROWSDOWN"], _FLAGS["MAP_DROPPABLE"]
VMA_AREA_REGULAR = _STATUS["VMA_AREA_REGULAR"]
VMA_AREA_VSYSCALL = _STATUS["VMA_AREA_VSYSCALL"]
VMA_AREA_VDSO = _STATUS["VMA_AREA_VDSO"]
VMA_AREA_VVAR = _STATUS["VMA_AREA_VVAR"]
VMA_AREA_HEAP = _STATUS["VMA_AREA_HEAP"]
VMA_FILE_PRIVATE = _STATUS["VMA_FILE_PRIVATE"]
VMA_FILE_SHARED = _STATUS["VMA_FILE_SHARED"]
VMA_ANON_PRIVATE = _STATUS["VMA_ANON_PRIVATE"]
O_RDONLY, O_RDWR = 0, dict(RFILE_FLAGS)["O_RDWR"]

# criu/include/vma.h VDSO_PROT, VVAR_PROT: what a vdso / vvar area must allow to be one.
VDSO_PROT = PROT_READ | PROT_EXEC
VVAR_PROT = PROT_READ

# VmFlags (fs/proc/task_mmu.c show_smap_vma_flags) -> mmap flag / madvise advice number
# (<asm-generic/mman-common.h>: MADV_SEQUENTIAL 2, RANDOM 1, DONTFORK 10, DONTDUMP 16,
# MERGEABLE 12, HUGEPAGE 14, NOHUGEPAGE 15, WIPEONFORK 18).
VMFLAG_MAP = {"gd": MAP_GROWSDOWN, "lo": MAP_LOCKED, "nr": MAP_NORESERVE, "ht": MAP_HUGETLB,
              "dp": MAP_DROPPABLE}
VMFLAG_MADV = {"sr": 2, "rr": 1, "dc": 10, "dd": 16, "mg": 12, "hg": 14, "nh": 15, "wf": 18}

VSYSCALL, VDSO, VVAR, VVAR_VCLOCK, HEAP, UPROBES = (
    "[vsyscall]", "[vdso]", "[vvar]", "[vvar_vclock]", "[heap]", "[uprobes]")


def _vma(pid: int, area: SmapsEntry, files: FileTable, page_bytes: int) -> vma_pb2.VmaEntry:
    """One VmaEntry from one smaps area (not yet merged or moved for a guard page)."""
    m = area.mapping
    where = f"area {m.start:#x}-{m.end:#x} {m.path or '(anonymous)'}"
    prot = ((PROT_READ if m.readable else 0) | (PROT_WRITE if m.writable else 0)
            | (PROT_EXEC if m.executable else 0))
    flags = MAP_SHARED if m.shared else MAP_PRIVATE
    madv = 0
    for code in area.vm_flags:
        flags |= VMFLAG_MAP.get(code, 0)
        if code in VMFLAG_MADV:
            madv |= 1 << VMFLAG_MADV[code]
    io_pf = "io" in area.vm_flags or "pf" in area.vm_flags
    entry = vma_pb2.VmaEntry(start=m.start, end=m.end, pgoff=m.offset, shmid=0, prot=prot,
                             flags=flags, status=0, fd=-1)
    if m.path == UPROBES:
        raise CannotDump(f"{where}: uprobes are not dumped", pid=pid)
    if m.path == VSYSCALL:
        entry.status = VMA_AREA_VSYSCALL
    elif m.path == VDSO:
        entry.status = VMA_AREA_REGULAR | (VMA_AREA_VDSO if prot & VDSO_PROT == VDSO_PROT else 0)
    elif m.path in (VVAR, VVAR_VCLOCK):
        entry.status = VMA_AREA_REGULAR | (VMA_AREA_VVAR if prot & VVAR_PROT == VVAR_PROT else 0)
    elif m.path == HEAP:
        entry.status = VMA_AREA_REGULAR | VMA_AREA_HEAP
    else:
        entry.status = VMA_AREA_REGULAR
    if m.inode and m.path.startswith("/"):
        if m.deleted:
            raise CannotDump(f"{where}: maps a deleted file", pid=pid)
        entry.shmid = files.special(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", pid)
        entry.status |= VMA_FILE_SHARED if m.shared else VMA_FILE_PRIVATE
        entry.fdflags = O_RDWR if m.shared and m.writable else O_RDONLY
    else:
        if m.shared:
            raise CannotDump(f"{where}: shared anonymous memory is not dumped", pid=pid)
        entry.status |= VMA_ANON_PRIVATE
        entry.flags |= MAP_ANONYMOUS
    if io_pf and not entry.status & (VMA_AREA_VVAR | VMA_FILE_SHARED):
        raise CannotDump(f"{where}: VM_IO/VM_PFNMAP memory (a device) is not dumped", pid=pid)
    if madv:
        entry.madv = madv
    assert m.start % page_bytes == 0 and m.end % page_bytes == 0, f"_vma: {where} not page aligned"
    return entry


def vma_entries(pid: int, areas: list[SmapsEntry], files: FileTable,
                page_bytes: int) -> list[vma_pb2.VmaEntry]:
    """The task's VmaEntry records in address order, as CRIU writes them (module docstring).

    File areas add their files to ``files`` (their FileEntry comes first in files.img).
    """
    out: list[vma_pb2.VmaEntry] = []
    prev_end = 0
    for area in areas:
        entry = _vma(pid, area, files, page_bytes)
        if out and entry.status & VMA_AREA_VVAR and out[-1].status & VMA_AREA_VVAR:
            if out[-1].end != entry.start:
                raise CannotDump(f"two vvar areas that do not touch: {out[-1].start:#x}-"
                                 f"{out[-1].end:#x} and {entry.start:#x}-{entry.end:#x}", pid=pid)
            out[-1].end = entry.end   # one VVAR VMA, as CRIU 4.2 records it
            continue
        if entry.flags & MAP_GROWSDOWN and prev_end < entry.start:
            entry.start -= page_bytes   # the guard page /proc hides
        prev_end = entry.end
        out.append(entry)
    return out


def is_private(entry: vma_pb2.VmaEntry) -> bool:
    """CRIU's vma_entry_is_private: a regular area whose pages belong to this task alone."""
    return bool(entry.status & VMA_AREA_REGULAR
                and entry.status & (VMA_ANON_PRIVATE | VMA_FILE_PRIVATE))
