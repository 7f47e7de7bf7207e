"""Anonymous shared memory as a file: the shmem object behind mmap(MAP_SHARED|MAP_ANONYMOUS).

The kernel backs every MAP_SHARED|MAP_ANONYMOUS mapping with a file on its internal shmem
mount (mm/shmem.c shmem_zero_setup), named "/dev/zero" and unlinked: /proc/PID/maps shows
it as ``/dev/zero (deleted)``. No syscall returns an fd of it, but
``/proc/self/map_files/<start>-<end>`` opens the file a mapping maps (proc(5); needs
CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE). With that fd, other tasks map the *same* object
at their own addresses, and the mapping keeps the name a memfd would not (a memfd shows as
``/memfd:NAME (deleted)``). CRIU's restore opens it the same way (criu/shmem.c open_shmem,
open_map_file).
"""

from __future__ import annotations

import ctypes
import mmap
import os

from pycriu_restore.linux.libc import libc_function, raise_errno

_mmap = libc_function("mmap", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                 ctypes.c_int, ctypes.c_int, ctypes.c_long])
_munmap = libc_function("munmap", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t])
MAP_FAILED = ctypes.c_void_p(-1).value  # (void *)-1, <sys/mman.h>


def new_anon_shmem(size_bytes: int) -> int:
    """A new anonymous shmem object of ``size_bytes`` (zero-filled), as an O_RDWR fd
    (close-on-exec). Nothing of it stays mapped: the fd alone holds the object.

    Precondition: ``size_bytes`` is a positive multiple of the page size; the caller may
    open /proc/self/map_files (root: CAP_SYS_ADMIN).
    """
    if size_bytes <= 0 or size_bytes % mmap.PAGESIZE:
        raise AssertionError(f"new_anon_shmem: size {size_bytes} is not a positive number of pages")
    addr = _mmap(None, size_bytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
    if addr is None or addr == MAP_FAILED:
        raise_errno(f"mmap(MAP_SHARED|MAP_ANONYMOUS, {size_bytes} bytes)")
    try:
        return os.open(f"/proc/self/map_files/{addr:x}-{addr + size_bytes:x}", os.O_RDWR | os.O_CLOEXEC)
    finally:
        # The open file holds the object; the mapping was only the way to reach it.
        if _munmap(addr, size_bytes) != 0:
            raise_errno(f"munmap({addr:#x}, {size_bytes})")
