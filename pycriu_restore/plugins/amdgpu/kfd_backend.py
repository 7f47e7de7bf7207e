"""KfdBackend: the GpuBackend of a real AMD GPU, over /dev/kfd and the DRM render nodes.

Which process does what (backend.py has the protocol)::

    restored task                              orchestrator
    -----------------------------------------  ---------------------------------------------
    map_gpus     image topology -> local GPUs
    open_device  /dev/kfd, version >= 1.8
    restore_bos  open renderD<minor> per GPU
                 (KFD builds the task's VM on
                 it; VRAM VMAs map through dups),
                 CRIU_OP(RESTORE) -> dma-buf fds
    restore_render_node  GEM ops in those files
    vma_target   a dup of one, at a BO's offset
    kfd_vma_target  None (doorbell/MMIO VMAs
                 reopen /dev/kfd by path)
    close_task_files  close the render fds
                 (KFD holds its own reference)
                 ── dma-bufs over the channel ──►  prepare_fill  a render node of our own
                                                   fill          SDMA (or CPU) copy, GIL free
                                                   resume        CRIU_OP(RESUME, pid)

The SDMA fill, in the process that copies (CRIU's sdma_copy_bo, §5.7), per local GPU::

    per filling thread, kept until close() ("lane"):
      staging (anonymous, page-aligned) ══ GEM_USERPTR ══► src handle ─┐
      IB (GTT BO, CPU-mapped) <- COPY LINEAR packets (sdma.py)         ├ mapped in this
      a submission context                                             │ render fd's VM at
    per BO, from its first chunk until release_bo():                   │ addresses from
      dma-buf fd ══ PRIME_FD_TO_HANDLE ══► dst handle, mapped whole ───┘ GpuVaAllocator
    per chunk (fill), in staging-sized pieces:
      pread pages image -> staging, write the IB, CS on the SDMA ring, WAIT_CS

The copy uses a render fd opened by the copying process itself, never the task's fd that
KFD attached its VM to: that VM holds the task's BOs at their original addresses, and our
staging mappings must not land among them.

Nothing here can run without an AMD GPU; tests/test_amdgpu_abi.py checks every struct
and number against the C headers and tests/test_amdgpu_sdma.py the pure parts.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pycriu_restore.images.errors import ImageError
from pycriu_restore.plugins.amdgpu import dmabuf, drm, kfd, renderd, sdma, topology
from pycriu_restore.plugins.amdgpu.backend import LocalGpu, RestoredBo, RestoredDrmBo, VmaRemap
from pycriu_restore.plugins.amdgpu.images import gpu_entries
from pycriu_restore.plugins.amdgpu.ioctl import (DeviceUnavailable, GpuDeviceError,
                                                 GpuIoctlError, open_device)

if TYPE_CHECKING:
    from pycriu_restore.images.proto.amdgpu_pb2 import CriuKfd

PAGE_BYTES = mmap.PAGESIZE
# Staging buffer per filling thread (CRIU: the largest BO, or KFD_MAX_BUFFER_SIZE if set).
DEFAULT_STAGING_BYTES = 64 << 20

# BOs with contents in the pages image (CRIU restore_bo_data), and BOs whose mmap offset
# changes on restore, so that their VMAs need UPDATE_VMA_MAP.
FILLED_BO_FLAGS = kfd.KFD_IOC_ALLOC_MEM_FLAGS_VRAM | kfd.KFD_IOC_ALLOC_MEM_FLAGS_GTT
REMAPPED_BO_FLAGS = (FILLED_BO_FLAGS | kfd.KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP
                     | kfd.KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL)

# libdrm's amdgpu_create_bo_from_user_mem: only private anonymous memory, pinned now.
_USERPTR_FLAGS = (drm.AMDGPU_GEM_USERPTR_ANONONLY | drm.AMDGPU_GEM_USERPTR_REGISTER
                  | drm.AMDGPU_GEM_USERPTR_VALIDATE)
# libdrm's amdgpu_bo_va_op: every mapping readable, writable and executable.
_VM_PAGE_FLAGS = (drm.AMDGPU_VM_PAGE_READABLE | drm.AMDGPU_VM_PAGE_WRITEABLE
                  | drm.AMDGPU_VM_PAGE_EXECUTABLE)
_SDMA_RING = 0  # CRIU submits to ring 0 of the DMA IP; other rings are a possible speed-up


def round_up(value: int, alignment: int) -> int:
    """``value`` rounded up to a multiple of ``alignment`` (a power of two or not)."""
    return -(-value // alignment) * alignment


class _Undo:
    """Release steps registered as resources are acquired; run in reverse on exit.

    A failing release never hides the error that made us unwind (CRIU's sdma_copy_bo
    overwrote it: research §5.12 point 5): it is added to that error as a note. After a
    success, the first failing release is raised once every release has been tried.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def push(self, release: Callable[..., Any], *args: Any) -> None:
        self._steps.append((release, args))

    def pop_all(self) -> _Undo:
        """Move the registered releases to a new _Undo (the resources outlive this block)."""
        kept = _Undo()
        kept._steps, self._steps = self._steps, []
        return kept

    def __enter__(self) -> _Undo:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        first: Exception | None = None
        while self._steps:
            release, args = self._steps.pop()
            try:
                release(*args)
            except Exception as err:  # noqa: BLE001 - every release must still run
                if exc is not None:
                    exc.add_note(f"while releasing after this error: {err}")
                elif first is None:
                    first = err
        if first is not None:
            raise first


class GpuVaAllocator:
    """First-fit allocator of GPU virtual addresses in one DRM file's VM.

    libdrm keeps the same bookkeeping (amdgpu_va_range_alloc) in user space: the kernel
    maps what GEM_VA is given, and the caller must pick free, aligned addresses. Several
    fill threads may share one render node, hence the lock.
    """

    def __init__(self, start: int, end: int, alignment: int) -> None:
        if alignment <= 0 or start >= end:
            raise ValueError(f"GpuVaAllocator: empty range {start:#x}..{end:#x} "
                             f"or alignment {alignment}")
        self.alignment = alignment
        first = round_up(start, alignment)
        # guarded by _lock: free holes [start, end), sorted, never adjacent
        self._holes: list[tuple[int, int]] = [(first, end)] if first < end else []
        self._lock = threading.Lock()

    def alloc(self, size_bytes: int) -> int:
        """A free, aligned range of ``size_bytes`` (rounded up to the alignment)."""
        size = round_up(size_bytes, self.alignment)
        with self._lock:
            for i, (lo, hi) in enumerate(self._holes):
                if hi - lo >= size:
                    if hi - lo == size:
                        del self._holes[i]
                    else:
                        self._holes[i] = (lo + size, hi)
                    return lo
        raise GpuDeviceError(f"GPU virtual address space exhausted: no free range of "
                             f"{size:#x} bytes")

    def free(self, va: int, size_bytes: int) -> None:
        """Give back a range from :meth:`alloc`, merging it with its neighbours."""
        lo, hi = va, va + round_up(size_bytes, self.alignment)
        with self._lock:
            holes = self._holes
            i = 0
            while i < len(holes) and holes[i][0] < lo:
                i += 1
            assert (i == 0 or holes[i - 1][1] <= lo) and (i == len(holes) or hi <= holes[i][0]), \
                f"GpuVaAllocator.free: {lo:#x}..{hi:#x} overlaps a free range"
            if i < len(holes) and holes[i][0] == hi:
                hi = holes.pop(i)[1]
            if i > 0 and holes[i - 1][1] == lo:
                lo = holes.pop(i - 1)[0]
                i -= 1
            holes.insert(i, (lo, hi))

    def free_ranges(self) -> list[tuple[int, int]]:
        """The free holes, for tests."""
        with self._lock:
            return list(self._holes)


def read_exact(src_fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``src_fd`` at ``offset`` (preadv: GIL released, short reads resumed)."""
    done = 0
    while done < len(view):
        got = os.preadv(src_fd, [view[done:]], offset + done)
        if got == 0:
            raise GpuDeviceError(f"BO contents end early: read {done} of {len(view)} bytes at "
                                 f"offset {offset} of fd {src_fd}")
        done += got


def cpu_fill(bo_fd: int, size_bytes: int, src_fd: int, src_offset: int, bo_offset: int = 0,
             device: str = "dma-buf") -> None:
    """Copy ``size_bytes`` from ``src_fd`` into a host-visible BO through a CPU mapping.

    For GTT BOs and CPU-visible VRAM: the pages of the dma-buf that hold
    [bo_offset, bo_offset + size_bytes) are mmapped and the data is read straight into
    them (one copy, GIL released), inside DMA_BUF_IOCTL_SYNC START/END.
    """
    map_offset = bo_offset - bo_offset % PAGE_BYTES  # mmap offsets are page-aligned
    skip = bo_offset - map_offset
    with _Undo() as undo:
        mapping = mmap.mmap(bo_fd, round_up(skip + size_bytes, PAGE_BYTES), mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE, offset=map_offset)
        undo.push(mapping.close)
        with dmabuf.cpu_write_access(bo_fd, device), memoryview(mapping) as view:
            read_exact(src_fd, view[skip:skip + size_bytes], src_offset)


@dataclass
class _Lane:
    """One filling thread's SDMA resources on a render node, kept until the copier closes.

    ``staging`` is registered as a GEM userptr object (src of every copy) and mapped at
    ``staging_va``; the IB is a GTT BO mapped for the CPU (``ib_map``) and at ``ib_va``.
    """

    staging: mmap.mmap
    staging_handle: int
    staging_va: int
    ib_map: mmap.mmap
    ib_handle: int
    ib_va: int
    ctx_id: int
    releases: _Undo


@dataclass
class _MappedBo:
    """A dma-buf imported into the copier's DRM file and mapped whole at ``va``."""

    handle: int
    va: int
    size_bytes: int
    releases: _Undo


class RenderNodeCopier:
    """One local GPU's render node, opened by the copying process, and its SDMA copy path.

    Acquire/release: the constructor opens the node, :meth:`close` releases everything.
    Filling threads share it: each thread gets its own lane (staging buffer, IB, context)
    on first use; a BO is imported and mapped on its first chunk and dropped by
    :meth:`release_bo`.
    """

    def __init__(self, minor: int, dev_dir: str, staging_bytes: int) -> None:
        self.device = drm.render_node_path(minor, dev_dir)
        self.staging_bytes = round_up(staging_bytes, PAGE_BYTES)
        self.fd = drm.open_render_node(minor, dev_dir)
        try:
            info = drm.query_device_info(self.fd, self.device)
            self.family = int(info.family)
            self.max_copy_bytes = sdma.max_copy_bytes(self.family)  # refuses SI and older
            self.va = GpuVaAllocator(int(info.virtual_address_offset),
                                     int(info.virtual_address_max),
                                     max(PAGE_BYTES, int(info.virtual_address_alignment)))
        except BaseException:
            os.close(self.fd)
            raise
        self._lock = threading.Lock()
        # guarded by _lock: thread ident -> its lane; bo_fd -> the imported BO
        self._lanes: dict[int, _Lane] = {}
        self._bos: dict[int, _MappedBo] = {}

    def _map_va(self, undo: _Undo, handle: int, size_bytes: int) -> int:
        """Map ``handle`` at fresh GPU addresses; register unmap and free with ``undo``."""
        va = self.va.alloc(size_bytes)
        undo.push(self.va.free, va, size_bytes)
        drm.gem_va(self.fd, handle, drm.AMDGPU_VA_OP_MAP, va, size_bytes, self.device,
                   flags=_VM_PAGE_FLAGS)
        undo.push(drm.gem_va, self.fd, handle, drm.AMDGPU_VA_OP_UNMAP, va, size_bytes,
                  self.device)
        return va

    def _new_lane(self) -> _Lane:
        """Staging buffer + IB + context for the calling thread (released on failure)."""
        fd, dev = self.fd, self.device
        ib_bytes = round_up(sdma.ib_bytes_for(self.staging_bytes, self.family), PAGE_BYTES)
        with _Undo() as undo:
            # USERPTR with ANONONLY wants private anonymous memory: mmap(-1, MAP_PRIVATE).
            staging = mmap.mmap(-1, self.staging_bytes, flags=mmap.MAP_PRIVATE)
            undo.push(staging.close)
            src = drm.gem_userptr(fd, _buffer_address(staging), self.staging_bytes,
                                  _USERPTR_FLAGS, dev)
            undo.push(drm.gem_close, fd, src, dev)
            ib = drm.gem_create(fd, ib_bytes, PAGE_BYTES, drm.AMDGPU_GEM_DOMAIN_GTT, 0, dev)
            undo.push(drm.gem_close, fd, ib, dev)
            ib_map = mmap.mmap(fd, ib_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                               offset=drm.gem_mmap_offset(fd, ib, dev))
            undo.push(ib_map.close)
            staging_va = self._map_va(undo, src, self.staging_bytes)
            ib_va = self._map_va(undo, ib, ib_bytes)
            ctx = drm.ctx_alloc(fd, dev)
            undo.push(drm.ctx_free, fd, ctx, dev)
            return _Lane(staging, src, staging_va, ib_map, ib, ib_va, ctx, undo.pop_all())

    def _lane(self) -> _Lane:
        """The calling thread's lane, made on first use."""
        me = threading.get_ident()
        with self._lock:
            lane = self._lanes.get(me)
        if lane is None:
            lane = self._new_lane()
            with self._lock:
                self._lanes[me] = lane
        return lane

    def _mapped_bo(self, bo_fd: int) -> _MappedBo:
        """``bo_fd`` imported and mapped whole (first chunk), or the cached mapping."""
        with self._lock:
            bo = self._bos.get(bo_fd)
        if bo is not None:
            return bo
        try:  # a dma-buf's size is what SEEK_END reports (dma_buf_llseek)
            size_bytes = os.lseek(bo_fd, 0, os.SEEK_END)
        except OSError as err:
            raise GpuDeviceError(f"{self.device}: fd {bo_fd} is not a dma-buf whose size "
                                 f"can be read: {err.strerror}") from err
        with _Undo() as undo:
            handle = drm.prime_fd_to_handle(self.fd, bo_fd, self.device)
            undo.push(drm.gem_close, self.fd, handle, self.device)
            va = self._map_va(undo, handle, round_up(size_bytes, PAGE_BYTES))
            bo = _MappedBo(handle, va, size_bytes, undo.pop_all())
        with self._lock:
            self._bos[bo_fd] = bo
        return bo

    def fill(self, bo_fd: int, size_bytes: int, src_fd: int, src_offset: int,
             bo_offset: int) -> None:
        """Copy ``size_bytes`` of ``src_fd`` at ``src_offset`` into the BO at ``bo_offset``.

        Precondition: ``bo_fd`` is a dma-buf of a BO on this GPU and no other thread
        fills it now. The copy goes through this thread's staging buffer, one
        staging-sized piece at a time, each waited for before the buffer is reused.
        """
        lane, bo = self._lane(), self._mapped_bo(bo_fd)
        if bo_offset < 0 or bo_offset + size_bytes > bo.size_bytes:
            raise GpuDeviceError(f"{self.device}: fill of {size_bytes} bytes at offset "
                                 f"{bo_offset} overruns the BO of {bo.size_bytes} bytes")
        done = 0
        while done < size_bytes:
            piece = min(self.staging_bytes, size_bytes - done)
            with memoryview(lane.staging) as view:
                read_exact(src_fd, view[:piece], src_offset + done)
            dwords = sdma.copy_ib(lane.staging_va, bo.va + bo_offset + done, piece,
                                  self.family)
            struct.pack_into(f"<{len(dwords)}I", lane.ib_map, 0, *dwords)
            seq = drm.cs_submit_ib(self.fd, lane.ctx_id, lane.ib_va,
                                   len(dwords) * sdma.DWORD_BYTES,
                                   (lane.staging_handle, bo.handle, lane.ib_handle),
                                   drm.AMDGPU_HW_IP_DMA, _SDMA_RING, self.device)
            if not drm.wait_cs(self.fd, lane.ctx_id, seq, drm.AMDGPU_HW_IP_DMA, _SDMA_RING,
                               self.device):
                raise GpuDeviceError(f"{self.device}: SDMA copy {seq} still busy after an "
                                     "infinite wait")
            done += piece

    def release_bo(self, bo_fd: int) -> bool:
        """Unmap and close this copier's import of ``bo_fd``; False if it has none."""
        with self._lock:
            bo = self._bos.pop(bo_fd, None)
        if bo is None:
            return False
        with bo.releases:
            pass
        return True

    def close(self) -> None:
        """Release every BO import and lane, then close the render node (idempotent)."""
        if self.fd < 0:
            return
        with self._lock:
            held = list(self._bos.values()) + list(self._lanes.values())
            self._bos, self._lanes = {}, {}
        with _Undo() as undo:
            undo.push(os.close, self.fd)
            for item in held:
                undo.push(item.releases.__exit__, None, None, None)
            self.fd = -1


def _buffer_address(buffer: mmap.mmap) -> int:
    """The address of an mmap object's memory (valid while the mmap stays open)."""
    # The temporary ctypes view is dropped at once, so the mmap can still be closed.
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class KfdBackend:
    """GpuBackend for a real AMD GPU (see the module docstring for who calls what).

    ``copy_method`` is "sdma" (CRIU's way: the DMA engine, any BO) or "cpu" (mmap the
    dma-buf: only for host-visible BOs, e.g. GTT or APUs). ``fd_floor``: render-node fds
    the task keeps open are moved to numbers >= it, so that they cannot collide with the
    fds the restore installs later (CRIU's fd_next); 0 leaves them where open() put them.
    ``park_fd`` does that instead when given (the plugin passes files.park: the task's
    temporary range, above every fd of the images).

    Created in the orchestrator and inherited by the task through fork: it holds no
    thread, and its per-process state (copiers) is rebuilt when the pid changes.
    """

    name = "kfd"

    def __init__(self, *, topology_root: Path = topology.TOPOLOGY_SYSFS_ROOT,
                 dev_dir: str = "/dev", copy_method: str = "sdma",
                 staging_bytes: int = DEFAULT_STAGING_BYTES,
                 policy: topology.MatchPolicy | None = None, fd_floor: int = 0,
                 park_fd: Callable[[int], int] | None = None) -> None:
        if copy_method not in ("sdma", "cpu"):
            raise ValueError(f"copy_method must be 'sdma' or 'cpu', not {copy_method!r}")
        if staging_bytes < PAGE_BYTES:
            raise ValueError(f"staging_bytes {staging_bytes} is below one page")
        self.topology_root = Path(topology_root)
        self.dev_dir = dev_dir
        self.kfd_path = os.path.join(dev_dir, "kfd")
        self.copy_method = copy_method
        self.staging_bytes = staging_bytes
        self.policy = policy if policy is not None else topology.MatchPolicy.from_env()
        self.fd_floor = fd_floor
        self.park_fd = park_fd
        # restored task only: local gpu_id -> render fd handed to KFD (open until
        # close_task_files), and the VMA offset changes of the last restore_bos.
        self._task_render_fds: dict[int, int] = {}
        self._local_minors: dict[int, int] = {}
        self._drm_done: dict[int, set[int]] = {}  # local gpu_id -> handles restored in its file
        self.vma_remaps: list[VmaRemap] = []
        # copying process only (pid-checked): checkpoint gpu_id -> copier, guarded by _lock
        self._copiers: dict[int, RenderNodeCopier] = {}
        self._copiers_pid = -1
        self._lock: threading.Lock | None = None

    # --- in the task --------------------------------------------------------------------

    def map_gpus(self, kfd_image: CriuKfd) -> dict[int, LocalGpu]:
        """Pair each checkpoint GPU with a local one by topology (topology.map_gpus)."""
        src = topology.checkpoint_topology(kfd_image, f"the kfd image of pid {kfd_image.pid}")
        dst = topology.local_topology(self.topology_root)
        pairs = topology.map_gpus(src, dst, self.policy)
        out = {}
        for ckpt_id, local_id in pairs.items():
            minor = dst.gpu(local_id).render_minor
            self._local_minors[local_id] = minor
            out[ckpt_id] = LocalGpu(gpu_id=local_id, minor=minor)
        return out

    def open_device(self) -> int:
        """Open /dev/kfd and check that its CRIU interface is new enough (1.8+)."""
        fd = open_device(self.kfd_path)
        try:
            major, minor = kfd.get_version(fd, self.kfd_path)
            if major != kfd.KFD_IOCTL_MAJOR_VERSION or minor < kfd.KFD_MIN_CRIU_MINOR_VERSION:
                raise DeviceUnavailable(
                    f"{self.kfd_path}: KFD interface {major}.{minor}, restore needs "
                    f"{kfd.KFD_IOCTL_MAJOR_VERSION}.{kfd.KFD_MIN_CRIU_MINOR_VERSION} or later "
                    "(a kernel with amdgpu CRIU support)")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def render_fd(self, local_gpu_id: int) -> int:
        """The task's render fd for a local GPU, as given to KFD: VRAM VMAs map through it."""
        return self._task_render_fds[local_gpu_id]

    def vma_target(self, local_gpu_id: int, offset: int) -> tuple[int, int]:
        """A device VMA maps the task's DRM file at the BO's new offset (amdgpu_plugin_update_vmamap
        returns a dup of the same file: DRM refuses mmap of the BO through any other open)."""
        return offset, os.dup(self.render_fd(local_gpu_id))

    def kfd_vma_target(self, offset: int) -> tuple[int, int | None]:
        """A doorbell or MMIO VMA reopens /dev/kfd by path at the offset RESTORE gave
        (KFD_MMAP_TYPE_* | the local gpu_id << 46), as amdgpu_plugin_update_vmamap answers
        (updated_fd -1): kfd_mmap maps the pages of the process that calls it, whichever
        open of /dev/kfd it goes through."""
        return offset, None

    def close_task_files(self) -> None:
        """Close the DRM files opened for KFD in the task, once its device VMAs have their dups.

        KFD keeps its own reference to each (kfd_chardev.c criu_restore_devices: on success
        "the PDD keeps the drm_file reference"), a render-node fd of the image is a dup, and
        a mapping holds its file: the restored process is left with only the fds of its
        image. (CRIU leaves these open in the restored process, above its fds.)
        """
        fds, self._task_render_fds = self._task_render_fds, {}
        self._drm_done.clear()
        _close_all(fds.values())

    def _task_render_node(self, local_gpu_id: int) -> int:
        """Open (once) the task's render node for ``local_gpu_id``, above ``fd_floor``."""
        if local_gpu_id in self._task_render_fds:
            return self._task_render_fds[local_gpu_id]
        if local_gpu_id not in self._local_minors:
            local = topology.local_topology(self.topology_root)
            self._local_minors.update({g.gpu_id: g.render_minor for g in local.gpus()})
        if local_gpu_id not in self._local_minors:
            raise DeviceUnavailable(f"no local GPU {local_gpu_id:#06x} in the KFD topology "
                                    f"at {self.topology_root}")
        fd = drm.open_render_node(self._local_minors[local_gpu_id],
                                  os.path.join(self.dev_dir, "dri"))
        if self.park_fd is not None:
            fd = self.park_fd(fd)
        elif self.fd_floor and fd < self.fd_floor:
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, self.fd_floor)
            os.close(fd)
            fd = moved
        self._task_render_fds[local_gpu_id] = fd
        return fd

    def restore_bos(self, device_fd: int, kfd_image: CriuKfd,
                    gpu_map: dict[int, int]) -> list[RestoredBo]:
        """CRIU_OP(RESTORE) in the task: BOs back at their VAs; the VRAM/GTT ones, with dma-bufs.

        Precondition: ``device_fd`` comes from :meth:`open_device` in this process and
        ``gpu_map`` (checkpoint -> local gpu_id) covers every GPU of the image. Leaves
        behind: the render fds (kept for the task's VMAs, :meth:`render_fd`),
        :attr:`vma_remaps`, and one dma-buf fd per returned BO, owned by the caller. On
        failure every dma-buf fd the kernel returned is closed.
        """
        where = f"the kfd image of pid {kfd_image.pid}"
        # One device bucket per GPU node, in image order; CPU nodes (gpu_id 0) are skipped,
        # as CRIU's restore_devices does.
        gpus = gpu_entries(kfd_image)
        if len(gpus) != kfd_image.num_of_gpus:
            raise ImageError(where, f"{len(gpus)} GPU device entries, num_of_gpus says "
                                    f"{kfd_image.num_of_gpus}")
        if len(kfd_image.bo_entries) != kfd_image.num_of_bos:
            raise ImageError(where, f"{len(kfd_image.bo_entries)} BO entries, num_of_bos says "
                                    f"{kfd_image.num_of_bos}")
        missing = [f"{e.gpu_id:#06x}" for e in gpus if e.gpu_id not in gpu_map]
        if missing:
            raise AssertionError(f"restore_bos: gpu_map lacks checkpoint GPU(s) {missing}")

        devices = (kfd.KfdCriuDeviceBucket * len(gpus))()
        for bucket, entry in zip(devices, gpus):
            local_id = gpu_map[entry.gpu_id]
            bucket.user_gpu_id = entry.gpu_id
            bucket.actual_gpu_id = local_id
            bucket.drm_fd = self._task_render_node(local_id)
        bos = (kfd.KfdCriuBoBucket * len(kfd_image.bo_entries))()
        for bucket, bo in zip(bos, kfd_image.bo_entries):
            bucket.addr, bucket.size, bucket.offset = bo.addr, bo.size, bo.offset
            bucket.gpu_id, bucket.alloc_flags = bo.gpu_id, bo.alloc_flags

        kfd.criu_restore(device_fd, devices, bos, kfd_image.priv_data,
                         kfd_image.num_of_objects, self.kfd_path)
        try:
            return self._collect_restored(bos, kfd_image, gpu_map)
        except BaseException:
            _close_dmabufs(bos)
            raise

    def _collect_restored(self, bos: ctypes.Array[kfd.KfdCriuBoBucket], kfd_image: CriuKfd,
                          gpu_map: dict[int, int]) -> list[RestoredBo]:
        """Turn the kernel's answers into RestoredBo / VmaRemap; close unneeded dma-bufs."""
        restored, remaps = [], []
        for index, (bucket, bo) in enumerate(zip(bos, kfd_image.bo_entries)):
            local_id = gpu_map[bo.gpu_id]
            has_fd = bucket.dmabuf_fd != kfd.KFD_INVALID_FD
            if bo.alloc_flags & REMAPPED_BO_FLAGS:
                remaps.append(VmaRemap(addr=bo.addr, old_offset=bo.offset,
                                       new_offset=int(bucket.restored_offset),
                                       alloc_flags=bo.alloc_flags, local_gpu_id=local_id,
                                       render_fd=self._task_render_fds[local_id]))
            if not bo.alloc_flags & FILLED_BO_FLAGS:
                if has_fd:  # not ours to fill: do not leak it
                    os.close(bucket.dmabuf_fd)
                    bucket.dmabuf_fd = kfd.KFD_INVALID_FD
                continue
            if not has_fd:
                raise GpuDeviceError(f"KFD restored BO {index} (addr {bo.addr:#x}, "
                                     f"{bo.size} bytes, flags {bo.alloc_flags:#x}) without a "
                                     "dma-buf fd: its contents cannot be filled")
            restored.append(RestoredBo(
                index=index, gpu_id=bo.gpu_id, size=bo.size, dmabuf_fd=int(bucket.dmabuf_fd),
                restored_offset=int(bucket.restored_offset), addr=bo.addr,
                old_offset=bo.offset, local_gpu_id=local_id,
                minor=self._local_minors.get(local_id, 0)))
        self.vma_remaps = remaps
        return restored

    def restore_render_node(self, node: Any, local: LocalGpu,
                            import_fd: Callable[[int], int]) -> tuple[int, list[RestoredDrmBo]]:
        """A render-node file in the task: its BOs in the GPU's one DRM file (renderd.py).

        The DRM file is the one KFD's RESTORE got for ``local`` (opened here if no kfd file
        came first); the returned fd is a new dup of it, the caller's to install.
        """
        fd = self._task_render_node(local.gpu_id)
        device = drm.render_node_path(self._local_minors.get(local.gpu_id, local.minor),
                                      os.path.join(self.dev_dir, "dri"))
        done = self._drm_done.setdefault(local.gpu_id, set())
        bos = renderd.restore_render_bos(fd, node, import_fd, device, done)
        try:
            return os.dup(fd), bos
        except OSError:
            _close_all(b.dmabuf_fd for b in bos if b.dmabuf_fd >= 0)
            raise

    # --- in the process that copies (the orchestrator's fill pool) ------------------------

    def _copier_state(self) -> tuple[dict[int, RenderNodeCopier], threading.Lock]:
        """This process's copiers and lock; after a fork, fresh ones.

        Copiers inherited through fork share their parent's DRM files (and so its VM and
        VA bookkeeping): the child closes its copies of those fds and opens its own.
        """
        if self._copiers_pid != os.getpid() or self._lock is None:
            _close_all(copier.fd for copier in self._copiers.values())
            self._copiers = {}
            self._lock = threading.Lock()
            self._copiers_pid = os.getpid()
        return self._copiers, self._lock

    def prepare_fill(self, gpu_id: int, local: LocalGpu) -> None:
        """Open this process's render node for checkpoint GPU ``gpu_id`` (idempotent)."""
        if self.copy_method != "sdma":
            return
        copiers, lock = self._copier_state()
        with lock:
            if gpu_id not in copiers:
                copiers[gpu_id] = RenderNodeCopier(local.minor, os.path.join(self.dev_dir, "dri"),
                                                   self.staging_bytes)

    def fill(self, bo_fd: int, size: int, src_fd: int, src_offset: int, gpu_id: int,
             bo_offset: int = 0) -> None:
        """Copy one chunk of the pages data into the BO; see RenderNodeCopier.fill."""
        if self.copy_method == "cpu":
            cpu_fill(bo_fd, size, src_fd, src_offset, bo_offset, f"dma-buf of GPU {gpu_id:#06x}")
            return
        copiers, lock = self._copier_state()
        with lock:
            copier = copiers.get(gpu_id)
        if copier is None:
            raise AssertionError(f"KfdBackend.fill: GPU {gpu_id:#06x} was not prepared "
                                 "(prepare_fill) in this process")
        copier.fill(bo_fd, size, src_fd, src_offset, bo_offset)

    def release_bo(self, bo_fd: int) -> None:
        """Drop the import of ``bo_fd`` made by its first ``fill`` (the caller closes the fd)."""
        if self.copy_method == "cpu":
            return
        copiers, lock = self._copier_state()
        with lock:
            owners = list(copiers.values())
        for copier in owners:
            if copier.release_bo(bo_fd):
                return

    # --- in the orchestrator -------------------------------------------------------------

    def resume(self, pid: int) -> None:
        """CRIU_OP(RESUME, pid): restart the task's GPU queues; ESRCH (no KFD state) is fine."""
        fd = open_device(self.kfd_path)
        try:
            kfd.criu_resume(fd, pid, self.kfd_path)
        except GpuIoctlError as err:
            if err.errno != errno_mod.ESRCH:
                raise
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release what prepare_fill opened in this process: the copiers (idempotent).

        The task's render fds (:meth:`render_fd`) are not closed here: KFD built the
        task's GPU VM on them and the task's VRAM VMAs are mapped through them by its
        blob, after every hook has run; they live as long as the task, as in CRIU.
        """
        copiers = self._copiers if self._copiers_pid == os.getpid() else {}
        self._copiers = {}
        with _Undo() as undo:
            for copier in copiers.values():
                undo.push(copier.close)


def _close_dmabufs(bos: Iterable[kfd.KfdCriuBoBucket]) -> None:
    """Close every dma-buf fd the kernel returned in ``bos`` (failure path)."""
    _close_all(int(b.dmabuf_fd) for b in bos if b.dmabuf_fd != kfd.KFD_INVALID_FD)


def _close_all(fds: Iterable[int]) -> None:
    for fd in list(fds):
        try:
            os.close(fd)
        except OSError:
            pass
