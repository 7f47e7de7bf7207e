"""Memfds (memfd.img; pages in pagemap-shmem-<shmid>.img): shared memory restored once.

CRIU 4.2 dumps MAP_SHARED|MAP_ANONYMOUS memory as a memfd (fixture README). One memfd of
the dumped size is created and filled from the pages image at the offsets the shmem pagemap
gives (holes stay zero); every task that maps it gets this one fd, so a write by one task
is seen by all. Seals are added last: F_SEAL_WRITE or F_SEAL_GROW would forbid the fill.
"""

from __future__ import annotations

import fcntl
import os

from pycriu_restore.files import park
from pycriu_restore.plan.model import SharedMemory

PAGE_SIZE = 4096
_COPY_CHUNK_BYTES = 8 << 20


def create(mem: SharedMemory) -> int:
    """A filled, sealed memfd standing for ``mem``; returned parked high, close-on-exec."""
    # memfd_create(2) names are for debugging only; the dumped one ("/dev/zero" for anon
    # shared memory) is kept so /proc/PID/maps looks as it did.
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
