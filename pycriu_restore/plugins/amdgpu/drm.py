"""The DRM render-node ABI the SDMA copy path uses: <drm/drm.h> and <drm/amdgpu_drm.h>.

A render node (/dev/dri/renderD<minor>) is a GPU as a file: each open of it is a DRM
"file" with its own GEM handle table and its own GPU virtual address space (VM). The
VRAM fill uses one such file, opened by the process that copies (never the one the task
handed to KFD, whose VM holds the task's BOs at their original addresses):

    step                          ioctl                          kept as
    ----------------------------  -----------------------------  ---------------------------
    family, VA range of the GPU   AMDGPU_INFO(DEV_INFO)          DeviceInfo
    staging memory -> GEM handle  AMDGPU_GEM_USERPTR             handle (src of the copy)
    dma-buf fd -> GEM handle      PRIME_FD_TO_HANDLE             handle (dst of the copy)
    indirect buffer (IB)          AMDGPU_GEM_CREATE + GEM_MMAP   handle, CPU mapping
    GPU addresses for all three   AMDGPU_GEM_VA(MAP / UNMAP)     VAs from our allocator
    a submission context          AMDGPU_CTX(ALLOC / FREE)       ctx_id
    run the IB on the SDMA ring   AMDGPU_CS (IB + BO_HANDLES)    sequence number
    wait for it                   AMDGPU_WAIT_CS                 -
    release handles               GEM_CLOSE                      -

Structs and numbers mirror libdrm-dev's copies of the kernel uapi headers
(/usr/include/libdrm/drm.h and amdgpu_drm.h, libdrm 2.4.114); tests/test_amdgpu_abi.py
compiles C against them and compares every size, offset and number. Newer kernels have
grown some of these structs (drm_amdgpu_gem_va is 64 bytes in 6.16+, so their
DRM_IOCTL_AMDGPU_GEM_VA reads 0x40406448): drm_ioctl() copies the caller's smaller struct
and zero-fills the rest, so the older layout keeps working, with the new fields unused.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from pycriu_restore.plugins.amdgpu.ioctl import call_ioctl, iow, iowr, open_device

# --- <drm/drm.h> ---------------------------------------------------------------------------

DRM_IOCTL_BASE = "d"
DRM_COMMAND_BASE = 0x40  # driver-specific ioctls start here
DRM_CLOEXEC = os.O_CLOEXEC  # drm_prime_handle.flags: the dma-buf fd gets O_CLOEXEC
DRM_RDWR = os.O_RDWR        # drm_prime_handle.flags: the dma-buf may be mmapped writable

# Where render nodes live; KFD topology's drm_render_minor names renderD<minor> here.
DRM_RENDER_DEV_DIR = "/dev/dri"


class DrmGemClose(ctypes.Structure):
    """``struct drm_gem_close``."""

    _fields_ = [("handle", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class DrmPrimeHandle(ctypes.Structure):
    """``struct drm_prime_handle``: a GEM handle <-> dma-buf fd conversion."""

    _fields_ = [
        ("handle", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),  # DRM_CLOEXEC | DRM_RDWR, handle -> fd only
        ("fd", ctypes.c_int32),
    ]


class DrmGemChangeHandle(ctypes.Structure):
    """``struct drm_gem_change_handle`` (Linux 6.18 uapi drm.h; CRIU ships a copy in
    plugins/amdgpu/drm.h): give a GEM object the handle it had at checkpoint time."""

    _fields_ = [("handle", ctypes.c_uint32), ("new_handle", ctypes.c_uint32)]


DRM_IOCTL_GEM_CLOSE = iow(DRM_IOCTL_BASE, 0x09, DrmGemClose)
# Newer than the libdrm-dev headers the ABI test compiles against: checked by value there.
DRM_IOCTL_GEM_CHANGE_HANDLE = iowr(DRM_IOCTL_BASE, 0xD2, DrmGemChangeHandle)
DRM_IOCTL_PRIME_HANDLE_TO_FD = iowr(DRM_IOCTL_BASE, 0x2D, DrmPrimeHandle)
DRM_IOCTL_PRIME_FD_TO_HANDLE = iowr(DRM_IOCTL_BASE, 0x2E, DrmPrimeHandle)

# --- <drm/amdgpu_drm.h>: constants ---------------------------------------------------------

DRM_AMDGPU_GEM_CREATE = 0x00
DRM_AMDGPU_GEM_MMAP = 0x01
DRM_AMDGPU_CTX = 0x02
DRM_AMDGPU_BO_LIST = 0x03
DRM_AMDGPU_CS = 0x04
DRM_AMDGPU_INFO = 0x05
DRM_AMDGPU_GEM_VA = 0x08
DRM_AMDGPU_WAIT_CS = 0x09
DRM_AMDGPU_GEM_USERPTR = 0x11

AMDGPU_GEM_DOMAIN_CPU = 0x1
AMDGPU_GEM_DOMAIN_GTT = 0x2
AMDGPU_GEM_DOMAIN_VRAM = 0x4

AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED = 1 << 0

AMDGPU_BO_LIST_OP_CREATE = 0
AMDGPU_BO_LIST_OP_DESTROY = 1

AMDGPU_CTX_OP_ALLOC_CTX = 1
AMDGPU_CTX_OP_FREE_CTX = 2
AMDGPU_CTX_PRIORITY_NORMAL = 0

AMDGPU_GEM_USERPTR_READONLY = 1 << 0
AMDGPU_GEM_USERPTR_ANONONLY = 1 << 1
AMDGPU_GEM_USERPTR_VALIDATE = 1 << 2
AMDGPU_GEM_USERPTR_REGISTER = 1 << 3

AMDGPU_VA_OP_MAP = 1
AMDGPU_VA_OP_UNMAP = 2
AMDGPU_VM_PAGE_READABLE = 1 << 1
AMDGPU_VM_PAGE_WRITEABLE = 1 << 2
AMDGPU_VM_PAGE_EXECUTABLE = 1 << 3

AMDGPU_HW_IP_DMA = 2  # the SDMA engines

AMDGPU_CHUNK_ID_IB = 0x01
AMDGPU_CHUNK_ID_BO_HANDLES = 0x06

AMDGPU_INFO_DEV_INFO = 0x16

# drm_amdgpu_info_device.family: GPU generations, oldest first.
AMDGPU_FAMILY_UNKNOWN = 0
AMDGPU_FAMILY_SI = 110   # Southern Islands: a "DMA" engine, not SDMA
AMDGPU_FAMILY_CI = 120   # Sea Islands: SDMA 2.0 (cik_sdma)
AMDGPU_FAMILY_KV = 125
AMDGPU_FAMILY_VI = 130   # Volcanic Islands: SDMA 2.4 / 3.0
AMDGPU_FAMILY_CZ = 135
AMDGPU_FAMILY_AI = 141   # Vega10 (GFX9): SDMA 4.0 and every later generation
AMDGPU_FAMILY_RV = 142
AMDGPU_FAMILY_NV = 143

# libdrm <amdgpu.h>: "wait forever" for WAIT_CS's absolute timeout (the kernel reads a
# negative s64 as no timeout).
AMDGPU_TIMEOUT_INFINITE = 0xFFFFFFFFFFFFFFFF


# --- <drm/amdgpu_drm.h>: structs -----------------------------------------------------------

class DrmAmdgpuGemCreateIn(ctypes.Structure):
    """``struct drm_amdgpu_gem_create_in``."""

    _fields_ = [
        ("bo_size", ctypes.c_uint64),
        ("alignment", ctypes.c_uint64),
        ("domains", ctypes.c_uint64),       # AMDGPU_GEM_DOMAIN_*
        ("domain_flags", ctypes.c_uint64),  # AMDGPU_GEM_CREATE_*
    ]


class DrmAmdgpuGemCreateOut(ctypes.Structure):
    """``struct drm_amdgpu_gem_create_out``."""

    _fields_ = [("handle", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class DrmAmdgpuGemCreate(ctypes.Union):
    """``union drm_amdgpu_gem_create``."""

    _fields_ = [("in_", DrmAmdgpuGemCreateIn), ("out", DrmAmdgpuGemCreateOut)]


class DrmAmdgpuGemMmapIn(ctypes.Structure):
    """``struct drm_amdgpu_gem_mmap_in``."""

    _fields_ = [("handle", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class DrmAmdgpuGemMmapOut(ctypes.Structure):
    """``struct drm_amdgpu_gem_mmap_out``: the fake offset to mmap the render node at."""

    _fields_ = [("addr_ptr", ctypes.c_uint64)]


class DrmAmdgpuGemMmap(ctypes.Union):
    """``union drm_amdgpu_gem_mmap``."""

    _fields_ = [("in_", DrmAmdgpuGemMmapIn), ("out", DrmAmdgpuGemMmapOut)]


class DrmAmdgpuGemVa(ctypes.Structure):
    """``struct drm_amdgpu_gem_va``: map or unmap a BO range in this file's GPU VM."""

    _fields_ = [
        ("handle", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("operation", ctypes.c_uint32),   # AMDGPU_VA_OP_*
        ("flags", ctypes.c_uint32),       # AMDGPU_VM_PAGE_*
        ("va_address", ctypes.c_uint64),
        ("offset_in_bo", ctypes.c_uint64),
        ("map_size", ctypes.c_uint64),
    ]


class DrmAmdgpuGemUserptr(ctypes.Structure):
    """``struct drm_amdgpu_gem_userptr``: user memory as a GEM object (the staging buffer)."""

    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),   # AMDGPU_GEM_USERPTR_*
        ("handle", ctypes.c_uint32),
    ]


class DrmAmdgpuBoListIn(ctypes.Structure):
    """``struct drm_amdgpu_bo_list_in``: also the payload of a BO_HANDLES CS chunk."""

    _fields_ = [
        ("operation", ctypes.c_uint32),
        ("list_handle", ctypes.c_uint32),
        ("bo_number", ctypes.c_uint32),
        ("bo_info_size", ctypes.c_uint32),  # sizeof(DrmAmdgpuBoListEntry)
        ("bo_info_ptr", ctypes.c_uint64),   # -> DrmAmdgpuBoListEntry[bo_number]
    ]


class DrmAmdgpuBoListEntry(ctypes.Structure):
    """``struct drm_amdgpu_bo_list_entry``."""

    _fields_ = [("bo_handle", ctypes.c_uint32), ("bo_priority", ctypes.c_uint32)]


class DrmAmdgpuBoListOut(ctypes.Structure):
    """``struct drm_amdgpu_bo_list_out``."""

    _fields_ = [("list_handle", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class DrmAmdgpuBoList(ctypes.Union):
    """``union drm_amdgpu_bo_list``."""

    _fields_ = [("in_", DrmAmdgpuBoListIn), ("out", DrmAmdgpuBoListOut)]


class DrmAmdgpuCtxIn(ctypes.Structure):
    """``struct drm_amdgpu_ctx_in``."""

    _fields_ = [
        ("op", ctypes.c_uint32),        # AMDGPU_CTX_OP_*
        ("flags", ctypes.c_uint32),
        ("ctx_id", ctypes.c_uint32),
        ("priority", ctypes.c_int32),   # AMDGPU_CTX_PRIORITY_*
    ]


class _CtxOutAlloc(ctypes.Structure):
    _fields_ = [("ctx_id", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _CtxOutState(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("hangs", ctypes.c_uint32),
                ("reset_status", ctypes.c_uint32)]


class DrmAmdgpuCtxOut(ctypes.Union):
    """``union drm_amdgpu_ctx_out`` (the ``alloc`` and ``state`` arms)."""

    _fields_ = [("alloc", _CtxOutAlloc), ("state", _CtxOutState)]


class DrmAmdgpuCtx(ctypes.Union):
    """``union drm_amdgpu_ctx``."""

    _fields_ = [("in_", DrmAmdgpuCtxIn), ("out", DrmAmdgpuCtxOut)]


class DrmAmdgpuCsChunk(ctypes.Structure):
    """``struct drm_amdgpu_cs_chunk``: one typed piece of a command submission."""

    _fields_ = [
        ("chunk_id", ctypes.c_uint32),    # AMDGPU_CHUNK_ID_*
        ("length_dw", ctypes.c_uint32),   # size of *chunk_data in dwords
        ("chunk_data", ctypes.c_uint64),  # -> the chunk's struct
    ]


class DrmAmdgpuCsIn(ctypes.Structure):
    """``struct drm_amdgpu_cs_in``."""

    _fields_ = [
        ("ctx_id", ctypes.c_uint32),
        ("bo_list_handle", ctypes.c_uint32),  # 0: the BOs come in a BO_HANDLES chunk
        ("num_chunks", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("chunks", ctypes.c_uint64),          # -> u64[num_chunks], each -> a chunk
    ]


class DrmAmdgpuCsOut(ctypes.Structure):
    """``struct drm_amdgpu_cs_out``: the submission's sequence number."""

    _fields_ = [("handle", ctypes.c_uint64)]


class DrmAmdgpuCs(ctypes.Union):
    """``union drm_amdgpu_cs``."""

    _fields_ = [("in_", DrmAmdgpuCsIn), ("out", DrmAmdgpuCsOut)]


class DrmAmdgpuCsChunkIb(ctypes.Structure):
    """``struct drm_amdgpu_cs_chunk_ib``: where the IB is and which ring runs it."""

    _fields_ = [
        ("_pad", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("va_start", ctypes.c_uint64),
        ("ib_bytes", ctypes.c_uint32),
        ("ip_type", ctypes.c_uint32),      # AMDGPU_HW_IP_DMA
        ("ip_instance", ctypes.c_uint32),
        ("ring", ctypes.c_uint32),
    ]


class DrmAmdgpuWaitCsIn(ctypes.Structure):
    """``struct drm_amdgpu_wait_cs_in``."""

    _fields_ = [
        ("handle", ctypes.c_uint64),    # the CS sequence number
        ("timeout", ctypes.c_uint64),   # absolute, ns; AMDGPU_TIMEOUT_INFINITE
        ("ip_type", ctypes.c_uint32),
        ("ip_instance", ctypes.c_uint32),
        ("ring", ctypes.c_uint32),
        ("ctx_id", ctypes.c_uint32),
    ]


class DrmAmdgpuWaitCsOut(ctypes.Structure):
    """``struct drm_amdgpu_wait_cs_out``: 0 done, 1 still busy."""

    _fields_ = [("status", ctypes.c_uint64)]


class DrmAmdgpuWaitCs(ctypes.Union):
    """``union drm_amdgpu_wait_cs``."""

    _fields_ = [("in_", DrmAmdgpuWaitCsIn), ("out", DrmAmdgpuWaitCsOut)]


class _InfoQueryHwIp(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("ip_instance", ctypes.c_uint32)]


class DrmAmdgpuQueryFw(ctypes.Structure):
    """``struct drm_amdgpu_query_fw`` (sizes the query union of drm_amdgpu_info)."""

    _fields_ = [("fw_type", ctypes.c_uint32), ("ip_instance", ctypes.c_uint32),
                ("index", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _InfoQuery(ctypes.Union):
    _fields_ = [("query_hw_ip", _InfoQueryHwIp), ("query_fw", DrmAmdgpuQueryFw)]


class DrmAmdgpuInfo(ctypes.Structure):
    """``struct drm_amdgpu_info``: the kernel writes up to return_size bytes to the pointer."""

    _anonymous_ = ("u",)
    _fields_ = [
        ("return_pointer", ctypes.c_uint64),
        ("return_size", ctypes.c_uint32),
        ("query", ctypes.c_uint32),         # AMDGPU_INFO_*
        ("u", _InfoQuery),                  # anonymous union in C
    ]


class DrmAmdgpuInfoDevice(ctypes.Structure):
    """``struct drm_amdgpu_info_device`` as of libdrm 2.4.114 (AMDGPU_INFO_DEV_INFO).

    The kernel copies min(return_size, its own size): newer kernels with a longer struct
    fill the prefix we know. We read ``family`` and the virtual address range.
    """

    _fields_ = [
        ("device_id", ctypes.c_uint32),
        ("chip_rev", ctypes.c_uint32),
        ("external_rev", ctypes.c_uint32),
        ("pci_rev", ctypes.c_uint32),
        ("family", ctypes.c_uint32),                     # AMDGPU_FAMILY_*
        ("num_shader_engines", ctypes.c_uint32),
        ("num_shader_arrays_per_engine", ctypes.c_uint32),
        ("gpu_counter_freq", ctypes.c_uint32),
        ("max_engine_clock", ctypes.c_uint64),
        ("max_memory_clock", ctypes.c_uint64),
        ("cu_active_number", ctypes.c_uint32),
        ("cu_ao_mask", ctypes.c_uint32),
        ("cu_bitmap", (ctypes.c_uint32 * 4) * 4),
        ("enabled_rb_pipes_mask", ctypes.c_uint32),
        ("num_rb_pipes", ctypes.c_uint32),
        ("num_hw_gfx_contexts", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("ids_flags", ctypes.c_uint64),
        ("virtual_address_offset", ctypes.c_uint64),     # first VA user space may use
        ("virtual_address_max", ctypes.c_uint64),        # end of the low VA range
        ("virtual_address_alignment", ctypes.c_uint32),
        ("pte_fragment_size", ctypes.c_uint32),
        ("gart_page_size", ctypes.c_uint32),
        ("ce_ram_size", ctypes.c_uint32),
        ("vram_type", ctypes.c_uint32),
        ("vram_bit_width", ctypes.c_uint32),
        ("vce_harvest_config", ctypes.c_uint32),
        ("gc_double_offchip_lds_buf", ctypes.c_uint32),
        ("prim_buf_gpu_addr", ctypes.c_uint64),
        ("pos_buf_gpu_addr", ctypes.c_uint64),
        ("cntl_sb_buf_gpu_addr", ctypes.c_uint64),
        ("param_buf_gpu_addr", ctypes.c_uint64),
        ("prim_buf_size", ctypes.c_uint32),
        ("pos_buf_size", ctypes.c_uint32),
        ("cntl_sb_buf_size", ctypes.c_uint32),
        ("param_buf_size", ctypes.c_uint32),
        ("wave_front_size", ctypes.c_uint32),
        ("num_shader_visible_vgprs", ctypes.c_uint32),
        ("num_cu_per_sh", ctypes.c_uint32),
        ("num_tcc_blocks", ctypes.c_uint32),
        ("gs_vgt_table_depth", ctypes.c_uint32),
        ("gs_prim_buffer_depth", ctypes.c_uint32),
        ("max_gs_waves_per_vgt", ctypes.c_uint32),
        ("_pad1", ctypes.c_uint32),
        ("cu_ao_bitmap", (ctypes.c_uint32 * 4) * 4),
        ("high_va_offset", ctypes.c_uint64),
        ("high_va_max", ctypes.c_uint64),
        ("pa_sc_tile_steering_override", ctypes.c_uint32),
        ("tcc_disabled_mask", ctypes.c_uint64),
    ]


# --- <drm/amdgpu_drm.h>: ioctl numbers -----------------------------------------------------

DRM_IOCTL_AMDGPU_GEM_CREATE = iowr(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_GEM_CREATE,
                                   DrmAmdgpuGemCreate)
DRM_IOCTL_AMDGPU_GEM_MMAP = iowr(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_GEM_MMAP,
                                 DrmAmdgpuGemMmap)
DRM_IOCTL_AMDGPU_CTX = iowr(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_CTX, DrmAmdgpuCtx)
DRM_IOCTL_AMDGPU_BO_LIST = iowr(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_BO_LIST,
                                DrmAmdgpuBoList)
DRM_IOCTL_AMDGPU_CS = iowr(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_CS, DrmAmdgpuCs)
DRM_IOCTL_AMDGPU_INFO = iow(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_INFO, DrmAmdgpuInfo)
DRM_IOCTL_AMDGPU_GEM_VA = iow(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_GEM_VA,
                              DrmAmdgpuGemVa)
DRM_IOCTL_AMDGPU_WAIT_CS = iowr(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_WAIT_CS,
                                DrmAmdgpuWaitCs)
DRM_IOCTL_AMDGPU_GEM_USERPTR = iowr(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_AMDGPU_GEM_USERPTR,
                                    DrmAmdgpuGemUserptr)

# C type name -> mirror, for tests/test_amdgpu_abi.py.
STRUCTS: dict[str, type[ctypes.Structure] | type[ctypes.Union]] = {
    "struct drm_gem_close": DrmGemClose,
    "struct drm_prime_handle": DrmPrimeHandle,
    "struct drm_amdgpu_gem_create_in": DrmAmdgpuGemCreateIn,
    "struct drm_amdgpu_gem_create_out": DrmAmdgpuGemCreateOut,
    "union drm_amdgpu_gem_create": DrmAmdgpuGemCreate,
    "struct drm_amdgpu_gem_mmap_in": DrmAmdgpuGemMmapIn,
    "struct drm_amdgpu_gem_mmap_out": DrmAmdgpuGemMmapOut,
    "union drm_amdgpu_gem_mmap": DrmAmdgpuGemMmap,
    "struct drm_amdgpu_gem_va": DrmAmdgpuGemVa,
    "struct drm_amdgpu_gem_userptr": DrmAmdgpuGemUserptr,
    "struct drm_amdgpu_bo_list_in": DrmAmdgpuBoListIn,
    "struct drm_amdgpu_bo_list_entry": DrmAmdgpuBoListEntry,
    "struct drm_amdgpu_bo_list_out": DrmAmdgpuBoListOut,
    "union drm_amdgpu_bo_list": DrmAmdgpuBoList,
    "struct drm_amdgpu_ctx_in": DrmAmdgpuCtxIn,
    "union drm_amdgpu_ctx_out": DrmAmdgpuCtxOut,
    "union drm_amdgpu_ctx": DrmAmdgpuCtx,
    "struct drm_amdgpu_cs_chunk": DrmAmdgpuCsChunk,
    "struct drm_amdgpu_cs_in": DrmAmdgpuCsIn,
    "struct drm_amdgpu_cs_out": DrmAmdgpuCsOut,
    "union drm_amdgpu_cs": DrmAmdgpuCs,
    "struct drm_amdgpu_cs_chunk_ib": DrmAmdgpuCsChunkIb,
    "struct drm_amdgpu_wait_cs_in": DrmAmdgpuWaitCsIn,
    "struct drm_amdgpu_wait_cs_out": DrmAmdgpuWaitCsOut,
    "union drm_amdgpu_wait_cs": DrmAmdgpuWaitCs,
    "struct drm_amdgpu_query_fw": DrmAmdgpuQueryFw,
    "struct drm_amdgpu_info": DrmAmdgpuInfo,
    "struct drm_amdgpu_info_device": DrmAmdgpuInfoDevice,
}


# --- wrappers: one call each, errors name the ioctl and the render node -------------------

def render_node_path(minor: int, dev_dir: str = DRM_RENDER_DEV_DIR) -> str:
    """/dev/dri/renderD<minor>."""
    return os.path.join(dev_dir, f"renderD{minor}")


def open_render_node(minor: int, dev_dir: str = DRM_RENDER_DEV_DIR) -> int:
    """Open render node ``minor`` read-write, close-on-exec; a new DRM file (its own VM)."""
    return open_device(render_node_path(minor, dev_dir))


def query_device_info(fd: int, device: str) -> DrmAmdgpuInfoDevice:
    """AMDGPU_INFO(DEV_INFO): family, VA range and the rest of the GPU's description."""
    out = DrmAmdgpuInfoDevice()
    req = DrmAmdgpuInfo(return_pointer=ctypes.addressof(out), return_size=ctypes.sizeof(out),
                        query=AMDGPU_INFO_DEV_INFO)
    call_ioctl(fd, DRM_IOCTL_AMDGPU_INFO, req, "DRM_IOCTL_AMDGPU_INFO(DEV_INFO)", device)
    return out


def prime_fd_to_handle(fd: int, dmabuf_fd: int, device: str) -> int:
    """Import a dma-buf into this DRM file: its GEM handle (close with :func:`gem_close`)."""
    arg = DrmPrimeHandle(fd=dmabuf_fd)
    call_ioctl(fd, DRM_IOCTL_PRIME_FD_TO_HANDLE, arg, "DRM_IOCTL_PRIME_FD_TO_HANDLE", device)
    return int(arg.handle)


def prime_handle_to_fd(fd: int, handle: int, device: str,
                       flags: int = DRM_CLOEXEC | DRM_RDWR) -> int:
    """Export GEM ``handle`` as a new dma-buf fd (owned by the caller)."""
    arg = DrmPrimeHandle(handle=handle, flags=flags)
    call_ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, arg, "DRM_IOCTL_PRIME_HANDLE_TO_FD", device)
    return int(arg.fd)


def gem_close(fd: int, handle: int, device: str) -> None:
    """Drop this DRM file's reference ``handle`` (the object lives on if others hold it)."""
    call_ioctl(fd, DRM_IOCTL_GEM_CLOSE, DrmGemClose(handle=handle), "DRM_IOCTL_GEM_CLOSE",
               device)


def gem_change_handle(fd: int, handle: int, new_handle: int, device: str) -> None:
    """DRM_IOCTL_GEM_CHANGE_HANDLE: the object at ``handle`` is at ``new_handle`` from now on.

    ``new_handle`` must be free in this DRM file; the old handle is gone afterwards, and
    PRIME_FD_TO_HANDLE answers the new one. Kernels before 6.18 lack it (EINVAL/ENOTTY).
    """
    call_ioctl(fd, DRM_IOCTL_GEM_CHANGE_HANDLE, DrmGemChangeHandle(handle=handle, new_handle=new_handle),
               "DRM_IOCTL_GEM_CHANGE_HANDLE", device)


def gem_create(fd: int, size_bytes: int, alignment_bytes: int, domains: int, flags: int,
               device: str) -> int:
    """AMDGPU_GEM_CREATE: a new BO in ``domains``; its GEM handle."""
    arg = DrmAmdgpuGemCreate()
    arg.in_ = DrmAmdgpuGemCreateIn(bo_size=size_bytes, alignment=alignment_bytes,
                                   domains=domains, domain_flags=flags)
    call_ioctl(fd, DRM_IOCTL_AMDGPU_GEM_CREATE, arg, "DRM_IOCTL_AMDGPU_GEM_CREATE", device)
    return int(arg.out.handle)


def gem_mmap_offset(fd: int, handle: int, device: str) -> int:
    """AMDGPU_GEM_MMAP: the offset at which mmap() of this render fd maps ``handle``."""
    arg = DrmAmdgpuGemMmap()
    arg.in_.handle = handle
    call_ioctl(fd, DRM_IOCTL_AMDGPU_GEM_MMAP, arg, "DRM_IOCTL_AMDGPU_GEM_MMAP", device)
    return int(arg.out.addr_ptr)


def gem_userptr(fd: int, addr: int, size_bytes: int, flags: int, device: str) -> int:
    """AMDGPU_GEM_USERPTR: page-aligned user memory as a GEM object; its handle."""
    arg = DrmAmdgpuGemUserptr(addr=addr, size=size_bytes, flags=flags)
    call_ioctl(fd, DRM_IOCTL_AMDGPU_GEM_USERPTR, arg, "DRM_IOCTL_AMDGPU_GEM_USERPTR", device)
    return int(arg.handle)


def gem_va(fd: int, handle: int, operation: int, va: int, size_bytes: int, device: str,
           flags: int = 0, offset_in_bo: int = 0) -> None:
    """AMDGPU_GEM_VA: map (or unmap) ``size_bytes`` of ``handle`` at GPU address ``va``."""
    arg = DrmAmdgpuGemVa(handle=handle, operation=operation, flags=flags, va_address=va,
                         offset_in_bo=offset_in_bo, map_size=size_bytes)
    op_name = {AMDGPU_VA_OP_MAP: "MAP", AMDGPU_VA_OP_UNMAP: "UNMAP"}.get(operation, operation)
    call_ioctl(fd, DRM_IOCTL_AMDGPU_GEM_VA, arg, f"DRM_IOCTL_AMDGPU_GEM_VA({op_name})", device)


def ctx_alloc(fd: int, device: str) -> int:
    """AMDGPU_CTX(ALLOC_CTX): a submission context at normal priority; its id."""
    arg = DrmAmdgpuCtx()
    arg.in_ = DrmAmdgpuCtxIn(op=AMDGPU_CTX_OP_ALLOC_CTX, priority=AMDGPU_CTX_PRIORITY_NORMAL)
    call_ioctl(fd, DRM_IOCTL_AMDGPU_CTX, arg, "DRM_IOCTL_AMDGPU_CTX(ALLOC)", device)
    return int(arg.out.alloc.ctx_id)


def ctx_free(fd: int, ctx_id: int, device: str) -> None:
    """AMDGPU_CTX(FREE_CTX)."""
    arg = DrmAmdgpuCtx()
    arg.in_ = DrmAmdgpuCtxIn(op=AMDGPU_CTX_OP_FREE_CTX, ctx_id=ctx_id)
    call_ioctl(fd, DRM_IOCTL_AMDGPU_CTX, arg, "DRM_IOCTL_AMDGPU_CTX(FREE)", device)


def cs_submit_ib(fd: int, ctx_id: int, ib_va: int, ib_bytes: int, bo_handles: Sequence[int],
                 ip_type: int, ring: int, device: str) -> int:
    """AMDGPU_CS: run one IB of ``ib_bytes`` at GPU address ``ib_va``; its sequence number.

    ``bo_handles`` are every BO the IB touches (including the IB's own); they travel in
    an AMDGPU_CHUNK_ID_BO_HANDLES chunk, so no BO list object is created or destroyed.
    """
    entries = (DrmAmdgpuBoListEntry * len(bo_handles))(
        *(DrmAmdgpuBoListEntry(bo_handle=h) for h in bo_handles))
    bo_list = DrmAmdgpuBoListIn(operation=0xFFFFFFFF, list_handle=0xFFFFFFFF,
                                bo_number=len(bo_handles),
                                bo_info_size=ctypes.sizeof(DrmAmdgpuBoListEntry),
                                bo_info_ptr=ctypes.addressof(entries))
    ib = DrmAmdgpuCsChunkIb(va_start=ib_va, ib_bytes=ib_bytes, ip_type=ip_type, ring=ring)
    chunks = (DrmAmdgpuCsChunk * 2)(
        DrmAmdgpuCsChunk(chunk_id=AMDGPU_CHUNK_ID_IB, length_dw=ctypes.sizeof(ib) // 4,
                         chunk_data=ctypes.addressof(ib)),
        DrmAmdgpuCsChunk(chunk_id=AMDGPU_CHUNK_ID_BO_HANDLES,
                         length_dw=ctypes.sizeof(bo_list) // 4,
                         chunk_data=ctypes.addressof(bo_list)))
    chunk_ptrs = (ctypes.c_uint64 * 2)(ctypes.addressof(chunks[0]), ctypes.addressof(chunks[1]))
    arg = DrmAmdgpuCs()
    arg.in_ = DrmAmdgpuCsIn(ctx_id=ctx_id, num_chunks=2, chunks=ctypes.addressof(chunk_ptrs))
    call_ioctl(fd, DRM_IOCTL_AMDGPU_CS, arg, "DRM_IOCTL_AMDGPU_CS", device)
    return int(arg.out.handle)


def wait_cs(fd: int, ctx_id: int, seq: int, ip_type: int, ring: int, device: str,
            timeout_ns: int = AMDGPU_TIMEOUT_INFINITE) -> bool:
    """AMDGPU_WAIT_CS: block (GIL released) until submission ``seq`` is done; True if done."""
    arg = DrmAmdgpuWaitCs()
    arg.in_ = DrmAmdgpuWaitCsIn(handle=seq, timeout=timeout_ns, ip_type=ip_type, ring=ring,
                                ctx_id=ctx_id)
    call_ioctl(fd, DRM_IOCTL_AMDGPU_WAIT_CS, arg, "DRM_IOCTL_AMDGPU_WAIT_CS", device)
    return int(arg.out.status) == 0
