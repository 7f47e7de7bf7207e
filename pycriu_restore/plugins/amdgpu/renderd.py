"""A render-node file's GEM objects, re-created in the task's DRM file (real GPU).

CRIU's amdgpu_plugin_drm_restore_file, per BO of amdgpu-renderD-<id>.img, in the task::

    is_import?  yes: the exporter's dma-buf ── PRIME_FD_TO_HANDLE ──► handle h
                no:  AMDGPU_GEM_CREATE(size, alignment, domains, flags) ──► h,
                     PRIME_HANDLE_TO_FD(h) ──► its dma-buf (filled later, shared by handle)
    GEM_CHANGE_HANDLE(h -> the checkpointed handle)     the task's code uses that number
    AMDGPU_GEM_MMAP(handle) ──► the new mmap offset     its VMA moves there
    AMDGPU_GEM_VA(MAP) per VM entry                     the GPU sees it at the old addresses

The DRM file is the one KFD's RESTORE got for that GPU (kfd_backend.py): CRIU opens one
render fd per GPU and hands it both to KFD and to every render node of that GPU, so the
task's handles, KFD's VM and the task's mmaps all live in one file.

Differences from upstream, on purpose: an imported BO takes its exporter's memory and is
never filled again (CRIU filled it a second time from its own drm-pages file); a BO that
cannot be CPU-mapped (NO_CPU_ACCESS) gets no GEM_MMAP (which the kernel refuses with
EPERM) instead of failing the restore; on failure every dma-buf made here is closed
(CRIU's exit path closed fd 0 for every skipped BO: its array was zero-filled).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pycriu_restore.plugins.amdgpu import drm
from pycriu_restore.plugins.amdgpu.backend import RestoredDrmBo

# <drm/amdgpu_drm.h> AMDGPU_GEM_CREATE_NO_CPU_ACCESS: amdgpu_mode_dumb_mmap refuses such BOs.
AMDGPU_GEM_CREATE_NO_CPU_ACCESS = 1 << 1


def restore_render_bos(render_fd: int, node: Any, import_fd: Callable[[int], int], device: str,
                       done: set[int]) -> list[RestoredDrmBo]:
    """Re-create the BOs of ``node`` (a CriuRenderNode) in the DRM file ``render_fd``.

    Precondition: ``render_fd`` is the task's DRM file for the node's GPU and KFD's RESTORE
    has run (its BOs are the exporters of KFD-shared handles). ``import_fd(handle)`` returns
    a dma-buf fd (not ours) of the exporter of ``handle``. ``done`` holds the handles this
    DRM file already has again (CRIU's work_already_completed); it is updated. Returns the
    BOs in image order; the dma-bufs of created BOs are the caller's.
    """
    out: list[RestoredDrmBo] = []
    try:
        for index, bo in enumerate(node.bo_entries):
            if bo.handle in done:
                continue
            dmabuf_fd = -1
            if bo.is_import:
                handle = drm.prime_fd_to_handle(render_fd, import_fd(bo.handle), device)
            else:
                handle = drm.gem_create(render_fd, bo.size, bo.alignment, bo.preferred_domains,
                                        bo.alloc_flags, device)
                dmabuf_fd = drm.prime_handle_to_fd(render_fd, handle, device)
            restored = RestoredDrmBo(index=index, handle=bo.handle, size=bo.size, dmabuf_fd=dmabuf_fd,
                                     old_offset=bo.offset, new_offset=None)
            out.append(restored)  # from here on its dma-buf is released on failure
            if handle != bo.handle:
                # Before GEM_MMAP and GEM_VA: they name the BO by the handle it keeps.
                drm.gem_change_handle(render_fd, handle, bo.handle, device)
            done.add(bo.handle)
            new_offset = None
            if not bo.alloc_flags & AMDGPU_GEM_CREATE_NO_CPU_ACCESS:
                new_offset = drm.gem_mmap_offset(render_fd, bo.handle, device)
            for vm in bo.vm_entries:
                drm.gem_va(render_fd, bo.handle, drm.AMDGPU_VA_OP_MAP, vm.addr, vm.size, device,
                           flags=vm.flags, offset_in_bo=vm.offset)
            out[-1] = RestoredDrmBo(index=index, handle=bo.handle, size=bo.size, dmabuf_fd=dmabuf_fd,
                                    old_offset=bo.offset, new_offset=new_offset)
    except BaseException:
        for restored in out:
            if restored.dmabuf_fd >= 0:
                os.close(restored.dmabuf_fd)
        raise
    return out
