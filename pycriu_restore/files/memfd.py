"""Memfds (memfd.img; pages in pagemap-shmem-<shmid>.img): shared memory restored once.

CRIU 4.2 dumps MAP_SHARED|MAP_ANONYMOUS memory as a memfd (fixture README). One memfd of
the dumped size is created and filled from the pages image at the offsets the shmem pagemap
gives (holes stay zero); every task that maps it gets this one fd, so a write by one task
is seen by all. Seals are added last: F_SEAL_WRITE or F_SEAL_GROW would forbid the fill.
The anonymous memory among them (named "/dev/zero") is made as anonymous shmem instead
(files/anon_shmem.py), so that the restored tasks' maps read as before the dump.
"""

from __future__ import annotations

import fcntl
import os

from pycriu_restore.files import anon_shmem, park
from pycriu_restore.images.flags import PMAP_FLAGS
from pycriu_restore.files.registry import FdContext, SharedObject, TreeContext
from pycriu_restore.plan.errors import InconsistentImages
from pycriu_restore.plan.model import PageRun, SharedMemory

SPECS = ()  # no fd spec: an fd holding a memfd is refused, mappings are restored
PAGE_SIZE = 4096
PE_PRESENT = dict(PMAP_FLAGS)["PE_PRESENT"]
_COPY_CHUNK_BYTES = 8 << 20
F_SEAL_SEAL = 0x0001  # <linux/fcntl.h>: what F_GET_SEALS reports for shmem that is not a memfd
ANON_SHMEM_NAME = "/dev/zero"  # the name of the file behind MAP_SHARED|MAP_ANONYMOUS (mm/shmem.c)


def read(ctx: FdContext):
    raise ctx.refuse(f"memfd (inode {ctx.entry.memfd.inode_id}) held as an fd (only MAP_SHARED mappings of memfds are restored)")


def read_inodes(images) -> dict[int, SharedMemory]:
    """Every memfd inode of memfd.img with its pages (pagemap-shmem-<shmid>.img), by inode id.
    Pure: plan/build.py links the VMAs to these."""
    out = {}
    for inode in images.memfd_inodes():
        name = f"pagemap-shmem-{inode.shmid}.img"
        pagemap = images.shmem_pagemap(inode.shmid)
        runs, offset = [], 0
        if pagemap.pages_id is not None:
            pages_path = images.pages_path(pagemap.pages_id)
            for index, entry in enumerate(pagemap.iter_entries()):
                if not entry.flags & PE_PRESENT:
                    continue
                nr_pages = entry.nr_pages or entry.compat_nr_pages
                if entry.vaddr + nr_pages * PAGE_SIZE > inode.size:
                    raise InconsistentImages(name, f"entry {index}: pages past the memfd's size {inode.size}")
                runs.append(PageRun(start_addr=entry.vaddr, nr_pages=nr_pages, file_offset=offset))
                offset += nr_pages * PAGE_SIZE
            if offset > os.path.getsize(pages_path):
                raise InconsistentImages(name, f"covers {offset} bytes, {pages_path.name} holds {os.path.getsize(pages_path)}")
        else:
            pages_path = images.directory
        out[inode.inode_id] = SharedMemory(inode_id=inode.inode_id, name=inode.name, size_bytes=inode.size,
                                          seals=inode.seals, pages_path=str(pages_path), page_runs=tuple(runs))
    return out


def shared(ctx: TreeContext) -> tuple[SharedObject, ...]:
    """Every memfd of memfd.img: the tasks that map it MAP_SHARED get this one memfd."""
    return tuple(SharedObject("MEMFD", inode, 1, mem) for inode, mem in read_inodes(ctx.images).items())


def create(obj: SharedObject) -> tuple[int]:
    return (create_memfd(obj.spec),)


def is_anon_shmem(mem: SharedMemory) -> bool:
    """Whether a memfd.img inode is MAP_SHARED|MAP_ANONYMOUS memory that CRIU dumped through
    its memfd path: CRIU strips "memfd:" from a memfd's name (criu/memfd.c dump_one_memfd),
    so only a shmem file that is no memfd is named "/dev/zero" (mm/shmem.c shmem_zero_setup),
    and it cannot be sealed. (memfd_create("/dev/zero") without MFD_ALLOW_SEALING looks the
    same; it comes back as anonymous shmem, which differs only in its name in /proc/PID/maps.)"""
    return mem.name == ANON_SHMEM_NAME and mem.seals == F_SEAL_SEAL


def create_memfd(mem: SharedMemory) -> int:
    """A filled, sealed memfd standing for ``mem``; returned parked high, close-on-exec.
    Anonymous shared memory becomes an anonymous shmem object again (files/anon_shmem.py),
    so that /proc/PID/maps names it "/dev/zero (deleted)" as before the dump."""
    if is_anon_shmem(mem) and mem.size_bytes % PAGE_SIZE == 0 and mem.size_bytes > 0:
        fd = anon_shmem.new_object(mem.size_bytes)
        try:
            anon_shmem.fill(fd, mem.pages_path, mem.page_runs)
        except BaseException:
            os.close(fd)
            raise
        return fd
    # memfd_create(2) names are for debugging only; the dumped one is kept so
    # /proc/PID/maps looks as it did.
    fd = park(os.memfd_create(mem.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING))
    try:
        os.ftruncate(fd, mem.size_bytes)
        if mem.page_runs:
            src = os.open(mem.pages_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for run in mem.page_runs:
                    _copy(src, run.file_offset, fd, run.start_addr, run.nr_pages * PAGE_SIZE)
            finally:
                os.close(src)
        if mem.seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, mem.seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy(src: int, src_off: int, dst: int, dst_off: int, size_bytes: int) -> None:
    done = 0
    while done < size_bytes:
        chunk = os.pread(src, min(_COPY_CHUNK_BYTES, size_bytes - done), src_off + done)
        if not chunk:
            raise OSError(f"pages image ends at offset {src_off + done}, {size_bytes - done} bytes short")
        os.pwrite(dst, chunk, dst_off + done)
        done += len(chunk)
