"""pagemap-PID.img and pages-1.img: which pages of the task are saved, and their bytes.

Which pages (criu/mem.c generate_iovs, should_dump_page; criu/pagemap-cache.c):

    only private areas (dump/vmas.py is_private), never the vvar (the restore remaps the
    running kernel's) nor MAP_DROPPABLE memory;
    the vdso whole, present or not (a restore may need to compare it);
    elsewhere a page that is present or swapped (/proc/PID/pagemap), is not the shared
    zero page, and - in a private file mapping - is no longer the file's own page (a
    page-cache page is read back from the file on restore; only COW copies are saved).

How they are recorded (criu/page-pipe.c, criu/page-xfer.c):

    +--------------------+     PagemapHead { pages_id = 1 }  -> pages-1.img
    | pagemap-PID.img    |     PagemapEntry { vaddr, nr_pages, flags } ...
    +--------------------+     one entry per run of consecutive saved pages with the same
                               flags, in address order (a run may cross from one area into
                               the next, as CRIU's page pipe does);
    +--------------------+     flags: PE_PRESENT, plus PE_LAZY for pages of anonymous
    | pages-1.img        |     private areas (not vdso/vvar/vsyscall, locked or hugetlb)
    +--------------------+     that CRIU's is_stack() does not claim (module note below)
                               the pages' bytes, 4096 each, in entry order

is_stack: CRIU marks a page non-lazy when ``!((sp ^ vaddr) & ~PAGE_MASK)``, which for a
page-aligned vaddr holds only when sp itself is page aligned; the expression is copied
as it is, so the images match CRIU's bit for bit.

Contents are read through /proc/PID/mem (linux/memory.py), which reads any mapping of a
stopped tracee, whatever its protection.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass, field

from pycriu_restore.dump.errors import DumpError
from pycriu_restore.dump.procfs import PME_FILE, PME_PFN_MASK, PME_PRESENT, PME_SWAP, read_pagemap
from pycriu_restore.dump.vmas import (MAP_ANONYMOUS, MAP_DROPPABLE, MAP_HUGETLB, MAP_LOCKED,
                                      MAP_PRIVATE, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR,
                                      VMA_FILE_PRIVATE, is_private)
from pycriu_restore.images.flags import PMAP_FLAGS
from pycriu_restore.images.schemas import pagemap_pb2, vma_pb2
from pycriu_restore.linux.errors import LinuxError
from pycriu_restore.linux.memory import proc_mem_read

PE_LAZY = dict(PMAP_FLAGS)["PE_LAZY"]
PE_PRESENT = dict(PMAP_FLAGS)["PE_PRESENT"]
# The pages image every pagemap of a CRIU 4.x dump points at (criu/page-xfer.c).
PAGES_ID = 1


def zero_page_pfn(page_bytes: int) -> int:
    """The PFN of the kernel's shared zero page, found as CRIU's kerndat does: read an
    untouched anonymous page (which maps the zero page) and look it up in our own pagemap."""
    area = mmap.mmap(-1, page_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area[0]   # a read fault maps the zero page; a write would allocate a page
        address = ctypes.addressof(ctypes.c_char.from_buffer(area))
        (entry,) = read_pagemap(os.getpid(), address, address + page_bytes, page_bytes)
    finally:
        area.close()
    return entry & PME_PFN_MASK


def can_be_lazy(vma: vma_pb2.VmaEntry) -> bool:
    """criu/include/vma.h vma_entry_can_be_lazy: private anonymous, not special, locked or huge."""
    return bool(vma.flags & MAP_ANONYMOUS and vma.flags & MAP_PRIVATE
                and not vma.flags & (MAP_LOCKED | MAP_HUGETLB)
                and not vma.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL))


@dataclass
class PageDump:
    """The pagemap records and the page bytes of one task, plus what CRIU's stats count."""

    entries: list[pagemap_pb2.PagemapEntry] = field(default_factory=list)
    pages: bytearray = field(default_factory=bytearray)
    pages_scanned: int = 0

    @property
    def pages_written(self) -> int:
        return sum(e.nr_pages for e in self.entries)

    def add(self, vaddr: int, flags: int, data: bytes, page_bytes: int) -> None:
        """Append one page, extending the last entry when it continues it with the same flags."""
        last = self.entries[-1] if self.entries else None
        if last is not None and last.flags == flags and last.vaddr + last.nr_pages * page_bytes == vaddr:
            last.nr_pages += 1
        else:
            self.entries.append(pagemap_pb2.PagemapEntry(vaddr=vaddr, compat_nr_pages=0,
                                                         flags=flags, nr_pages=1))
        self.pages += data


def dump_pages(pid: int, vmas: list[vma_pb2.VmaEntry], sp: int, page_bytes: int) -> PageDump:
    """Choose and read the pages of a ptrace-stopped task (module docstring); ``sp`` is its rsp."""
    zero_pfn = zero_page_pfn(page_bytes)
    out = PageDump()
    for vma in vmas:
        if not is_private(vma) or vma.status & VMA_AREA_VVAR or vma.flags & MAP_DROPPABLE:
            continue
        whole = bool(vma.status & VMA_AREA_VDSO)
        pme = read_pagemap(pid, vma.start, vma.end, page_bytes)
        out.pages_scanned += len(pme)
        lazy_area = can_be_lazy(vma)
        for index, entry in enumerate(pme):
            vaddr = vma.start + index * page_bytes
            if not whole:
                if vma.status & VMA_FILE_PRIVATE and entry & PME_FILE:
                    continue   # still the file's page: the restore maps the file
                if not entry & (PME_PRESENT | PME_SWAP) or entry & PME_PFN_MASK == zero_pfn:
                    continue
            is_stack = not (sp ^ vaddr) & (page_bytes - 1)   # CRIU's expression, see above
            flags = PE_PRESENT | (PE_LAZY if lazy_area and not is_stack else 0)
            try:
                data = proc_mem_read(pid, vaddr, page_bytes)
            except LinuxError as err:
                raise DumpError(f"cannot read the page at {vaddr:#x}: {err}", pid=pid) from err
            out.add(vaddr, flags, data, page_bytes)
    return out


def pagemap_head() -> pagemap_pb2.PagemapHead:
    """The first record of every pagemap image: which pages-N.img holds the bytes."""
    return pagemap_pb2.PagemapHead(pages_id=PAGES_ID)
