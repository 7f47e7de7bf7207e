"""The GPU backend protocol: the few device operations the amdgpu plugin needs.

The plugin's logic (which BOs to re-create, who fills them, when the GPU resumes) is the
same on a real AMD GPU and on the simulated one; only these operations differ:

    operation      runs in                      real GPU (kfd_backend.py)         simgpu (sim.py)
    -------------  ---------------------------  --------------------------------  ---------------------------
    map_gpus       the restored task            topology match: checkpoint gpu    identity (the image's minor)
                                                -> local gpu_id + render minor
    open_device    the restored task            open /dev/kfd, check its version  a memfd "simgpu-kfd"
    restore_bos    the restored task            AMDKFD_IOC_CRIU_OP(RESTORE):      one memfd per VRAM/GTT BO
                                                BOs back at their VAs, dma-bufs
    restore_render the restored task            GEM_CREATE or PRIME import,       a memfd per created BO,
      _node                                     CHANGE_HANDLE, GEM_MMAP, GEM_VA   the exporter's for imports
    vma_target     the restored task            a dup of the GPU's DRM file, at   a dup of the BO's memfd,
                                                the BO's new mmap offset          at 0
    kfd_vma_target the restored task            None (/dev/kfd reopened by        a dup of the "simgpu-kfd"
                                                path) at KFD's new offset         memfd, at simgpu's offset
    vma_remaps     set by restore_bos in the    VRAM/GTT/doorbell/MMIO moves;     the same; doorbell/MMIO at
                   task, read by the plugin     /dev/kfd's: type | gpu_id<<46     small offsets of the memfd
    close_task     the restored task, once its  close the DRM files opened for    close the simulated DRM
      _files       device VMAs have their fds   KFD (it holds its own reference)  files, BO and kfd memfd dups
    fill           a fill-pool thread in the    SDMA copy from a staging buffer   pread/pwrite, GIL released
                   orchestrator (both modes),
                   once per chunk of a BO
    release_bo     the same thread, after the   free the imported BO handle       nothing
                   BO's last chunk
    prepare_fill   the GPU's fill thread in     open renderD<minor>, init SDMA    nothing
                   the orchestrator, per GPU
    resume         the orchestrator             AMDKFD_IOC_CRIU_OP(RESUME, pid)   record the pid
    close          the orchestrator, cleanup    close render fds, SDMA contexts   nothing

A backend object is created in the orchestrator (restore_init) and inherited by the forked
task, so it must not hold threads or locks at fork time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable

    from pycriu_restore.images.proto.amdgpu_pb2 import CriuKfd, CriuRenderNode


@dataclass(frozen=True)
class LocalGpu:
    """Where a checkpointed GPU lives on this machine: its KFD gpu_id and DRM render minor."""

    gpu_id: int
    minor: int


@dataclass(frozen=True)
class RestoredBo:
    """One VRAM/GTT buffer object re-created in the task by ``restore_bos``.

    ``index`` is the BO's position in the kfd image's ``bo_entries``; ``gpu_id`` is the
    checkpoint-time gpu_id (the key of the pages file); ``dmabuf_fd`` is owned by the task
    and closed by the plugin once the fill command is sent (the orchestrator has its own).
    ``restored_offset`` is the mmap offset the kernel gave the BO on restore: the VMA that
    mapped it at ``addr`` with the image's ``offset`` must now use this one.
    """

    index: int
    gpu_id: int
    size: int
    dmabuf_fd: int
    restored_offset: int
    addr: int
    old_offset: int = 0  # the image's mmap offset (KfdBoEntry.offset), for UPDATE_VMA_MAP
    local_gpu_id: int = 0  # the gpu_id on this machine (gpu_map[gpu_id]); 0 if unknown
    minor: int = 0  # the destination render minor (real GPU), 0 for simgpu


@dataclass(frozen=True)
class RestoredDrmBo:
    """One GEM object of a render-node file, re-created in the task's DRM file.

    ``index`` is its position in the CriuRenderNode's ``bo_entries``; ``handle`` the
    checkpointed GEM handle, which it has again. ``dmabuf_fd`` (owned by the caller) is
    the dma-buf of a created BO, -1 for an imported one (its exporter holds the memory).
    ``new_offset`` is where mmap() of the task's render fd finds it now (the VMA that
    used ``old_offset`` moves there), None when it cannot be CPU-mapped.
    """

    index: int
    handle: int
    size: int
    dmabuf_fd: int
    old_offset: int
    new_offset: int | None


@dataclass(frozen=True)
class VmaRemap:
    """A BO's VMA whose mmap offset changed on restore (UPDATE_VMA_MAP's input).

    The VMA at ``addr`` was mapped at ``old_offset`` of a device file and must now be
    mapped at ``new_offset``: for VRAM/GTT BOs, of the render node ``render_fd`` (the DRM
    file KFD created the BO through, the only one the kernel lets map it); for doorbell and
    MMIO BOs (``alloc_flags``), of /dev/kfd, whose offsets name the page type and the GPU.
    """

    addr: int
    old_offset: int
    new_offset: int
    alloc_flags: int
    local_gpu_id: int
    render_fd: int


@runtime_checkable
class GpuBackend(Protocol):
    """What a GPU backend provides. See the module docstring for which process calls what."""

    name: str
    # In the task, set by each restore_bos: the VMA offset changes of its BOs (VRAM, GTT,
    # doorbell, MMIO), in image order. The plugin moves the doorbell and MMIO VMAs with it.
    vma_remaps: list[VmaRemap]

    def map_gpus(self, kfd: CriuKfd) -> dict[int, LocalGpu]:
        """In the task: map every checkpoint gpu_id of ``kfd.device_entries`` to a local GPU.

        Raises a PycrestoreError subclass naming the GPU when no local GPU matches.
        """
        ...

    def open_device(self) -> int:
        """In the task: open the device and return the fd to install for the kfd EXT file."""
        ...

    def restore_bos(self, device_fd: int, kfd: CriuKfd, gpu_map: dict[int, int]) -> list[RestoredBo]:
        """In the task: re-create the image's BOs and return the VRAM/GTT ones with dma-buf fds.

        ``gpu_map`` maps checkpoint gpu_id -> local gpu_id. The returned list is in image
        order; BOs that are neither VRAM nor GTT (doorbell, MMIO) are re-created but have no
        contents to fill and are not returned.
        """
        ...

    def restore_render_node(self, node: CriuRenderNode, local: LocalGpu,
                            import_fd: Callable[[int], int]) -> tuple[int, list[RestoredDrmBo]]:
        """In the task: re-create a render-node file's BOs; return (its fd, the BOs).

        The fd is a new fd of the task's DRM file for ``local`` (the one KFD's VM lives in,
        as in CRIU: every render node of one GPU is that one file), owned by the caller.
        Each BO gets its checkpoint handle back and its GPU VM mappings; an imported BO
        (is_import) is the dma-buf ``import_fd(handle)`` returns, not a new one. BOs this
        DRM file already holds (an earlier render node of the same GPU) are skipped.
        """
        ...

    def render_fd(self, local_gpu_id: int) -> int:
        """In the task: the DRM file of a local GPU (VRAM and render-node VMAs map through it)."""
        ...

    def vma_target(self, local_gpu_id: int, offset: int) -> tuple[int, int]:
        """In the task: what a device VMA of the BO at mmap ``offset`` of the GPU's DRM file
        maps now: (pgoff, a new fd the caller closes). A real GPU: the DRM file itself at
        ``offset`` (the only file DRM lets map the BO); simgpu: the BO's own memfd at 0.
        """
        ...

    def kfd_vma_target(self, offset: int) -> tuple[int, int | None]:
        """In the task: what a /dev/kfd VMA (a doorbell or MMIO page) whose BO restore_bos
        moved to ``offset`` (its ``vma_remaps`` entry) maps now: (pgoff, fd or None).

        None makes the caller open the VMA's path, /dev/kfd, as CRIU does: KFD keeps one
        state per process, so any open of it in the task maps the task's doorbells
        (kfd_mmap dispatches by the offset's type and gpu_id). A new fd is the caller's to
        close. A real GPU: (``offset``, None); simgpu: a dup of its "simgpu-kfd" memfd.
        """
        ...

    def close_task_files(self) -> None:
        """In the task, once its fds are installed and its device VMAs have their fds: close
        every fd the backend opened in it (its DRM files, what vma_target and
        kfd_vma_target needed), so that the restored process holds only the fds of its image."""
        ...

    def fill(self, bo_fd: int, size: int, src_fd: int, src_offset: int, gpu_id: int,
             bo_offset: int = 0) -> None:
        """Copy ``size`` bytes from ``src_fd`` at ``src_offset`` into the BO behind ``bo_fd``,
        starting ``bo_offset`` bytes into the BO.

        Called from a fill-pool thread in the orchestrator (both modes); must release the
        GIL while it copies. ``gpu_id`` is the checkpoint id.
        The caller splits a BO into chunks (fillpool.copy_bo): ``fill`` is called many times
        for one ``bo_fd`` with increasing ``bo_offset``, never twice for the same bytes, and
        never for one ``bo_fd`` from two threads at once; a backend may cache per-BO state
        (an imported handle) keyed by ``bo_fd`` until ``release_bo(bo_fd)``. ``src_fd`` is
        shared by the threads of one GPU: read it with pread, never through its position.
        """
        ...

    def release_bo(self, bo_fd: int) -> None:
        """The last ``fill`` for ``bo_fd`` is done (or abandoned): drop what was cached for it.

        The caller closes ``bo_fd`` itself right after.
        """
        ...

    def prepare_fill(self, gpu_id: int, local: LocalGpu) -> None:
        """Before the first ``fill`` for ``gpu_id``, in the thread that will fill it.

        Runs in the orchestrator's worker thread for that GPU. Workers of different GPUs
        call it at the same time: a backend guards what it shares. ``local`` is what the
        task's ``map_gpus`` chose, sent over the channel; a real backend opens
        /dev/dri/renderD<minor> here. Called again for every command that names the GPU:
        it must be idempotent.
        """
        ...

    def resume(self, pid: int) -> None:
        """In the orchestrator, after every BO is filled and the blob is gone: start the GPU."""
        ...

    def close(self) -> None:
        """Orchestrator, at cleanup (success or not): release what prepare_fill opened.

        Idempotent. The fill threads have all ended when this is called.
        """
        ...
