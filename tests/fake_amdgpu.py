"""A fake AMD GPU machine at the ioctl boundary: /dev/kfd and amdgpu render nodes, for tests.

No AMD GPU is available here, so the real backend (kfd_backend.py) is tested against this
model of the kernel. It replaces ``pycriu_restore.plugins.amdgpu.ioctl.ioctl_syscall`` (the
one function every GPU ioctl goes through) and answers each call as the kernel would:

* the request number must be one the uapi headers define: type, nr, direction and size
  (the kernel tolerates other sizes and zero-fills; the fake refuses them, so that a
  layout drift in a mirror fails a test instead of passing zeros);
* the argument is read from the caller's memory (/proc/self/mem, so a bad pointer is an
  EFAULT, not a crash) with layouts written here from the headers with ``struct`` --
  independently of the package's ctypes mirrors; tests/test_amdgpu_fake.py compiles C to
  check every size against <linux/kfd_ioctl.h> and <drm/amdgpu_drm.h>;
* the rules of the kernel's handlers (each rule's source is named where it is checked:
  kfd_chardev.c criu_restore*, amdgpu_gem.c, amdgpu_vm.c, amdgpu_cs.c, drm_gem.c,
  drm_prime.c, dma-buf.c), with the kernel's errno;
* state a device keeps: per DRM file (one per open of a render node; dup()ed fds share
  it) its GEM handles, its GPU VM mappings and contexts; per GPU its BOs and their mmap
  offsets; per process its KFD state.

Device memory is real: each GPU's render node is a sparse regular file under the fake's
root and a BO's bytes live in it at the BO's mmap offset (so mmap through a render fd
sees the BO, as on a real GPU). A dma-buf fd is a memfd of the BO's size that the fake
syncs with device memory on DMA_BUF_IOCTL_SYNC (START copies in, END copies out), which
is the contract CPU access to a dma-buf has: writes outside START/END are lost. SDMA
COPY LINEAR packets submitted with AMDGPU_CS are executed, reading the IB from device
memory and the staging buffer from the caller's memory.

Every call is recorded in ``calls`` as (pid, name, details) for order checks, and every
refusal in ``refusals`` with its reason, so a test can say why the "kernel" said no.

Modelled, not read from the kernel source (kept deliberately simple): a DRM file passed
to KFD must be a render node of the GPU it is given for; an SDMA copy that touches an
address no mapping of the submitting file covers faults the job (WAIT_CS ECANCELED);
KFD queue/event/SVM objects in priv_data are opaque (only the process, device and BO
sections are parsed); cross-device dma-buf import is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = 4096

# --- <asm-generic/ioctl.h> -------------------------------------------------------------------

_READ, _WRITE = 2, 1


def ioc(direction: int, type_char: str, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(type_char) << 8) | nr


def ioc_fields(request: int) -> tuple[int, str, int, int]:
    """(direction, type, nr, size) of a request number."""
    return request >> 30, chr((request >> 8) & 0xFF), request & 0xFF, (request >> 16) & 0x3FFF


# --- layouts, from the uapi headers (sizes checked by tests/test_amdgpu_fake.py) ------------

# <linux/kfd_ioctl.h>
KFD_GET_VERSION = struct.Struct("<II")                 # kfd_ioctl_get_version_args
KFD_CRIU_ARGS = struct.Struct("<QQQQIIIII4x")          # kfd_ioctl_criu_args (56)
KFD_DEVICE_BUCKET = struct.Struct("<IIII")             # kfd_criu_device_bucket
KFD_BO_BUCKET = struct.Struct("<QQQQIIII")             # kfd_criu_bo_bucket
# drivers/gpu/drm/amd/amdkfd/kfd_priv.h (kernel-internal; KFD_CRIU_PRIV_VERSION 1)
KFD_PROCESS_PRIV = struct.Struct("<II")                # version, xnack_mode
KFD_DEVICE_PRIV = struct.Struct("<Q")                  # reserved
MAX_GPU_INSTANCE = 64
KFD_BO_PRIV = struct.Struct(f"<QI{MAX_GPU_INSTANCE}I4x")  # user_addr, idr_handle, mapped_gpuids
KFD_CRIU_PRIV_VERSION = 1
KFD_CRIU_OP_RESTORE, KFD_CRIU_OP_RESUME = 3, 4
ALLOC_VRAM, ALLOC_GTT, ALLOC_USERPTR, ALLOC_DOORBELL, ALLOC_MMIO = 1, 2, 4, 8, 16
KFD_INVALID_FD = 0xFFFFFFFF
# kfd_priv.h: mmap offsets of /dev/kfd
KFD_MMAP_TYPE_DOORBELL = 0x3 << 62
KFD_MMAP_TYPE_MMIO = 0x0 << 62
KFD_MMAP_GPU_ID_SHIFT = 46


def kfd_mmap_gpu_id(gpu_id: int) -> int:
    return (gpu_id << KFD_MMAP_GPU_ID_SHIFT) & (((1 << 16) - 1) << KFD_MMAP_GPU_ID_SHIFT)


# <drm/drm.h>
DRM_GEM_CLOSE = struct.Struct("<II")
DRM_PRIME_HANDLE = struct.Struct("<IIi")
DRM_GEM_CHANGE_HANDLE = struct.Struct("<II")
DRM_CLOEXEC, DRM_RDWR = os.O_CLOEXEC, os.O_RDWR
# <drm/amdgpu_drm.h>
GEM_CREATE = struct.Struct("<QQQQ")                    # union drm_amdgpu_gem_create (in)
GEM_MMAP = struct.Struct("<II")                        # union drm_amdgpu_gem_mmap (8; out u64)
CTX = struct.Struct("<IIIi")                           # union drm_amdgpu_ctx (16)
CS_IN = struct.Struct("<IIIIQ")                        # union drm_amdgpu_cs (24)
CS_CHUNK = struct.Struct("<IIQ")
CS_CHUNK_IB = struct.Struct("<IIQIIII")
BO_LIST_IN = struct.Struct("<IIIIQ")
BO_LIST_ENTRY = struct.Struct("<II")
INFO = struct.Struct("<QII16x")                        # drm_amdgpu_info (32)
GEM_VA = struct.Struct("<IIIIQQQ")                     # drm_amdgpu_gem_va up to 6.15 (40)
GEM_VA_6_16_BYTES = 64                                 # 6.16+ appends timeline/syncobj fields
WAIT_CS = struct.Struct("<QQIIII")                     # union drm_amdgpu_wait_cs (32)
USERPTR = struct.Struct("<QQII")
DMA_BUF_SYNC = struct.Struct("<Q")                     # <linux/dma-buf.h>
# drm_amdgpu_info_device: the fields the fake fills, at their offsets, and its size
INFO_DEVICE_BYTES = 368
INFO_DEVICE_FIELDS = {"family": (16, "<I"), "virtual_address_offset": (144, "<Q"),
                      "virtual_address_max": (152, "<Q"), "virtual_address_alignment": (160, "<I")}
AMDGPU_INFO_DEV_INFO = 0x16
DOMAIN_CPU, DOMAIN_GTT, DOMAIN_VRAM = 1, 2, 4
DOMAIN_MASK = 0x3F | 0x40  # CPU..OA, DOORBELL (6.8+)
CREATE_FLAGS_KNOWN = (1 << 13) - 1
CREATE_NO_CPU_ACCESS = 1 << 1
USERPTR_READONLY, USERPTR_ANONONLY, USERPTR_VALIDATE, USERPTR_REGISTER = 1, 2, 4, 8
VA_OP_MAP, VA_OP_UNMAP = 1, 2
VM_PAGE_VALID = 0x1 | 0x2 | 0x4 | 0x8 | (0xF << 5) | (1 << 9)  # DELAY_UPDATE..NOALLOC
CTX_OP_ALLOC, CTX_OP_FREE = 1, 2
CHUNK_IB, CHUNK_BO_HANDLES = 0x01, 0x06
HW_IP_DMA = 2
AMDGPU_FAMILY_AI = 141
# DRM_FILE_PAGE_OFFSET_START (drm_gem.c) in bytes on 64-bit: fake mmap offsets begin here.
DRM_FILE_PAGE_OFFSET_START = 0x1_0000_0000
VA_RESERVED_BOTTOM = 1 << 16  # AMDGPU_VA_RESERVED_BOTTOM
VA_MAX = 1 << 48  # GFX9+ GPU VM: 48 bits (the GMC hole is not modelled)
DMA_BUF_SYNC_RW, DMA_BUF_SYNC_END = 3, 4


# --- the requests the fake answers -----------------------------------------------------------

def _requests() -> dict[int, str]:
    k, d, b = "K", "d", "b"
    rw = _READ | _WRITE
    table = {
        ioc(_READ, k, 0x01, KFD_GET_VERSION.size): "AMDKFD_IOC_GET_VERSION",
        ioc(rw, k, 0x22, KFD_CRIU_ARGS.size): "AMDKFD_IOC_CRIU_OP",
        ioc(_WRITE, d, 0x09, DRM_GEM_CLOSE.size): "GEM_CLOSE",
        ioc(rw, d, 0x2D, DRM_PRIME_HANDLE.size): "PRIME_HANDLE_TO_FD",
        ioc(rw, d, 0x2E, DRM_PRIME_HANDLE.size): "PRIME_FD_TO_HANDLE",
        ioc(rw, d, 0xD2, DRM_GEM_CHANGE_HANDLE.size): "GEM_CHANGE_HANDLE",
        ioc(rw, d, 0x40, GEM_CREATE.size): "AMDGPU_GEM_CREATE",
        ioc(rw, d, 0x41, GEM_MMAP.size): "AMDGPU_GEM_MMAP",
        ioc(rw, d, 0x42, CTX.size): "AMDGPU_CTX",
        ioc(rw, d, 0x44, CS_IN.size): "AMDGPU_CS",
        ioc(_WRITE, d, 0x45, INFO.size): "AMDGPU_INFO",
        ioc(_WRITE, d, 0x48, GEM_VA.size): "AMDGPU_GEM_VA",
        ioc(_WRITE, d, 0x48, GEM_VA_6_16_BYTES): "AMDGPU_GEM_VA",
        ioc(rw, d, 0x49, WAIT_CS.size): "AMDGPU_WAIT_CS",
        ioc(rw, d, 0x51, USERPTR.size): "AMDGPU_GEM_USERPTR",
        ioc(_WRITE, b, 0, DMA_BUF_SYNC.size): "DMA_BUF_IOCTL_SYNC",
    }
    return table


REQUESTS = _requests()


class Refused(OSError):
    """What the fake kernel answers instead of success: an errno and the rule broken."""

    def __init__(self, err: int, reason: str) -> None:
        super().__init__(err, f"{os.strerror(err)} [fake kernel: {reason}]")
        self.reason = reason


# --- device state -----------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuSpec:
    """One GPU of the fake machine."""

    gpu_id: int
    minor: int
    node_id: int
    family: int = AMDGPU_FAMILY_AI
    vram_bytes: int = 64 << 30


@dataclass(eq=False)
class Bo:
    """A GEM object on one GPU."""

    gpu: GpuSpec
    size: int
    domains: int
    flags: int = 0
    mmap_offset: int | None = None    # device memory lives at this offset of the node file
    userptr: int | None = None        # host address (userptr BOs)
    kfd_flags: int = 0                # KFD alloc_flags for KFD BOs
    dmabuf: int | None = None         # the fake's memfd: the BO's one dma-buf file
    allowed: set[int] = field(default_factory=set)  # DRM file ids that may mmap it
    written: int = 0                  # bytes written by SDMA or CPU (SYNC END)


@dataclass(eq=False)
class DrmFile:
    """One open of a render node: GEM handles, a GPU VM, contexts."""

    fid: int
    gpu: GpuSpec
    handles: dict[int, Bo] = field(default_factory=dict)
    vm: list[tuple[int, int, Bo, int]] = field(default_factory=list)  # (va, size, bo, offset_in_bo)
    contexts: dict[int, int] = field(default_factory=dict)  # ctx id -> next sequence number
    faulted: set[tuple[int, int]] = field(default_factory=set)  # (ctx, seq) of faulted jobs
    kfd_vm: bool = False  # KFD acquired this file's VM (amdgpu_amdkfd_gpuvm_acquire_process_vm)

    def new_handle(self, bo: Bo) -> int:
        handle = 1  # drm_gem_handle_create_tail: idr_alloc(.., 1, 0): lowest free from 1
        while handle in self.handles:
            handle += 1
        self.handles[handle] = bo
        return handle

    def handle_of(self, bo: Bo) -> int | None:
        return next((h for h, b in self.handles.items() if b is bo), None)

    def lookup(self, va: int, size: int) -> tuple[Bo, int] | None:
        """The BO and offset in it that a GPU access of ``size`` bytes at ``va`` hits."""
        for start, length, bo, offset in self.vm:
            if start <= va and va + size <= start + length:
                return bo, offset + va - start
        return None


@dataclass(eq=False)
class KfdProcess:
    """KFD state of one process (kfd_process): a pdd per local GPU, in node order."""

    pid: int
    user_ids: dict[int, int]  # actual gpu_id -> user gpu_id (starts as itself)
    drm_files: dict[int, DrmFile] = field(default_factory=dict)  # actual gpu_id -> file
    bos: list[Bo] = field(default_factory=list)
    restored: bool = False
    resumed: bool = False


class FakeAmdgpuMachine:
    """A machine with KFD and render nodes under ``root`` (dev/, sysfs topology/nodes)."""

    def __init__(self, root: Path, gpus: list[GpuSpec], cpu_nodes: int = 1,
                 kfd_version: tuple[int, int] = (1, 17), doorbell_slice: int = 2 * PAGE) -> None:
        self.root = root
        self.gpus = {g.gpu_id: g for g in gpus}
        self.kfd_version = kfd_version
        self.doorbell_slice = doorbell_slice  # kfd_doorbell_process_slice (8 KiB on SOC15)
        self.dev_dir = root / "dev"
        (self.dev_dir / "dri").mkdir(parents=True, exist_ok=True)
        (self.dev_dir / "kfd").write_bytes(b"")
        self._node_fds: dict[int, int] = {}
        self._inodes: dict[tuple[int, int], Any] = {}
        kfd_stat = os.stat(self.dev_dir / "kfd")
        self._inodes[(kfd_stat.st_dev, kfd_stat.st_ino)] = "kfd"
        for gpu in gpus:
            path = self.dev_dir / "dri" / f"renderD{gpu.minor}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._node_fds[gpu.gpu_id] = fd
            st = os.fstat(fd)
            self._inodes[(st.st_dev, st.st_ino)] = gpu
        self.topology_root = write_topology(root / "topology" / "nodes", gpus, cpu_nodes)
        self._lock = threading.RLock()
        # guarded by _lock:
        self._files: dict[tuple[int, int], DrmFile] = {}  # (gpu_id, file position mark) -> file
        self._next_offset = {g.gpu_id: DRM_FILE_PAGE_OFFSET_START for g in gpus}
        self._dmabufs: dict[tuple[int, int], Bo] = {}  # memfd (dev, ino) -> BO
        self.processes: dict[int, KfdProcess] = {}
        self._kfd_owner: dict[tuple[int, int], int] = {}  # kfd open file mark -> opener pid
        self.calls: list[tuple[int, str, dict[str, Any]]] = []
        self.refusals: list[tuple[str, str]] = []

    # --- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the fake's own fds (node files, dma-buf memfds)."""
        for fd in self._node_fds.values():
            os.close(fd)
        self._node_fds = {}
        for bo in {id(b): b for b in self._dmabufs.values()}.values():
            if bo.dmabuf is not None:
                os.close(bo.dmabuf)
                bo.dmabuf = None
        self._dmabufs = {}

    def ioctl(self, fd: int, request: int, arg: Any, mutate: bool = True) -> int:
        """fcntl.ioctl's signature: answer ``request`` on ``fd`` as the kernel would."""
        name = REQUESTS.get(request)
        with self._lock:
            try:
                if name is None:
                    raise Refused(errno.ENOTTY, f"request {request:#x} {ioc_fields(request)} is no "
                                  "ioctl of the uapi headers (wrong type, nr, direction or size)")
                size = ioc_fields(request)[3]
                if ctypes.sizeof(arg) < size:
                    raise Refused(errno.EFAULT, f"{name}: the argument is {ctypes.sizeof(arg)} bytes, the "
                                  f"request says {size}: the kernel reads past it")
                raw = bytearray(ctypes.string_at(ctypes.addressof(arg), size))
                handler = getattr(self, "_" + name.lower())
                result = handler(fd, raw)
                if request >> 30 & _READ:
                    ctypes.memmove(ctypes.addressof(arg), bytes(raw), size)
                return result or 0
            except Refused as err:
                self.refusals.append((name or hex(request), err.reason))
                raise

    def _record(self, name: str, **details: Any) -> None:
        self.calls.append((os.getpid(), name, details))

    def names(self) -> list[str]:
        """The recorded call names, in order."""
        return [name for _, name, _ in self.calls]

    def _what(self, fd: int) -> Any:
        try:
            st = os.fstat(fd)
        except OSError as err:
            raise Refused(errno.EBADF, f"fd {fd} is not open") from err
        return self._inodes.get((st.st_dev, st.st_ino)) or self._dmabufs.get((st.st_dev, st.st_ino))

    def _drm_file(self, fd: int) -> DrmFile:
        """The DRM file behind ``fd``: one per open file description (marked by its position)."""
        gpu = self._what(fd)
        if not isinstance(gpu, GpuSpec):
            raise Refused(errno.ENOTTY, f"fd {fd} is not a render node")
        mark = os.lseek(fd, 0, os.SEEK_CUR)
        if mark == 0:  # a new open: give it the next mark (dup()ed fds share the position)
            mark = len(self._files) + 1
            os.lseek(fd, mark, os.SEEK_SET)
            self._files[(gpu.gpu_id, mark)] = DrmFile(mark, gpu)
        return self._files[(gpu.gpu_id, mark)]

    def _read_user(self, addr: int, size: int, what: str) -> bytes:
        """copy_from_user: EFAULT for memory the caller does not have."""
        if size == 0:
            return b""
        if addr == 0:
            raise Refused(errno.EFAULT, f"{what}: NULL pointer")
        try:
            with open("/proc/self/mem", "rb", buffering=0) as mem:
                data = os.pread(mem.fileno(), size, addr)
        except OSError as err:
            raise Refused(errno.EFAULT, f"{what}: {size} bytes at {addr:#x} are not mapped") from err
        if len(data) != size:
            raise Refused(errno.EFAULT, f"{what}: only {len(data)} of {size} bytes at {addr:#x}")
        return data

    def _write_user(self, addr: int, data: bytes, what: str) -> None:
        try:
            with open("/proc/self/mem", "r+b", buffering=0) as mem:
                os.pwrite(mem.fileno(), data, addr)
        except OSError as err:
            raise Refused(errno.EFAULT, f"{what}: cannot write {len(data)} bytes at {addr:#x}") from err

    # device memory: the node file at the BO's mmap offset
    def _mem_read(self, bo: Bo, offset: int, size: int) -> bytes:
        if bo.userptr is not None:
            return self._read_user(bo.userptr + offset, size, "userptr BO")
        assert bo.mmap_offset is not None
        return os.pread(self._node_fds[bo.gpu.gpu_id], size, bo.mmap_offset + offset).ljust(size, b"\0")

    def _mem_write(self, bo: Bo, offset: int, data: bytes) -> None:
        if bo.userptr is not None:
            self._write_user(bo.userptr + offset, data, "userptr BO")
            return
        assert bo.mmap_offset is not None
        os.pwrite(self._node_fds[bo.gpu.gpu_id], data, bo.mmap_offset + offset)
        bo.written += len(data)

    def bo_bytes(self, bo: Bo) -> bytes:
        """A BO's device memory, for checks."""
        return self._mem_read(bo, 0, bo.size)

    def _new_bo(self, gpu: GpuSpec, size: int, domains: int, flags: int = 0, kfd_flags: int = 0) -> Bo:
        bo = Bo(gpu, size, domains, flags, kfd_flags=kfd_flags)
        bo.mmap_offset = self._next_offset[gpu.gpu_id]
        self._next_offset[gpu.gpu_id] += -(-size // PAGE) * PAGE
        os.ftruncate(self._node_fds[gpu.gpu_id], max(os.fstat(self._node_fds[gpu.gpu_id]).st_size,
                                                     bo.mmap_offset + size))
        return bo

    def _export(self, bo: Bo) -> int:
        """A new fd of the BO's dma-buf (drm_gem_prime_handle_to_fd reuses obj->dma_buf)."""
        if bo.dmabuf is None:
            bo.dmabuf = os.memfd_create(f"fake-dmabuf-{bo.gpu.gpu_id:04x}", os.MFD_CLOEXEC)
            os.ftruncate(bo.dmabuf, bo.size)
            st = os.fstat(bo.dmabuf)
            self._dmabufs[(st.st_dev, st.st_ino)] = bo
        return os.dup(bo.dmabuf)

    def _map(self, file: DrmFile, bo: Bo, va: int, size: int, offset: int, why: str) -> None:
        """amdgpu_vm_bo_map's checks (amdgpu_vm_verify_parameters, the overlap test)."""
        if va % PAGE or offset % PAGE or size % PAGE or size == 0:
            raise Refused(errno.EINVAL, f"{why}: va {va:#x}, offset {offset:#x}, size {size:#x} must be "
                          "non-zero page multiples")
        if offset + size > bo.size:
            raise Refused(errno.EINVAL, f"{why}: offset {offset:#x} + size {size:#x} beyond the BO's {bo.size:#x}")
        if va < VA_RESERVED_BOTTOM or va + size > VA_MAX:
            raise Refused(errno.EINVAL, f"{why}: va {va:#x}+{size:#x} outside the VM")
        for start, length, _, _ in file.vm:
            if va < start + length and start < va + size:
                raise Refused(errno.EINVAL, f"{why}: va {va:#x}-{va + size:#x} conflicts with the mapping "
                              f"{start:#x}-{start + length:#x}")
        file.vm.append((va, size, bo, offset))

    # --- KFD (kfd_chardev.c) ----------------------------------------------------------

    def _kfd_process(self, fd: int) -> KfdProcess:
        """The caller's KFD process; the fd must be /dev/kfd, used by the process that opened it."""
        if self._what(fd) != "kfd":
            raise Refused(errno.ENOTTY, f"fd {fd} is not /dev/kfd")
        mark = os.lseek(fd, 0, os.SEEK_CUR)
        if mark == 0:
            mark = len(self._kfd_owner) + 1
            os.lseek(fd, mark, os.SEEK_SET)
            self._kfd_owner[(0, mark)] = os.getpid()
        if self._kfd_owner[(0, mark)] != os.getpid():
            # kfd_ioctl: "if (process->lead_thread != current->group_leader) -EBADF"
            raise Refused(errno.EBADF, "/dev/kfd used by a process other than the one that opened it")
        pid = os.getpid()
        if pid not in self.processes:
            self.processes[pid] = KfdProcess(pid, {g: g for g in sorted(self.gpus, key=lambda g: self.gpus[g].node_id)})
        return self.processes[pid]

    def _amdkfd_ioc_get_version(self, fd: int, raw: bytearray) -> None:
        self._kfd_process(fd)
        KFD_GET_VERSION.pack_into(raw, 0, *self.kfd_version)
        self._record("GET_VERSION")

    def _amdkfd_ioc_criu_op(self, fd: int, raw: bytearray) -> None:
        devices, bos, priv, priv_size, n_dev, n_bos, n_obj, pid, op = KFD_CRIU_ARGS.unpack_from(raw)
        if op == KFD_CRIU_OP_RESTORE:
            self._criu_restore(self._kfd_process(fd), devices, bos, priv, priv_size, n_dev, n_bos, n_obj)
            KFD_CRIU_ARGS.pack_into(raw, 0, devices, bos, priv, priv_size, n_dev, n_bos, n_obj, pid, op)
        elif op == KFD_CRIU_OP_RESUME:
            self._kfd_process(fd)
            self._criu_resume(pid)
        else:
            raise Refused(errno.EINVAL, f"CRIU op {op} is not modelled")

    def _criu_restore(self, proc: KfdProcess, devices_ptr: int, bos_ptr: int, priv_ptr: int,
                      priv_size: int, n_dev: int, n_bos: int, n_obj: int) -> None:
        # criu_restore(): every pointer and count present
        if not (bos_ptr and devices_ptr and priv_ptr and priv_size and n_dev and n_bos):
            raise Refused(errno.EINVAL, "CRIU RESTORE needs devices, bos, priv_data and their counts "
                          f"(num_devices {n_dev}, num_bos {n_bos}, priv_data_size {priv_size})")
        priv = self._read_user(priv_ptr, priv_size, "priv_data")
        # criu_restore_process
        if priv_size < KFD_PROCESS_PRIV.size:
            raise Refused(errno.EINVAL, "priv_data shorter than the process section")
        version, _xnack = KFD_PROCESS_PRIV.unpack_from(priv, 0)
        if version != KFD_CRIU_PRIV_VERSION:
            raise Refused(errno.EINVAL, f"priv_data version {version}, expected {KFD_CRIU_PRIV_VERSION}")
        pos = KFD_PROCESS_PRIV.size
        # criu_restore_devices
        if n_dev != len(proc.user_ids):
            raise Refused(errno.EINVAL, f"num_devices {n_dev}, the process has {len(proc.user_ids)} GPUs (n_pdds)")
        if pos + n_dev * KFD_DEVICE_PRIV.size > priv_size:
            raise Refused(errno.EINVAL, "priv_data too short for the device section")
        buckets = self._read_user(devices_ptr, n_dev * KFD_DEVICE_BUCKET.size, "devices")
        for i in range(n_dev):
            user_id, actual_id, drm_fd, _pad = KFD_DEVICE_BUCKET.unpack_from(buckets, i * KFD_DEVICE_BUCKET.size)
            if not user_id:
                raise Refused(errno.EINVAL, f"device bucket {i}: user_gpu_id 0")
            # kfd_device_by_id(actual_gpu_id), then the process's pdd of that device
            pdd = actual_id if actual_id in proc.user_ids else None
            if pdd is None:
                raise Refused(errno.EINVAL, f"device bucket {i}: no GPU {actual_id:#x} in this process")
            proc.user_ids[pdd] = user_id
            try:
                file = self._drm_file(drm_fd)
            except Refused as err:
                raise Refused(errno.EINVAL, f"device bucket {i}: drm_fd {drm_fd}: {err.reason}") from err
            if file.gpu.gpu_id != pdd:  # modelled: a VM on another GPU's file is wrong
                raise Refused(errno.EINVAL, f"device bucket {i}: drm_fd {drm_fd} is a render node of GPU "
                              f"{file.gpu.gpu_id:#x}, not of {pdd:#x}")
            if pdd in proc.drm_files:
                raise Refused(errno.EINVAL, f"device bucket {i}: GPU {pdd:#x} already has its DRM file")
            if file.kfd_vm:
                raise Refused(errno.EINVAL, f"device bucket {i}: drm_fd {drm_fd}'s VM already belongs to KFD")
            file.kfd_vm = True
            proc.drm_files[pdd] = file
        pos += n_dev * KFD_DEVICE_PRIV.size
        # criu_restore_bos
        if pos + n_bos * KFD_BO_PRIV.size > priv_size:
            raise Refused(errno.EINVAL, f"priv_data ({priv_size} bytes) too short for {n_bos} BO records")
        raw_bos = bytearray(self._read_user(bos_ptr, n_bos * KFD_BO_BUCKET.size, "bos"))
        by_user = {u: a for a, u in proc.user_ids.items()}
        for i in range(n_bos):
            addr, size, _off, _roff, gpu_id, flags, _fd, _pad = KFD_BO_BUCKET.unpack_from(raw_bos, i * KFD_BO_BUCKET.size)
            user_addr, _idr, *mapped = KFD_BO_PRIV.unpack_from(priv, pos + i * KFD_BO_PRIV.size)
            actual = by_user.get(gpu_id)
            if actual is None or actual not in proc.drm_files:
                raise Refused(errno.ENODEV, f"BO {i}: gpu_id {gpu_id:#x} names no restored device")
            gpu = self.gpus[actual]
            restored_offset, dmabuf_fd = 0, KFD_INVALID_FD
            if flags & ALLOC_DOORBELL:
                if size != self.doorbell_slice:
                    raise Refused(errno.EINVAL, f"BO {i}: doorbell of {size} bytes, the slice is {self.doorbell_slice}")
                restored_offset = KFD_MMAP_TYPE_DOORBELL | kfd_mmap_gpu_id(actual)
                bo = Bo(gpu, size, 0, kfd_flags=flags)
            elif flags & ALLOC_MMIO:
                if size != PAGE:
                    raise Refused(errno.EINVAL, f"BO {i}: MMIO remap of {size} bytes, not one page")
                restored_offset = KFD_MMAP_TYPE_MMIO | kfd_mmap_gpu_id(actual)
                bo = Bo(gpu, size, 0, kfd_flags=flags)
            elif flags & ALLOC_USERPTR:
                bo = Bo(gpu, size, DOMAIN_GTT, kfd_flags=flags, userptr=user_addr)
            elif flags & (ALLOC_VRAM | ALLOC_GTT):
                bo = self._new_bo(gpu, size, DOMAIN_VRAM if flags & ALLOC_VRAM else DOMAIN_GTT, kfd_flags=flags)
                restored_offset = bo.mmap_offset
                bo.allowed.add(proc.drm_files[actual].fid)  # drm_vma_node_allow(.., drm_priv)
                dmabuf_fd = self._export(bo)
            else:
                raise Refused(errno.EINVAL, f"BO {i}: alloc_flags {flags:#x} name no memory type")
            for peer in mapped:  # criu_restore_bo: map to every GPU of mapped_gpuids
                if not peer:
                    break
                peer_actual = by_user.get(peer)
                if peer_actual is None:
                    raise Refused(errno.EINVAL, f"BO {i}: mapped_gpuids names {peer:#x}, no device")
                if flags & (ALLOC_VRAM | ALLOC_GTT | ALLOC_USERPTR):
                    self._map(proc.drm_files[peer_actual], bo, addr, -(-size // PAGE) * PAGE, 0, f"BO {i}")
            proc.bos.append(bo)
            KFD_BO_BUCKET.pack_into(raw_bos, i * KFD_BO_BUCKET.size, addr, size, _off, restored_offset,
                                    gpu_id, flags, dmabuf_fd, 0)
        pos += n_bos * KFD_BO_PRIV.size
        # criu_restore_objects: opaque here; the section must exist iff objects do
        if (n_obj == 0) != (pos == priv_size):
            raise Refused(errno.EINVAL, f"{n_obj} objects but {priv_size - pos} bytes of object data")
        self._write_user(bos_ptr, bytes(raw_bos), "bos")
        proc.restored = True
        self._record("CRIU_RESTORE", devices=n_dev, bos=n_bos, objects=n_obj)

    def _criu_resume(self, pid: int) -> None:
        proc = self.processes.get(pid)
        if proc is None or not proc.restored:
            raise Refused(errno.ESRCH, f"pid {pid} has no restored KFD process")
        proc.resumed = True
        self._record("CRIU_RESUME", pid=pid,
                     unfilled=[i for i, b in enumerate(proc.bos)
                               if b.kfd_flags & (ALLOC_VRAM | ALLOC_GTT) and b.written < b.size])

    # --- DRM core (drm_gem.c, drm_prime.c) --------------------------------------------

    def _handle(self, file: DrmFile, handle: int, err: int = errno.ENOENT) -> Bo:
        bo = file.handles.get(handle)
        if bo is None:
            raise Refused(err, f"DRM file {file.fid} of GPU {file.gpu.gpu_id:#x} has no handle {handle}")
        return bo

    def _gem_close(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        handle, _pad = DRM_GEM_CLOSE.unpack_from(raw)
        self._handle(file, handle, errno.EINVAL)  # drm_gem_handle_delete: -EINVAL
        bo = file.handles.pop(handle)
        file.vm = [m for m in file.vm if m[2] is not bo]  # the file's bo_va goes with its last handle
        self._record("GEM_CLOSE", file=file.fid, handle=handle)

    def _prime_handle_to_fd(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        handle, flags, _ = DRM_PRIME_HANDLE.unpack_from(raw)
        if flags & ~(DRM_CLOEXEC | DRM_RDWR):
            raise Refused(errno.EINVAL, f"PRIME_HANDLE_TO_FD flags {flags:#x}")
        bo = self._handle(file, handle)
        out = self._export(bo)
        DRM_PRIME_HANDLE.pack_into(raw, 0, handle, flags, out)
        self._record("PRIME_HANDLE_TO_FD", file=file.fid, handle=handle)

    def _prime_fd_to_handle(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        _, flags, dmabuf_fd = DRM_PRIME_HANDLE.unpack_from(raw)
        bo = self._what(dmabuf_fd)
        if not isinstance(bo, Bo):
            raise Refused(errno.EINVAL, f"fd {dmabuf_fd} is not a dma-buf")  # dma_buf_get
        if bo.gpu is not file.gpu:
            raise Refused(errno.EINVAL, "cross-device dma-buf import is not modelled")
        handle = file.handle_of(bo)  # drm_prime_lookup_buf_handle: one handle per file
        if handle is None:
            handle = file.new_handle(bo)
        if bo.mmap_offset is not None:
            bo.allowed.add(file.fid)
        DRM_PRIME_HANDLE.pack_into(raw, 0, handle, flags, dmabuf_fd)
        self._record("PRIME_FD_TO_HANDLE", file=file.fid, handle=handle)

    def _gem_change_handle(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        handle, new = DRM_GEM_CHANGE_HANDLE.unpack_from(raw)
        bo = self._handle(file, handle)
        if handle != new:
            if new == 0 or new in file.handles:  # idr_alloc(new, new + 1): -ENOSPC when taken
                raise Refused(errno.ENOSPC, f"handle {new} is taken in DRM file {file.fid}")
            file.handles[new] = file.handles.pop(handle)
        self._record("GEM_CHANGE_HANDLE", file=file.fid, handle=handle, new_handle=new, bo_size=bo.size)

    # --- amdgpu (amdgpu_gem.c, amdgpu_vm.c, amdgpu_cs.c, amdgpu_kms.c) ----------------------

    def _amdgpu_info(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        ptr, size, query = INFO.unpack_from(raw)
        if query != AMDGPU_INFO_DEV_INFO:
            raise Refused(errno.EINVAL, f"AMDGPU_INFO query {query:#x} is not modelled")
        out = bytearray(INFO_DEVICE_BYTES)
        values = {"family": file.gpu.family, "virtual_address_offset": VA_RESERVED_BOTTOM,
                  "virtual_address_max": VA_MAX, "virtual_address_alignment": PAGE}
        for name, (offset, fmt) in INFO_DEVICE_FIELDS.items():
            struct.pack_into(fmt, out, offset, values[name])
        self._write_user(ptr, bytes(out[:min(size, INFO_DEVICE_BYTES)]), "AMDGPU_INFO return_pointer")
        self._record("INFO", file=file.fid)

    def _amdgpu_gem_create(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        size, alignment, domains, flags = GEM_CREATE.unpack_from(raw)
        if flags & ~CREATE_FLAGS_KNOWN:
            raise Refused(errno.EINVAL, f"GEM_CREATE flags {flags:#x}")
        if domains & ~DOMAIN_MASK or not domains:
            raise Refused(errno.EINVAL, f"GEM_CREATE domains {domains:#x}")
        if size == 0:
            raise Refused(errno.EINVAL, "GEM_CREATE of 0 bytes")
        bo = self._new_bo(file.gpu, size, domains, flags)
        bo.allowed.add(file.fid)
        handle = file.new_handle(bo)
        raw[:] = bytes(len(raw))
        struct.pack_into("<I", raw, 0, handle)
        self._record("GEM_CREATE", file=file.fid, handle=handle, size=size, domains=domains,
                     alignment=alignment)

    def _amdgpu_gem_mmap(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        (handle, _pad) = GEM_MMAP.unpack_from(raw)
        bo = self._handle(file, handle)
        if bo.userptr is not None or bo.flags & CREATE_NO_CPU_ACCESS:  # amdgpu_mode_dumb_mmap
            raise Refused(errno.EPERM, f"handle {handle} cannot be mmapped (userptr or NO_CPU_ACCESS)")
        struct.pack_into("<Q", raw, 0, bo.mmap_offset)
        self._record("GEM_MMAP", file=file.fid, handle=handle)

    def _amdgpu_gem_userptr(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        addr, size, flags, _ = USERPTR.unpack_from(raw)
        if (addr | size) % PAGE:
            raise Refused(errno.EINVAL, f"USERPTR {addr:#x}+{size:#x} is not page-aligned")
        if flags & ~(USERPTR_READONLY | USERPTR_ANONONLY | USERPTR_VALIDATE | USERPTR_REGISTER):
            raise Refused(errno.EINVAL, f"USERPTR flags {flags:#x}")
        if not flags & USERPTR_READONLY and not flags & USERPTR_REGISTER:
            raise Refused(errno.EACCES, "a writable USERPTR needs REGISTER (an MMU notifier)")
        self._read_user(addr, min(size, PAGE), "USERPTR memory")
        bo = Bo(file.gpu, size, DOMAIN_GTT, userptr=addr)
        handle = file.new_handle(bo)
        USERPTR.pack_into(raw, 0, addr, size, flags, handle)
        self._record("GEM_USERPTR", file=file.fid, handle=handle, size=size)

    def _amdgpu_gem_va(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        handle, _pad, op, flags, va, offset, size = GEM_VA.unpack_from(raw)
        if flags & ~VM_PAGE_VALID:
            raise Refused(errno.EINVAL, f"GEM_VA flags {flags:#x}")
        bo = self._handle(file, handle)
        if op == VA_OP_MAP:
            self._map(file, bo, va, size, offset, f"GEM_VA MAP of handle {handle}")
        elif op == VA_OP_UNMAP:
            hit = [m for m in file.vm if m[0] == va and m[2] is bo]
            if not hit:
                raise Refused(errno.ENOENT, f"GEM_VA UNMAP: handle {handle} is not mapped at {va:#x}")
            file.vm.remove(hit[0])
        else:
            raise Refused(errno.EINVAL, f"GEM_VA operation {op}")
        self._record("GEM_VA", file=file.fid, handle=handle, op=op, va=va, size=size, offset=offset,
                     flags=flags)

    def _amdgpu_ctx(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        op, _flags, ctx_id, priority = CTX.unpack_from(raw)
        if op == CTX_OP_ALLOC:
            if not -1023 <= priority <= 1023:
                raise Refused(errno.EINVAL, f"CTX priority {priority}")
            ctx_id = 1
            while ctx_id in file.contexts:
                ctx_id += 1
            file.contexts[ctx_id] = 1
            raw[:] = bytes(len(raw))
            struct.pack_into("<I", raw, 0, ctx_id)
        elif op == CTX_OP_FREE:
            if file.contexts.pop(ctx_id, None) is None:
                raise Refused(errno.EINVAL, f"CTX FREE of unknown context {ctx_id}")
        else:
            raise Refused(errno.EINVAL, f"CTX op {op}")
        self._record("CTX", file=file.fid, op=op, ctx=ctx_id)

    def _amdgpu_cs(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        ctx_id, list_handle, n_chunks, _flags, chunks_ptr = CS_IN.unpack_from(raw)
        if ctx_id not in file.contexts:
            raise Refused(errno.EINVAL, f"CS on unknown context {ctx_id}")
        ptrs = struct.unpack(f"<{n_chunks}Q", self._read_user(chunks_ptr, 8 * n_chunks, "CS chunk array"))
        ibs, listed = [], set()
        for ptr in ptrs:
            chunk_id, length_dw, data_ptr = CS_CHUNK.unpack(self._read_user(ptr, CS_CHUNK.size, "CS chunk"))
            data = self._read_user(data_ptr, length_dw * 4, "CS chunk data")
            if chunk_id == CHUNK_IB:
                _p, _f, va, nbytes, ip, _inst, ring = CS_CHUNK_IB.unpack_from(data)
                if ip != HW_IP_DMA or ring != 0:
                    raise Refused(errno.EINVAL, f"IB for ip {ip} ring {ring}: only SDMA ring 0 is modelled")
                ibs.append((va, nbytes))
            elif chunk_id == CHUNK_BO_HANDLES:
                _op, _lh, count, info_size, info_ptr = BO_LIST_IN.unpack_from(data)
                if info_size < BO_LIST_ENTRY.size:
                    raise Refused(errno.EINVAL, f"BO list entry size {info_size}")
                entries = self._read_user(info_ptr, count * info_size, "BO list")
                for i in range(count):
                    handle, _prio = BO_LIST_ENTRY.unpack_from(entries, i * info_size)
                    listed.add(id(self._handle(file, handle)))
            else:
                raise Refused(errno.EINVAL, f"CS chunk id {chunk_id} is not modelled")
        seq = file.contexts[ctx_id]
        file.contexts[ctx_id] = seq + 1
        for va, nbytes in ibs:
            hit = file.lookup(va, nbytes)
            if hit is None:  # amdgpu_cs_find_mapping
                raise Refused(errno.EINVAL, f"IB at {va:#x}+{nbytes:#x} is not mapped in DRM file {file.fid}")
            if not self._run_sdma(file, self._mem_read(hit[0], hit[1], nbytes), listed):
                file.faulted.add((ctx_id, seq))
        raw[:] = bytes(len(raw))
        struct.pack_into("<Q", raw, 0, seq)
        self._record("CS", file=file.fid, ctx=ctx_id, seq=seq)

    def _run_sdma(self, file: DrmFile, ib: bytes, listed: set[int]) -> bool:
        """Execute COPY LINEAR and NOP packets; False when the job faults."""
        words = struct.unpack(f"<{len(ib) // 4}I", ib)
        i = 0
        while i < len(words):
            op, sub = words[i] & 0xFF, (words[i] >> 8) & 0xFF
            if op == 0:  # NOP: header count field says how many dwords follow
                i += 1 + ((words[i] >> 16) & 0x3FFF)
                continue
            if (op, sub) != (1, 0) or i + 7 > len(words):
                return False
            count, _param, slo, shi, dlo, dhi = words[i + 1:i + 7]
            nbytes = count + 1 if file.gpu.family >= AMDGPU_FAMILY_AI else count
            src, dst = file.lookup(slo | shi << 32, nbytes), file.lookup(dlo | dhi << 32, nbytes)
            if src is None or dst is None or id(src[0]) not in listed or id(dst[0]) not in listed:
                return False
            self._mem_write(dst[0], dst[1], self._mem_read(src[0], src[1], nbytes))
            i += 7
        return True

    def _amdgpu_wait_cs(self, fd: int, raw: bytearray) -> None:
        file = self._drm_file(fd)
        seq, _timeout, ip, _inst, ring, ctx_id = WAIT_CS.unpack_from(raw)
        if ctx_id not in file.contexts or seq >= file.contexts[ctx_id]:
            raise Refused(errno.EINVAL, f"WAIT_CS for sequence {seq} never submitted on context {ctx_id}")
        if (ctx_id, seq) in file.faulted:
            raise Refused(errno.ECANCELED, f"SDMA job {seq} faulted (an address outside the file's VM "
                          "or a BO missing from the submission's list)")
        raw[:] = bytes(len(raw))  # status 0: done
        self._record("WAIT_CS", file=file.fid, seq=seq)

    def _dma_buf_ioctl_sync(self, fd: int, raw: bytearray) -> None:
        bo = self._what(fd)
        if not isinstance(bo, Bo):
            raise Refused(errno.ENOTTY, f"fd {fd} is not a dma-buf")
        (flags,) = DMA_BUF_SYNC.unpack_from(raw)
        if flags & ~(DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END) or not flags & DMA_BUF_SYNC_RW:
            raise Refused(errno.EINVAL, f"DMA_BUF_IOCTL_SYNC flags {flags:#x}")
        assert bo.dmabuf is not None
        if flags & DMA_BUF_SYNC_END:
            if flags & 2:  # WRITE: the CPU's writes reach device memory now
                self._mem_write(bo, 0, os.pread(bo.dmabuf, bo.size, 0))
        else:
            os.pwrite(bo.dmabuf, self._mem_read(bo, 0, bo.size), 0)
        self._record("DMA_BUF_SYNC", flags=flags)

    # --- checks for tests -------------------------------------------------------------

    def file_of(self, fd: int) -> DrmFile:
        """The DRM file behind a render fd (for assertions)."""
        with self._lock:
            return self._drm_file(fd)

    def can_mmap(self, fd: int, offset: int) -> bool:
        """Whether mmap(fd, offset) would map a BO: drm_gem_mmap's drm_vma_node_is_allowed."""
        with self._lock:
            file = self._drm_file(fd)
            return any(bo.mmap_offset == offset and file.fid in bo.allowed
                       for bo in self._all_bos(file.gpu))

    def _all_bos(self, gpu: GpuSpec) -> list[Bo]:
        seen: dict[int, Bo] = {}
        for f in self._files.values():
            for bo in f.handles.values():
                seen[id(bo)] = bo
        for proc in self.processes.values():
            for bo in proc.bos:
                seen[id(bo)] = bo
        return [bo for bo in seen.values() if bo.gpu is gpu]


def write_topology(root: Path, gpus: list[GpuSpec], cpu_nodes: int) -> Path:
    """A sysfs KFD topology for the fake machine: CPU nodes, then the GPUs at their node ids."""
    props = {"simd_count": 416, "mem_banks_count": 1, "io_links_count": 1, "max_waves_per_simd": 8,
             "lds_size_in_kb": 64, "num_gws": 64, "wave_front_size": 64, "array_count": 8,
             "simd_arrays_per_engine": 1, "cu_per_simd_array": 13, "simd_per_cu": 4,
             "max_slots_scratch_cu": 32, "vendor_id": 0x1002, "device_id": 0x740F,
             "num_sdma_engines": 2, "num_sdma_xgmi_engines": 3, "num_sdma_queues_per_engine": 8,
             "num_cp_queues": 24, "fw_version": 78, "capability": 0x2A3E0280, "sdma_fw_version": 8}
    for node_id in range(cpu_nodes):
        d = root / str(node_id)
        d.mkdir(parents=True)
        (d / "gpu_id").write_text("0\n")
        (d / "properties").write_text("cpu_cores_count 64\nsimd_count 0\n")
    for gpu in gpus:
        d = root / str(gpu.node_id)
        d.mkdir(parents=True)
        (d / "gpu_id").write_text(f"{gpu.gpu_id}\n")
        lines = [f"{k} {v}" for k, v in props.items()] + [f"drm_render_minor {gpu.minor}"]
        (d / "properties").write_text("\n".join(lines) + "\n")
        bank = d / "mem_banks" / "0"
        bank.mkdir(parents=True)
        (bank / "properties").write_text(f"heap_type 2\nsize_in_bytes {gpu.vram_bytes}\n")
        link = d / "io_links" / "0"
        link.mkdir(parents=True)
        (link / "properties").write_text("type 2\nnode_to 0\n")
    return root


def kfd_priv_data(bo_gpu_ids: list[int], n_devices: int, idr_handles: list[int] | None = None,
                  objects: bytes = b"") -> bytes:
    """priv_data as KFD's CHECKPOINT writes it (kfd_priv.h v1): process, devices, BOs, objects."""
    out = KFD_PROCESS_PRIV.pack(KFD_CRIU_PRIV_VERSION, 0) + KFD_DEVICE_PRIV.pack(0) * n_devices
    for i, gpu_id in enumerate(bo_gpu_ids):
        mapped = [gpu_id] + [0] * (MAX_GPU_INSTANCE - 1)
        out += KFD_BO_PRIV.pack(0, (idr_handles or list(range(1, len(bo_gpu_ids) + 1)))[i], *mapped)
    return out + objects
