"""Shared anonymous memory (VMA_ANON_SHARED; pages in pagemap-shmem-<shmid>.img): one object per shmid.

mmap(MAP_SHARED|MAP_ANONYMOUS) memory survives fork: parent and children map *one* shmem
object, and a write by one is read by the others (nginx keeps its accept mutex and its
stub_status counters there). CRIU names the object by its inode number, ``shmid``, in
every VMA that maps it (mm-PID.img), and dumps its content once, at offsets in the object,
in pagemap-shmem-<shmid>.img (criu/shmem.c). The object's size is the largest
``pgoff + size`` of those VMAs (collect_shmem): a VMA may map only part of it.

Restored as CRIU does (open_shmem): the root, before it forks, maps a new anonymous shared
region of that size, takes an fd of it through /proc/self/map_files (linux/shmem.py), lets
the mapping go, and writes the pages through the fd; the fd is parked like every shared
object (restore/shared.py), and each task's blob maps it MAP_SHARED at its VMAs with their
pgoff. The object is a real anonymous shmem file, so /proc/PID/maps names it
``/dev/zero (deleted)`` as before the dump (CRIU's restore, which uses a memfd when it can,
shows ``/memfd: (deleted)``).

CRIU 4.2 running as root dumps this memory through its memfd path instead (a MEMFD entry
named "/dev/zero", files/memfd.py), which comes back through :func:`new_object` as well.
VMA_ANON_SHARED is what it writes when /proc/PID/map_files cannot be opened (an
unprivileged dump, criu/proc_parse.c vma_get_mapfile_user) and what CRIU before the memfd
path wrote.

Not a kind of fd: no FileEntry has this type, and no task holds the object at an fd. It
sits in files/registry.py because the root creates it before forking, as it creates pipes.
"""

from __future__ import annotations

import os

from pycriu_restore.files import park
from pycriu_restore.files.registry import SharedObject, TreeContext
from pycriu_restore.images.flags import PMAP_FLAGS
from pycriu_restore.linux.shmem import new_anon_shmem
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature
from pycriu_restore.plan.model import AnonSharedMemory, PageRun, VmaKind

SPECS = ()  # no fd spec: only mappings refer to the object
KIND = "SHMEM"  # its name in files/registry.py and in RestorePlan.shared
PAGE_SIZE = 4096
PE_PRESENT = dict(PMAP_FLAGS)["PE_PRESENT"]
PE_PARENT = dict(PMAP_FLAGS)["PE_PARENT"]
# A bound for untrusted images: the object is made with mmap before any page is read.
# 1 TiB is above any machine here and far below what would overflow an address.
MAX_OBJECT_BYTES = 1 << 40
_COPY_CHUNK_BYTES = 8 << 20


def read(ctx):  # pragma: no cover - no FileEntry has the type SHMEM
    raise AssertionError(f"anon_shmem.read: {ctx.where} has no FileEntry of type {KIND}")


def shared(ctx: TreeContext) -> tuple[SharedObject, ...]:
    """One object per shmid that some VMA maps, with its size and pages (plan time, pure)."""
    sizes: dict[int, int] = {}
    for task in ctx.tasks:
        for vma in task.vmas:
            if vma.kind is VmaKind.ANON_SHARED:
                assert vma.file is not None and vma.file.shmem_id is not None, \
                    f"anon_shmem.shared: task {task.pid} VMA {vma.start:#x} has no shmid"
                shmid = vma.file.shmem_id
                sizes[shmid] = max(sizes.get(shmid, 0), vma.pgoff + vma.size)
    out = []
    for shmid, size in sizes.items():
        if size > MAX_OBJECT_BYTES:
            raise InconsistentImages(f"pagemap-shmem-{shmid}.img", f"shared anonymous memory of {size} bytes "
                                     f"(pgoff + size of its VMAs), more than {MAX_OBJECT_BYTES}")
        pages_path, runs = _page_runs(ctx.images, shmid, size)
        out.append(SharedObject(KIND, shmid, 1, AnonSharedMemory(shmid=shmid, size_bytes=size,
                                                                  pages_path=pages_path, page_runs=runs)))
    return tuple(out)


def _page_runs(images, shmid: int, size_bytes: int) -> tuple[str, tuple[PageRun, ...]]:
    """The object's pages: where each run goes in the object and where it is in the pages image.

    CRIU's dump writes pagemap-shmem-<shmid>.img for every object it dumps (criu/shmem.c
    dump_one_shmem), without entries when every page is zero; a missing image therefore
    means the images are incomplete, as CRIU's restore (open_page_read) finds.
    """
    name = f"pagemap-shmem-{shmid}.img"
    if not images.exists(name):
        raise InconsistentImages(name, f"missing: the content of shared anonymous memory {shmid} "
                                 f"({size_bytes} bytes) is not in the images")
    pagemap = images.shmem_pagemap(shmid)
    if pagemap.pages_id is None:
        raise InconsistentImages(name, "no head record: its pages image is unknown")
    pages_path = images.pages_path(pagemap.pages_id)
    pages_size = os.path.getsize(pages_path)
    runs, offset, prev_end = [], 0, 0
    for index, entry in enumerate(pagemap.iter_entries()):
        nr_pages = entry.nr_pages or entry.compat_nr_pages
        if entry.flags & PE_PARENT:
            raise UnsupportedFeature(name, f"entry {index}: pages in a parent image (incremental dumps)")
        if not entry.flags & PE_PRESENT:
            continue  # a hole: the page stays zero
        start, end = entry.vaddr, entry.vaddr + nr_pages * PAGE_SIZE
        if start % PAGE_SIZE or start < prev_end:
            raise InconsistentImages(name, f"entry {index}: offset {start:#x} is not page-aligned or "
                                     f"goes back (previous entry ends at {prev_end:#x})")
        if end > size_bytes:
            raise InconsistentImages(name, f"entry {index}: pages {start:#x}-{end:#x} past the object's "
                                     f"size {size_bytes:#x} (the largest pgoff + size of its VMAs)")
        if offset + nr_pages * PAGE_SIZE > pages_size:
            left = max(0, (pages_size - offset) // PAGE_SIZE)
            raise InconsistentImages(name, f"entry {index} covers {nr_pages} pages, {pages_path.name} has {left} left")
        runs.append(PageRun(start_addr=start, nr_pages=nr_pages, file_offset=offset))
        offset += nr_pages * PAGE_SIZE
        prev_end = end
    return str(pages_path), tuple(runs)


def create(obj: SharedObject) -> tuple[int]:
    """In the root, before any fork: the filled object, as a parked temporary fd."""
    mem: AnonSharedMemory = obj.spec
    fd = new_object(mem.size_bytes)
    try:
        fill(fd, mem.pages_path, mem.page_runs)
    except BaseException:
        os.close(fd)
        raise
    return (fd,)


def new_object(size_bytes: int) -> int:
    """A zero-filled anonymous shmem object of ``size_bytes`` as a temporary fd (files.park)."""
    return park(new_anon_shmem(size_bytes))


def fill(fd: int, pages_path: str, runs: tuple[PageRun, ...]) -> None:
    """Write each run of the pages image at its offset in the object ``fd`` (holes stay zero)."""
    if not runs:
        return
    src = os.open(pages_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for run in runs:
            done, size = 0, run.nr_pages * PAGE_SIZE
            while done < size:
                chunk = os.pread(src, min(_COPY_CHUNK_BYTES, size - done), run.file_offset + done)
                if not chunk:
                    raise OSError(f"{pages_path} ends at offset {run.file_offset + done}, {size - done} bytes short")
                done += os.pwrite(fd, chunk, run.start_addr + done)  # a short write is retried
    finally:
        os.close(src)
