"""The KFD (/dev/kfd) checkpoint/restore ABI of <linux/kfd_ioctl.h>, and thin wrappers.

KFD is the kernel driver behind ROCm compute: one KFD "process" per task holds the task's
GPU buffer objects (BOs), queues and events. Its CRIU interface is one ioctl,
``AMDKFD_IOC_CRIU_OP``, whose ``op`` picks the step; restore uses two of them:

    op        caller              what the kernel does
    --------  ------------------  ---------------------------------------------------------
    RESTORE   the restored task   re-creates every BO at its checkpointed GPU VA, the queues
                                  and events (from priv_data); per BO returns the new mmap
                                  offset and, for VRAM/GTT BOs, a dma-buf fd
    RESUME    the orchestrator    after the task's VMAs are back: starts MMU notifiers and
                                  userptr mappings and restarts the queues of ``pid``

The argument of RESTORE points at two arrays the caller builds::

    kfd_ioctl_criu_args (56 B)
      devices ──► kfd_criu_device_bucket[num_devices]  (16 B each: user_gpu_id -> actual
                  gpu_id on this machine, drm_fd of its render node, opened by the caller)
      bos ──────► kfd_criu_bo_bucket[num_bos]          (48 B each: addr, size, offset,
                  restored_offset (out), gpu_id (checkpoint id), alloc_flags, dmabuf_fd (out))
      priv_data ► opaque bytes from the checkpoint     (priv_data_size)

Every struct and number here mirrors linux-libc-dev's <linux/kfd_ioctl.h> (uapi, 1.11 in
Debian 12's 6.1 headers); tests/test_amdgpu_abi.py compiles C against it and compares.
"""

from __future__ import annotations

import ctypes

from pycriu_restore.plugins.amdgpu.ioctl import call_ioctl, ior, iowr

# --- <linux/kfd_ioctl.h>: version -------------------------------------------------------

KFD_IOCTL_MAJOR_VERSION = 1  # the interface version these mirrors follow

# The oldest KFD whose CRIU restore we can drive: 1.8 added SDMA transfers with GTT BOs
# (research/criu-restore-internals.md §5.3: CRIU requires major 1, minor >= 8).
KFD_MIN_CRIU_MINOR_VERSION = 8

# --- <linux/kfd_ioctl.h>: BO allocation flags (KfdBoEntry.alloc_flags) ------------------

KFD_IOC_ALLOC_MEM_FLAGS_VRAM = 1 << 0
KFD_IOC_ALLOC_MEM_FLAGS_GTT = 1 << 1
KFD_IOC_ALLOC_MEM_FLAGS_USERPTR = 1 << 2
KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL = 1 << 3
KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP = 1 << 4
KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE = 1 << 31
KFD_IOC_ALLOC_MEM_FLAGS_EXECUTABLE = 1 << 30
KFD_IOC_ALLOC_MEM_FLAGS_PUBLIC = 1 << 29
KFD_IOC_ALLOC_MEM_FLAGS_NO_SUBSTITUTE = 1 << 28
KFD_IOC_ALLOC_MEM_FLAGS_AQL_QUEUE_MEM = 1 << 27
KFD_IOC_ALLOC_MEM_FLAGS_COHERENT = 1 << 26
KFD_IOC_ALLOC_MEM_FLAGS_UNCACHED = 1 << 25

# --- <linux/kfd_ioctl.h>: enum kfd_criu_op ----------------------------------------------

KFD_CRIU_OP_PROCESS_INFO = 0
KFD_CRIU_OP_CHECKPOINT = 1
KFD_CRIU_OP_UNPAUSE = 2
KFD_CRIU_OP_RESTORE = 3
KFD_CRIU_OP_RESUME = 4

# What the kernel leaves in kfd_criu_bo_bucket.dmabuf_fd for a BO it exported no dma-buf
# for (KFD_INVALID_FD in CRIU's plugin; the kernel writes (u32)-1).
KFD_INVALID_FD = 0xFFFFFFFF

# --- drivers/gpu/drm/amd/amdkfd/kfd_priv.h (kernel-internal, not uapi): /dev/kfd offsets ---
# kfd_mmap() picks what an mmap of /dev/kfd maps from the offset: its top two bits are the
# type, bits 46..61 the GPU's gpu_id. CHECKPOINT writes a doorbell or MMIO BO's offset this
# way (criu_checkpoint_bos) and RESTORE its restored_offset (with the new gpu_id). No
# installed header has them: tests/test_amdgpu_fake.py compares them with the fake KFD's own.
KFD_MMAP_TYPE_SHIFT = 62
KFD_MMAP_TYPE_DOORBELL = 0x3 << KFD_MMAP_TYPE_SHIFT
KFD_MMAP_TYPE_MMIO = 0x0 << KFD_MMAP_TYPE_SHIFT
KFD_MMAP_GPU_ID_SHIFT = 46
KFD_GPU_ID_HASH_WIDTH = 16  # gpu_ids are 16-bit hashes of the device's properties


def kfd_mmap_offset(mmap_type: int, gpu_id: int) -> int:
    """The /dev/kfd mmap offset of a GPU's doorbell or MMIO page: ``mmap_type`` (a
    KFD_MMAP_TYPE_*) | KFD_MMAP_GPU_ID(gpu_id), as kfd_priv.h composes it."""
    return mmap_type | ((gpu_id << KFD_MMAP_GPU_ID_SHIFT)
                        & (((1 << KFD_GPU_ID_HASH_WIDTH) - 1) << KFD_MMAP_GPU_ID_SHIFT))


# --- <linux/kfd_ioctl.h>: structs --------------------------------------------------------

class KfdIoctlGetVersionArgs(ctypes.Structure):
    """``struct kfd_ioctl_get_version_args``: filled by the kernel."""

    _fields_ = [
        ("major_version", ctypes.c_uint32),
        ("minor_version", ctypes.c_uint32),
    ]


class KfdIoctlCriuArgs(ctypes.Structure):
    """``struct kfd_ioctl_criu_args``: pointers are user addresses as u64."""

    _fields_ = [
        ("devices", ctypes.c_uint64),        # -> KfdCriuDeviceBucket[num_devices]
        ("bos", ctypes.c_uint64),            # -> KfdCriuBoBucket[num_bos]
        ("priv_data", ctypes.c_uint64),      # -> priv_data_size opaque bytes
        ("priv_data_size", ctypes.c_uint64),
        ("num_devices", ctypes.c_uint32),
        ("num_bos", ctypes.c_uint32),
        ("num_objects", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("op", ctypes.c_uint32),             # KFD_CRIU_OP_*
    ]


class KfdCriuDeviceBucket(ctypes.Structure):
    """``struct kfd_criu_device_bucket``: one GPU of the checkpoint and where it goes."""

    _fields_ = [
        ("user_gpu_id", ctypes.c_uint32),    # gpu_id at checkpoint time (what the task sees)
        ("actual_gpu_id", ctypes.c_uint32),  # gpu_id of the GPU on this machine
        ("drm_fd", ctypes.c_uint32),         # that GPU's render node, open in the caller
        ("pad", ctypes.c_uint32),
    ]


class KfdCriuBoBucket(ctypes.Structure):
    """``struct kfd_criu_bo_bucket``: one BO; restored_offset and dmabuf_fd are outputs."""

    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
        ("restored_offset", ctypes.c_uint64),
        ("gpu_id", ctypes.c_uint32),         # the checkpoint (user) gpu_id
        ("alloc_flags", ctypes.c_uint32),    # KFD_IOC_ALLOC_MEM_FLAGS_*
        ("dmabuf_fd", ctypes.c_uint32),      # KFD_INVALID_FD when none was exported
        ("pad", ctypes.c_uint32),
    ]


# --- <linux/kfd_ioctl.h>: ioctl numbers (AMDKFD_IOCTL_BASE 'K') ---------------------------

AMDKFD_IOC_GET_VERSION = ior("K", 0x01, KfdIoctlGetVersionArgs)
AMDKFD_IOC_CRIU_OP = iowr("K", 0x22, KfdIoctlCriuArgs)

# C type name -> mirror, for tests/test_amdgpu_abi.py.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "struct kfd_ioctl_get_version_args": KfdIoctlGetVersionArgs,
    "struct kfd_ioctl_criu_args": KfdIoctlCriuArgs,
    "struct kfd_criu_device_bucket": KfdCriuDeviceBucket,
    "struct kfd_criu_bo_bucket": KfdCriuBoBucket,
}


# --- wrappers ------------------------------------------------------------------------------

def get_version(kfd_fd: int, device: str = "/dev/kfd") -> tuple[int, int]:
    """AMDKFD_IOC_GET_VERSION: the (major, minor) of the KFD interface behind ``kfd_fd``."""
    args = KfdIoctlGetVersionArgs()
    call_ioctl(kfd_fd, AMDKFD_IOC_GET_VERSION, args, "AMDKFD_IOC_GET_VERSION", device)
    return args.major_version, args.minor_version


def criu_restore(kfd_fd: int, devices: ctypes.Array[KfdCriuDeviceBucket],
                 bos: ctypes.Array[KfdCriuBoBucket], priv_data: bytes, num_objects: int,
                 device: str = "/dev/kfd") -> None:
    """AMDKFD_IOC_CRIU_OP(RESTORE): re-create the checkpointed KFD state in the caller.

    Precondition: the caller is the task being restored (KFD keys its state on the
    calling process), ``devices`` hold open render-node fds, ``bos`` come from the image.
    On return each bucket of ``bos`` has its ``restored_offset`` and ``dmabuf_fd`` set;
    the dma-buf fds belong to the caller, who must close them.
    """
    # The kernel only reads priv_data on RESTORE; a private copy keeps the pointer valid.
    priv = ctypes.create_string_buffer(priv_data, max(len(priv_data), 1))
    args = KfdIoctlCriuArgs(
        devices=ctypes.addressof(devices), bos=ctypes.addressof(bos),
        priv_data=ctypes.addressof(priv), priv_data_size=len(priv_data),
        num_devices=len(devices), num_bos=len(bos), num_objects=num_objects,
        pid=0, op=KFD_CRIU_OP_RESTORE)
    call_ioctl(kfd_fd, AMDKFD_IOC_CRIU_OP, args, "AMDKFD_IOC_CRIU_OP(RESTORE)", device)


def criu_resume(kfd_fd: int, pid: int, device: str = "/dev/kfd") -> None:
    """AMDKFD_IOC_CRIU_OP(RESUME): start the restored queues of ``pid``.

    Precondition: every BO of ``pid`` is filled and its VMAs are mapped again (queues may
    read VRAM as soon as they run). ESRCH means ``pid`` has no KFD state; the
    :class:`GpuIoctlError` carries it in ``errno`` for the caller to decide.
    """
    args = KfdIoctlCriuArgs(pid=pid, op=KFD_CRIU_OP_RESUME)
    call_ioctl(kfd_fd, AMDKFD_IOC_CRIU_OP, args, "AMDKFD_IOC_CRIU_OP(RESUME)", device)
