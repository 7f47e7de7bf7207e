"""simgpu: a GPU backend without a GPU, so that the amdgpu plugin's whole path runs here.

No AMD GPU exists on the machines pycrestore is built on. simgpu stands in for one with
memfds, and runs the very same plugin code (images, channel, fill pool, hooks) as the real
backend:

    real GPU                                   simgpu
    -----------------------------------------  ------------------------------------------
    /dev/kfd fd                                memfd "simgpu-kfd"
    a VRAM/GTT BO, exported as a dma-buf fd    memfd "simgpu-bo-<gpu %04x>-<index>" of the
                                               BO's size (reads as zeros, as a new BO)
    SDMA copy from a staging buffer            pread/pwrite through a reused buffer, GIL
                                               released; holes of the pages file skipped
    mmap of a BO through the DRM file at its   mmap of the BO's memfd at 0: vma_target
    new offset (a device VMA)                  answers with a dup of it (simgpu has no
                                               mmap offset space; the memfd is the BO)
    mmap of a doorbell or MMIO page through    mmap of the "simgpu-kfd" memfd at simgpu's
    /dev/kfd at KFD's new offset (type << 62   own offset for the BO (sim_kfd_offsets),
    | gpu_id << 46), any open of /dev/kfd      the memfd sized to hold them all (sparse):
                                               kfd_vma_target answers with a dup of it
    KFD_CRIU_OP_RESUME(pid)                    the pid is recorded in ``resumed``
    VRAM, checked after the restore            :class:`SimDevice`: the orchestrator keeps a
                                               dup of every BO fd the tasks send, in both
                                               the parallel and the serial mode

The bandwidth of a real link is modelled by the fill pool's per-GPU Throttle, not here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
import threading
import zlib

from pycriu_restore.errors import EXIT_RESTORE, PycrestoreError
from pycriu_restore.images.schemas import amdgpu_pb2
from pycriu_restore.plugins.amdgpu.backend import LocalGpu, RestoredBo, RestoredDrmBo, VmaRemap
from pycriu_restore.plugins.amdgpu.channel import Command
from pycriu_restore.plugins.amdgpu.images import gpu_entries, has_contents
from pycriu_restore.plugins.amdgpu.kfd import KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL, KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP

SIM_KFD_NAME = "simgpu-kfd"
SIM_BO_NAME = "simgpu-bo-{gpu_id:04x}-{index}"
SIM_RENDER_NAME = "simgpu-renderD{minor}"      # the task's one DRM file per GPU
SIM_DRM_BO_NAME = "simgpu-drm-bo-{gpu_id:04x}-{handle}"
# Render-node BOs' new mmap offsets: apart from the KFD ones, one page per BO made.
SIM_RENDER_OFFSET_BASE = 0x5134 << 36
# New mmap offsets the simulated kernel hands out (the real one makes fresh ones too):
# SIM_MMAP_OFFSET_BASE + the BO's index in pages, well apart from any image's offsets.
SIM_MMAP_OFFSET_BASE = 0x5133 << 36
# Doorbell and MMIO pages: where they lie in the "simgpu-kfd" memfd (sim_kfd_offsets), one
# BO after the other from here. KFD's own offsets cannot be used: a doorbell's (3 << 62 |
# gpu_id << 46) is beyond any file's size (a file offset is below 2**63), so the memfd could
# never be mapped there. Small, since the memfd is sized to hold them (sparse), and unlike
# any offset KFD writes (those name the GPU at bit 46): a moved VMA always changes offset.
SIM_KFD_MMAP_OFFSET_BASE = 0x10_0000
# BOs that live in /dev/kfd's offset space rather than a DRM file's (no contents to fill).
KFD_PAGE_FLAGS = KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL | KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP
_PAGE_BYTES = 4096
# Size of each thread's copy buffer and of the reads that checksum a BO.
COPY_BUFFER_BYTES = 4 << 20


class SimGpuError(PycrestoreError):
    """The simulated GPU could not do what a real one would have done."""

    exit_code = EXIT_RESTORE


class SimBackend:
    """The simgpu GpuBackend (see backend.py for who calls what, and where)."""

    name = "sim"

    def __init__(self, park_fd: Callable[[int], int] | None = None, keep_vma_targets: bool = True) -> None:
        # Moves an fd the task keeps (its render "DRM files") out of the image's fd numbers.
        self.park_fd = park_fd
        # Whether a task keeps a dup of each BO for vma_target (False: the images map none).
        self.keep_vma_targets = keep_vma_targets
        # orchestrator only: what the tasks handed over, and whom we resumed.
        self.device = SimDevice()
        self.resumed: list[int] = []
        self._buffers = threading.local()  # one copy buffer per filling thread
        # restored task only: local gpu_id -> its "DRM file", the handles restored in it
        self._render_fds: dict[int, int] = {}
        self._minors: dict[int, int] = {}
        self._drm_done: dict[int, set[int]] = {}
        self._drm_bos_made = 0
        # (local gpu_id, new mmap offset) -> a parked dup of the BO's memfd, for vma_target;
        # closed by close_task_files, so that no BO stays open in the restored task.
        self._vma_targets: dict[tuple[int, int], int] = {}
        # offset in the kfd memfd -> a parked dup of that memfd, for kfd_vma_target (the dups
        # are in _kfd_dups, closed by close_task_files); what the last restore_bos moved.
        self._kfd_targets: dict[int, int] = {}
        self._kfd_dups: list[int] = []
        self.vma_remaps: list[VmaRemap] = []

    def map_gpus(self, kfd: amdgpu_pb2.CriuKfd) -> dict[int, LocalGpu]:
        """Each checkpointed GPU is restored on itself (same gpu_id and render minor).

        CPU nodes (gpu_id 0) are part of the image's topology but are not GPUs to map.
        """
        gpus = {d.gpu_id: LocalGpu(d.gpu_id, d.drm_render_minor) for d in gpu_entries(kfd)}
        self._minors.update({local.gpu_id: local.minor for local in gpus.values()})
        return gpus

    def open_device(self) -> int:
        """A memfd named "simgpu-kfd", in the task's fd table where /dev/kfd was."""
        return os.memfd_create(SIM_KFD_NAME, os.MFD_CLOEXEC)

    def restore_bos(self, device_fd: int, kfd: amdgpu_pb2.CriuKfd, gpu_map: dict[int, int]) -> list[RestoredBo]:
        """One zero-filled memfd of the BO's size per VRAM/GTT BO of ``kfd``, in image order;
        doorbell and MMIO BOs get their pages in ``device_fd`` (the kfd memfd) at simgpu's
        offsets, which ``vma_remaps`` reports with the VRAM/GTT BOs' new offsets.

        On failure the memfds made so far are closed and SimGpuError names the BO.
        """
        for local_gpu_id in gpu_map.values():
            self.render_fd(local_gpu_id)  # KFD gets one DRM file per GPU (close_task_files closes it)
        kfd_offsets = sim_kfd_offsets(kfd)
        remaps: list[VmaRemap] = []
        out: list[RestoredBo] = []
        try:
            for index, bo in enumerate(kfd.bo_entries):
                local_gpu_id = gpu_map.get(bo.gpu_id, 0)
                if index in kfd_offsets:
                    remaps.append(VmaRemap(addr=bo.addr, old_offset=bo.offset, new_offset=kfd_offsets[index],
                                           alloc_flags=bo.alloc_flags, local_gpu_id=local_gpu_id,
                                           render_fd=self._render_fds.get(local_gpu_id, -1)))
                if not has_contents(bo.alloc_flags):
                    continue
                name = SIM_BO_NAME.format(gpu_id=bo.gpu_id, index=index)
                try:
                    fd = os.memfd_create(name, os.MFD_CLOEXEC)
                except OSError as err:
                    raise SimGpuError(f"simgpu: BO {index} (gpu_id {bo.gpu_id:#x}): memfd_create: "
                                      f"{err.strerror}") from err
                out.append(RestoredBo(index=index, gpu_id=bo.gpu_id, size=bo.size, dmabuf_fd=fd,
                                      restored_offset=SIM_MMAP_OFFSET_BASE + index * _PAGE_BYTES, addr=bo.addr,
                                      old_offset=bo.offset, local_gpu_id=gpu_map.get(bo.gpu_id, 0)))
                try:
                    os.ftruncate(fd, bo.size)
                except OSError as err:
                    raise SimGpuError(f"simgpu: BO {index} (gpu_id {bo.gpu_id:#x}): cannot make {bo.size} "
                                      f"bytes: {err.strerror}") from err
                self._keep_vma_target(out[-1].local_gpu_id, out[-1].restored_offset, fd)
                remaps.append(VmaRemap(addr=bo.addr, old_offset=bo.offset, new_offset=out[-1].restored_offset,
                                       alloc_flags=bo.alloc_flags, local_gpu_id=local_gpu_id,
                                       render_fd=self._render_fds.get(local_gpu_id, -1)))
            if kfd_offsets:
                self._map_kfd_pages(device_fd, kfd, kfd_offsets)
        except BaseException:
            for restored in out:
                os.close(restored.dmabuf_fd)
            raise
        self.vma_remaps = remaps
        return out

    def _map_kfd_pages(self, device_fd: int, kfd: amdgpu_pb2.CriuKfd, offsets: dict[int, int]) -> None:
        """Size the kfd memfd to hold every doorbell and MMIO page at ``offsets`` (BO index ->
        offset; sparse: they read as zeros), and keep a dup of it for kfd_vma_target."""
        end = max(offset + _whole_pages(kfd.bo_entries[index].size) for index, offset in offsets.items())
        try:
            if os.fstat(device_fd).st_size < end:
                os.ftruncate(device_fd, end)
        except OSError as err:
            raise SimGpuError(f"simgpu: {SIM_KFD_NAME}: cannot hold the doorbell and MMIO pages of BOs "
                              f"{sorted(offsets)} ({end} bytes): {err.strerror}") from err
        if not self.keep_vma_targets:
            return
        dup = os.dup(device_fd)
        dup = self.park_fd(dup) if self.park_fd is not None else dup
        self._kfd_dups.append(dup)
        for offset in offsets.values():
            self._kfd_targets[offset] = dup

    def render_fd(self, local_gpu_id: int) -> int:
        """The task's simulated DRM file of a GPU: a memfd named "simgpu-renderD<minor>",
        made on first use (by restore_bos, as the real backend opens one per GPU for KFD)."""
        if local_gpu_id not in self._render_fds:
            minor = self._minors.get(local_gpu_id, 0)
            fd = os.memfd_create(SIM_RENDER_NAME.format(minor=minor), os.MFD_CLOEXEC)
            self._render_fds[local_gpu_id] = self.park_fd(fd) if self.park_fd is not None else fd
        return self._render_fds[local_gpu_id]

    def restore_render_node(self, node: amdgpu_pb2.CriuRenderNode, local: LocalGpu,
                            import_fd: Callable[[int], int]) -> tuple[int, list[RestoredDrmBo]]:
        """A memfd per created BO; an import is checked to be an open fd (its exporter's) and
        gets none. One simulated DRM file per GPU, shared by its render nodes, as on hardware."""
        self._minors.setdefault(local.gpu_id, local.minor)
        render_fd = self.render_fd(local.gpu_id)
        done = self._drm_done.setdefault(local.gpu_id, set())
        out: list[RestoredDrmBo] = []
        try:
            for index, bo in enumerate(node.bo_entries):
                if bo.handle in done:
                    continue
                dmabuf_fd = -1
                new_offset = SIM_RENDER_OFFSET_BASE + (self._drm_bos_made + 1) * _PAGE_BYTES
                if bo.is_import:
                    exporter = import_fd(bo.handle)
                    os.fstat(exporter)  # the exporter's dma-buf must be open
                    self._keep_vma_target(local.gpu_id, new_offset, exporter)  # an import maps its memory
                else:
                    dmabuf_fd = os.memfd_create(SIM_DRM_BO_NAME.format(gpu_id=node.gpu_id, handle=bo.handle),
                                                os.MFD_CLOEXEC)
                    try:
                        os.ftruncate(dmabuf_fd, bo.size)  # reads as zeros, as a new BO
                        self._keep_vma_target(local.gpu_id, new_offset, dmabuf_fd)
                    except BaseException:
                        os.close(dmabuf_fd)
                        raise
                self._drm_bos_made += 1
                out.append(RestoredDrmBo(index=index, handle=bo.handle, size=bo.size, dmabuf_fd=dmabuf_fd,
                                         old_offset=bo.offset, new_offset=new_offset))
                done.add(bo.handle)
            return os.dup(render_fd), out
        except BaseException:
            for restored in out:
                if restored.dmabuf_fd >= 0:
                    os.close(restored.dmabuf_fd)
            raise

    def _keep_vma_target(self, local_gpu_id: int, offset: int, bo_fd: int) -> None:
        """Keep a dup of a BO's memfd for the device VMAs that map ``offset`` (vma_target)."""
        if not self.keep_vma_targets:
            return
        dup = os.dup(bo_fd)
        self._vma_targets[(local_gpu_id, offset)] = self.park_fd(dup) if self.park_fd is not None else dup

    def vma_target(self, local_gpu_id: int, offset: int) -> tuple[int, int]:
        """The BO at ``offset`` of the GPU's simulated DRM file: (0, a new dup of its memfd).

        simgpu's DRM file holds no memory (a sparse memfd at 2**50 would, but the BOs are
        memfds of their own that the fill writes), so the VMA maps the BO's memfd itself:
        the restored task sees the BO's contents, filled before or after the blob maps it.
        """
        fd = self._vma_targets.get((local_gpu_id, offset))
        if fd is None:
            raise SimGpuError(f"simgpu: no BO at mmap offset {offset:#x} of GPU {local_gpu_id:#x} "
                              f"(offsets: {', '.join(f'{o:#x}' for g, o in sorted(self._vma_targets) if g == local_gpu_id) or 'none'})")
        return 0, os.dup(fd)

    def kfd_vma_target(self, offset: int) -> tuple[int, int | None]:
        """A doorbell or MMIO VMA that restore_bos moved to ``offset``: (``offset``, a new dup
        of the kfd memfd). A real one reopens /dev/kfd by path (any open maps the task's
        doorbells); a new memfd would be another "device", so simgpu maps the task's own."""
        fd = self._kfd_targets.get(offset)
        if fd is None:
            raise SimGpuError(f"simgpu: no doorbell or MMIO page at offset {offset:#x} of {SIM_KFD_NAME} "
                              f"(offsets: {', '.join(f'{o:#x}' for o in sorted(self._kfd_targets)) or 'none'})")
        return offset, os.dup(fd)

    def close_task_files(self) -> None:
        """Close the simulated DRM files and the BO and kfd memfd dups kept for vma_target and
        kfd_vma_target: the restored task holds no fd of ours (its render-node fds are dups
        of the DRM files, its kfd fd is the memfd open_device made)."""
        targets, self._vma_targets = self._vma_targets, {}
        drm, self._render_fds = self._render_fds, {}
        kfd_dups, self._kfd_dups = self._kfd_dups, []
        self._kfd_targets = {}
        self._drm_done.clear()
        for fd in [*targets.values(), *drm.values(), *kfd_dups]:
            os.close(fd)

    def prepare_fill(self, gpu_id: int, local: LocalGpu) -> None:
        """Nothing to open: a memfd needs no render node."""

    def fill(self, bo_fd: int, size: int, src_fd: int, src_offset: int, gpu_id: int, bo_offset: int = 0) -> None:
        """Copy ``size`` bytes of the pages file into the BO memfd, skipping the file's holes.

        Holes read as zeros and the BO memfd starts as zeros (restore_bos made it), so a
        hole needs no write: the generator's all-zero BOs cost nothing to restore. The
        reads and writes are os.preadv/os.pwrite, which release the GIL.
        """
        buf = getattr(self._buffers, "view", None)
        if buf is None:
            buf = self._buffers.view = memoryview(bytearray(COPY_BUFFER_BYTES))
        pos = 0
        while pos < size:
            data_at = _next_data(src_fd, src_offset + pos)
            if data_at is None or data_at >= src_offset + size:
                return  # the rest of the range is a hole
            pos = data_at - src_offset
            hole_at = os.lseek(src_fd, data_at, os.SEEK_HOLE)
            end = min(size, hole_at - src_offset)
            while pos < end:
                n = os.preadv(src_fd, [buf[:min(COPY_BUFFER_BYTES, end - pos)]], src_offset + pos)
                if n == 0:
                    raise SimGpuError(f"simgpu: gpu_id {gpu_id:#x}: pages file ends at byte {src_offset + pos}, "
                                      f"{size - pos} bytes short")
                written = 0
                while written < n:
                    written += os.pwrite(bo_fd, buf[written:n], bo_offset + pos + written)
                pos += n

    def release_bo(self, bo_fd: int) -> None:
        """Nothing is cached per BO."""

    def resume(self, pid: int) -> None:
        """Record that the GPU state of ``pid`` would start now."""
        self.resumed.append(pid)

    def close(self) -> None:
        """Nothing to release: the device's BOs outlive the restore (see SimDevice.close)."""


def sim_kfd_offsets(kfd: amdgpu_pb2.CriuKfd) -> dict[int, int]:
    """simgpu's new /dev/kfd offset of each doorbell and MMIO BO of ``kfd``, by BO index.

    The pages follow one another from SIM_KFD_MMAP_OFFSET_BASE in image order, each BO
    rounded up to whole pages (at least one), so no two VMAs share a page.
    """
    out: dict[int, int] = {}
    offset = SIM_KFD_MMAP_OFFSET_BASE
    for index, bo in enumerate(kfd.bo_entries):
        if bo.alloc_flags & KFD_PAGE_FLAGS and not has_contents(bo.alloc_flags):
            out[index] = offset
            offset += _whole_pages(bo.size)
    return out


def _whole_pages(size_bytes: int) -> int:
    """``size_bytes`` rounded up to whole pages (bytes), at least one page."""
    return max(1, -(-size_bytes // _PAGE_BYTES)) * _PAGE_BYTES


def _next_data(fd: int, offset: int) -> int | None:
    """The first offset at or after ``offset`` that holds data, or None if only a hole follows."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as err:
        if err.errno == errno.ENXIO:  # lseek(2): no data at or after offset
            return None
        raise


class SimDevice:
    """The simulated GPU's memory, in the orchestrator: a dup of every BO the tasks sent.

    Filled from the fill pool's ``on_filled`` (worker threads), read by the caller after
    the restore; it outlives the restore so that its contents can be checked, and the
    caller releases it with :meth:`close`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # guarded by _lock: (checkpoint gpu_id, BO index) -> (fd, size in bytes) for KFD BOs,
        # (render-node file id, BO index) -> (fd, size) for render-node BOs
        self._bos: dict[tuple[int, int], tuple[int, int]] = {}
        self._render_bos: dict[tuple[int, int], tuple[int, int]] = {}

    def adopt(self, command: Command) -> None:
        """Keep a dup of each BO fd of ``command``, keyed by its GPU and image index."""
        with self._lock:
            table = self._render_bos if command.render_node else self._bos
            for entry in command.entries:
                key = (command.kfd_id, entry.bo_index) if command.render_node else (entry.gpu_id, entry.bo_index)
                if key in table:
                    continue  # another entry of the same BO
                fd = os.dup(command.fds[entry.fd_index])
                table[key] = (fd, os.fstat(fd).st_size)

    def keys(self) -> list[tuple[int, int]]:
        """The (gpu_id, BO index) of every BO held, sorted."""
        with self._lock:
            return sorted(self._bos)

    def read(self, gpu_id: int, index: int, offset: int = 0, size: int | None = None) -> bytes:
        """Bytes of one BO (for tests and inspection)."""
        with self._lock:
            fd, bo_bytes = self._bos[(gpu_id, index)]
        return os.pread(fd, bo_bytes - offset if size is None else size, offset)

    def checksums(self) -> dict[tuple[int, int], int]:
        """zlib.crc32 of every KFD BO held, read in COPY_BUFFER_BYTES chunks."""
        with self._lock:
            bos = dict(self._bos)
        return _checksums(bos)

    def render_checksums(self) -> dict[tuple[int, int], int]:
        """zlib.crc32 of every render-node BO held, keyed (render file id, BO index)."""
        with self._lock:
            bos = dict(self._render_bos)
        return _checksums(bos)

    def close(self) -> None:
        """Close every BO fd held."""
        with self._lock:
            bos, self._bos = self._bos, {}
            render, self._render_bos = self._render_bos, {}
        for fd, _ in [*bos.values(), *render.values()]:
            os.close(fd)

    def __len__(self) -> int:
        with self._lock:
            return len(self._bos)


def _checksums(bos: dict[tuple[int, int], tuple[int, int]]) -> dict[tuple[int, int], int]:
    """zlib.crc32 of each (fd, size) BO, read in COPY_BUFFER_BYTES chunks."""
    out = {}
    for key, (fd, bo_bytes) in bos.items():
        crc = 0
        for offset in range(0, bo_bytes, COPY_BUFFER_BYTES):
            crc = zlib.crc32(os.pread(fd, min(COPY_BUFFER_BYTES, bo_bytes - offset), offset), crc)
        out[key] = crc
    return out
