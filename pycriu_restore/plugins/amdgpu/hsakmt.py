"""ROCm's shared memory file and its semaphore, recreated before the restored task runs.

The ROCm thunk (libhsakmt) keeps process-shared state in POSIX shared memory:

    /dev/shm/hsakmt_shared_mem        shm_open("/hsakmt_shared_mem"): a u32 magic at offset
                                      0, ``shared_mem_size`` bytes in all
    /dev/shm/sem.hsakmt_semaphore     sem_open("hsakmt_semaphore", O_CREAT, 0666, 1)

CRIU records the file's size and magic in the kfd image (shared_mem_size, shared_mem_magic)
and, on restore, recreates the file when it is missing and opens (creating) the semaphore
(amdgpu_plugin.c restore_hsakmt_shared_mem). This module does the same, in the task after
its KFD state is back. The names are CRIU's HSAKMT_SHM / HSAKMT_SEM
(plugins/amdgpu/amdgpu_plugin_util.h). An existing file is left as it is, as in CRIU: other
ROCm processes may be using it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

from pycriu_restore.plugins.amdgpu.ioctl import GpuDeviceError

SHM_DIR = "/dev/shm"
HSAKMT_SHM_NAME = "hsakmt_shared_mem"
HSAKMT_SEM_NAME = "hsakmt_semaphore"
MAGIC = struct.Struct("<I")  # the first 4 bytes of the file
# A bound on what an image may ask for (the thunk's file is a few pages).
MAX_SHARED_MEM_BYTES = 64 << 20
_SHM_MODE = 0o666  # as CRIU's shm_open/sem_open (the umask applies)


def restore_shared_mem(size_bytes: int, magic: int, shm_dir: str = SHM_DIR,
                       sem_name: str = HSAKMT_SEM_NAME) -> bool:
    """Recreate the thunk's shared memory file (if missing) and semaphore; True if the file was made.

    ``size_bytes`` 0 means the checkpointed process had none: nothing is done. Raises
    GpuDeviceError naming the file or the semaphore on failure.
    """
    if not size_bytes:
        return False
    if not 0 < size_bytes <= MAX_SHARED_MEM_BYTES:
        raise GpuDeviceError(f"hsakmt shared memory of {size_bytes} bytes: expected 1..{MAX_SHARED_MEM_BYTES}")
    path = os.path.join(shm_dir, HSAKMT_SHM_NAME)
    made = False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, _SHM_MODE)
    except FileExistsError:
        pass  # in use by another ROCm process: keep it (CRIU: "already exists")
    except OSError as err:
        raise GpuDeviceError(f"cannot create {path}: {err.strerror}") from err
    else:
        try:
            os.ftruncate(fd, size_bytes)
            os.pwrite(fd, MAGIC.pack(magic), 0)
            made = True
        except OSError as err:
            os.close(fd)
            os.unlink(path)
            raise GpuDeviceError(f"cannot write {size_bytes} bytes with magic {magic:#x} to {path}: "
                                 f"{err.strerror}") from err
        os.close(fd)
    _open_semaphore(sem_name)
    return made


def _open_semaphore(name: str) -> None:
    """sem_open(name, O_CREAT, 0666, 1) and sem_close: glibc lays the semaphore out, not us."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.sem_open.restype = ctypes.c_void_p
    libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
    libc.sem_close.argtypes = [ctypes.c_void_p]
    sem = libc.sem_open(name.encode(), os.O_CREAT, _SHM_MODE, 1)
    if not sem:  # SEM_FAILED is NULL in glibc
        err = ctypes.get_errno()
        raise GpuDeviceError(f"sem_open({name!r}, O_CREAT, 0666, 1) failed: {os.strerror(err)}")
    libc.sem_close(sem)
