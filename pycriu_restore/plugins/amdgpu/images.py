"""The amdgpu plugin's images: one kfd image per /dev/kfd file, one pages file per GPU.

CRIU's amdgpu plugin writes, for the /dev/kfd file whose ExtFileEntry id is <id>:

    amdgpu-kfd-<id>.img                   u64 size, then one CriuKfd message (Framing.PLUGIN):
                                          the GPUs (device_entries) and every BO (bo_entries)
    amdgpu-pages-<id>-<gpu_id %04x>.img   the contents of one GPU's VRAM and GTT BOs:

        offset 0      8              8 + size(bo a)        8 + total
        +-------------+--------------+---------------------+
        | u64 total   | BO a bytes   | BO b bytes   ...    |
        +-------------+--------------+---------------------+

        total = the sum of the sizes of that GPU's VRAM/GTT BOs, in bo_entries order; other
        BOs (doorbells, MMIO remap, userptr) have no bytes in the file. <gpu_id> is the
        checkpoint-time id, which may name another GPU on restore.

Each BO's bytes start at an offset inside *its own GPU's* file. Upstream's parallel path
ran one offset across every GPU (research/criu-restore-internals.md §5.12.1), so every GPU
after the first read the wrong bytes; :func:`load_kfd_image` computes the offsets per GPU.

Everything here reads only: it runs in the orchestrator, in restore_init, before any fork,
so that a bad image fails the restore before anything is made.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycriu_restore.images import BadRecord, ImageError, ImageSet, ImageTruncated, MissingImage
from pycriu_restore.images.kinds import ImageKind, file_name, kind_by_name
from pycriu_restore.images.schemas import amdgpu_pb2
from pycriu_restore.plugins.amdgpu.kfd import KFD_IOC_ALLOC_MEM_FLAGS_GTT, KFD_IOC_ALLOC_MEM_FLAGS_VRAM

CriuKfd = amdgpu_pb2.CriuKfd

# The name CRIU's amdgpu plugin registers (plugins/amdgpu/amdgpu_plugin.c CR_PLUGIN_REGISTER)
# and writes into inventory.img's plugins_entry when it dumps a render-node mapping.
CRIU_PLUGIN_NAME = "amdgpu_plugin"

# The u64 at the start of a pages file: the number of content bytes that follow.
PAGES_HEADER = struct.Struct("<Q")

# Bounds on what an image may claim, checked before anything is allocated. KFD itself
# allows at most 64 GPUs per process (MAX_GPU_INSTANCE in the kernel's kfd_priv.h).
MAX_GPUS = 64
MAX_BOS = 1 << 20
# Topology nodes (CPUs and GPUs) a kfd image may list: a bound against hostile images,
# far above a real machine's few NUMA (CPU) nodes plus its at most MAX_GPUS GPUs.
MAX_TOPOLOGY_NODES = 256
# hsakmt.MAX_SHARED_MEM_BYTES (not imported: hsakmt loads libc, images stays pure).
MAX_SHARED_MEM_BYTES = 64 << 20


def _kind(name: str) -> ImageKind:
    kind = kind_by_name(name)
    assert kind is not None, f"amdgpu images: no kind {name} in the registry"
    return kind


def has_contents(alloc_flags: int) -> bool:
    """Whether a BO of these flags has its bytes in the pages file: VRAM or GTT memory
    (KFD_IOC_ALLOC_MEM_FLAGS_*, <linux/kfd_ioctl.h>, mirrored in kfd.py). Doorbell, MMIO
    remap and userptr BOs have none."""
    return bool(alloc_flags & (KFD_IOC_ALLOC_MEM_FLAGS_VRAM | KFD_IOC_ALLOC_MEM_FLAGS_GTT))


def kfd_image_name(file_id: int) -> str:
    """``amdgpu-kfd-<file_id>.img``."""
    return file_name(_kind("AMDGPU_KFD").file_names[0], file_id)


def pages_image_name(file_id: int, gpu_id: int) -> str:
    """``amdgpu-pages-<file_id>-<gpu_id %04x>.img``."""
    return file_name(_kind("AMDGPU_PAGES").file_names[0], file_id, gpu_id)


@dataclass(frozen=True)
class BoContent:
    """Where the bytes of one VRAM/GTT BO lie: ``size_bytes`` at ``file_offset`` of its GPU's file.

    ``file_offset`` is an absolute byte offset in the pages file (the 8-byte header included),
    so a reader preads at it as is. ``index`` is the BO's position in ``bo_entries``.
    """

    index: int
    gpu_id: int
    size_bytes: int
    file_offset: int


@dataclass(frozen=True)
class GpuPages:
    """One GPU's pages file: its path and the BOs it holds, in file order.

    ``path`` is None for a GPU without any VRAM/GTT BO (CRIU may not write the file).
    """

    gpu_id: int
    path: Path | None
    total_bytes: int
    bos: tuple[BoContent, ...]


@dataclass(frozen=True)
class KfdImage:
    """One checkpointed /dev/kfd file: its CriuKfd and the layout of its GPUs' pages files."""

    file_id: int
    path: Path
    kfd: CriuKfd
    gpus: dict[int, GpuPages]  # checkpoint gpu_id -> its pages file (every GPU node, not CPUs)

    def content(self, index: int) -> BoContent:
        """The pages-file location of BO ``index`` (which must be a VRAM/GTT BO)."""
        bo = self.kfd.bo_entries[index]
        for content in self.gpus[bo.gpu_id].bos:
            if content.index == index:
                return content
        raise AssertionError(f"KfdImage.content: BO {index} of {self.path.name} has no contents")

    @property
    def total_bytes(self) -> int:
        """The bytes of every VRAM/GTT BO of every GPU."""
        return sum(g.total_bytes for g in self.gpus.values())


def kfd_file_ids(images: ImageSet) -> list[int]:
    """The ids of every amdgpu-kfd-<id>.img of the checkpoint, sorted (a directory scan)."""
    kind = _kind("AMDGPU_KFD")
    ids = []
    try:
        names = os.listdir(images.directory)
    except OSError as err:
        raise ImageError(str(images.directory), f"cannot list the directory: {err.strerror or err}") from err
    for name in names:
        args = kind.match(name)
        if args is not None:
            ids.append(int(args[0]))
    return sorted(ids)


def gpu_entries(kfd: CriuKfd) -> list[Any]:
    """The GPU nodes of ``kfd.device_entries``, in image order: CPU nodes have gpu_id 0.

    CRIU writes one KfdDeviceEntry per node of the KFD topology, CPUs included, in the
    topology's node order (topology_to_devinfo), and counts them in num_of_gpus and
    num_of_cpus; restore_devices skips the entries whose gpu_id is 0.
    """
    return [device for device in kfd.device_entries if device.gpu_id]


def _check_topology(kfd: CriuKfd, where: str) -> None:
    """The device entries are num_of_gpus GPU nodes and num_of_cpus CPU nodes, each node once."""
    nodes = len(kfd.device_entries)
    if nodes > MAX_TOPOLOGY_NODES:
        raise BadRecord(where, f"{nodes} device entries, more than the limit of {MAX_TOPOLOGY_NODES}")
    if nodes != kfd.num_of_gpus + kfd.num_of_cpus:
        raise BadRecord(where, f"num_of_gpus {kfd.num_of_gpus} + num_of_cpus {kfd.num_of_cpus} = "
                        f"{kfd.num_of_gpus + kfd.num_of_cpus} topology nodes, but {nodes} device entries follow")
    gpus = gpu_entries(kfd)
    if len(gpus) != kfd.num_of_gpus:
        raise BadRecord(where, f"num_of_gpus is {kfd.num_of_gpus} but {len(gpus)} device entries have a "
                        f"gpu_id (the other {nodes - len(gpus)} are CPU nodes, gpu_id 0)")
    if kfd.num_of_gpus > MAX_GPUS:
        raise BadRecord(where, f"{kfd.num_of_gpus} GPUs, more than the {MAX_GPUS} KFD allows")
    seen_gpus: set[int] = set()
    seen_nodes: set[int] = set()
    for index, device in enumerate(kfd.device_entries):
        if device.node_id in seen_nodes:
            raise BadRecord(where, f"device entry {index}: node_id {device.node_id} appears in two device entries")
        seen_nodes.add(device.node_id)
        if device.gpu_id and device.gpu_id in seen_gpus:
            raise BadRecord(where, f"gpu_id {device.gpu_id:#x} appears in two device entries")
        seen_gpus.add(device.gpu_id)


def load_kfd_image(images: ImageSet, file_id: int) -> KfdImage:
    """Read amdgpu-kfd-<file_id>.img and check it against its GPUs' pages files.

    Checks, each an ImageError naming the file: the counts the message claims match its
    lists and stay in bounds (device_entries are num_of_gpus GPU nodes and num_of_cpus CPU
    nodes, gpu_id 0, in any order); every BO names a GPU of device_entries; each GPU's pages file
    exists (when it has contents), its header equals the sum of that GPU's VRAM/GTT BO
    sizes, and exactly that many bytes follow it. Reads only the 8-byte headers.
    """
    name = kfd_image_name(file_id)
    path = images.path(name)
    image = images.image(name, required=True, kind=_kind("AMDGPU_KFD"))
    kfd: CriuKfd = image.entries[0]
    where = str(path)
    _check_topology(kfd, where)
    if kfd.shared_mem_size > MAX_SHARED_MEM_BYTES:
        raise BadRecord(where, f"shared_mem_size {kfd.shared_mem_size} is above the limit of {MAX_SHARED_MEM_BYTES} "
                        "(ROCm's /dev/shm/hsakmt_shared_mem is a few pages)")
    if len(kfd.bo_entries) != kfd.num_of_bos:
        raise BadRecord(where, f"num_of_bos is {kfd.num_of_bos} but {len(kfd.bo_entries)} BO entries follow")
    if kfd.num_of_bos > MAX_BOS:
        raise BadRecord(where, f"{kfd.num_of_bos} BOs, more than the limit of {MAX_BOS}")

    per_gpu: dict[int, list[BoContent]] = {device.gpu_id: [] for device in gpu_entries(kfd)}
    # Offsets restart at the header of each GPU's own file (not one running offset: §5.12.1).
    next_offset = {gpu_id: PAGES_HEADER.size for gpu_id in per_gpu}
    for index, bo in enumerate(kfd.bo_entries):
        if bo.gpu_id not in per_gpu:
            known = ", ".join(f"{g:#x}" for g in per_gpu) or "none"
            raise BadRecord(where, f"BO {index} (addr {bo.addr:#x}) is on gpu_id {bo.gpu_id:#x}, "
                            f"which no device entry describes (GPUs: {known})")
        if not has_contents(bo.alloc_flags):
            continue
        if bo.size == 0:
            raise BadRecord(where, f"BO {index} (addr {bo.addr:#x}) is a VRAM/GTT BO of 0 bytes")
        per_gpu[bo.gpu_id].append(BoContent(index, bo.gpu_id, bo.size, next_offset[bo.gpu_id]))
        next_offset[bo.gpu_id] += bo.size

    gpus = {gpu_id: _check_pages_file(images, file_id, gpu_id, tuple(bos)) for gpu_id, bos in per_gpu.items()}
    return KfdImage(file_id=file_id, path=path, kfd=kfd, gpus=gpus)


def _check_pages_file(images: ImageSet, file_id: int, gpu_id: int, bos: tuple[BoContent, ...]) -> GpuPages:
    """Check one GPU's pages file against the BOs the kfd image puts in it."""
    expected = sum(b.size_bytes for b in bos)
    path = images.path(pages_image_name(file_id, gpu_id))
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        if expected == 0:
            return GpuPages(gpu_id, None, 0, bos)
        raise MissingImage(where, f"no pages file for gpu_id {gpu_id:#x}, whose {len(bos)} VRAM/GTT "
                           f"BOs hold {expected} bytes") from err
    except OSError as err:
        raise ImageError(where, f"cannot open: {err.strerror or err}") from err
    try:
        file_bytes = os.fstat(fd).st_size
        header = os.pread(fd, PAGES_HEADER.size, 0)
    except OSError as err:
        raise ImageError(where, f"cannot read the header: {err.strerror or err}") from err
    finally:
        os.close(fd)
    if len(header) < PAGES_HEADER.size:
        raise ImageTruncated(where, f"file is {file_bytes} bytes, shorter than its 8-byte size header", 0)
    (claimed,) = PAGES_HEADER.unpack(header)
    if claimed != expected:
        raise BadRecord(where, f"header says {claimed} bytes, but the {len(bos)} VRAM/GTT BOs of gpu_id "
                        f"{gpu_id:#x} in {kfd_image_name(file_id)} add up to {expected}", 0)
    follow = file_bytes - PAGES_HEADER.size
    if follow < expected:
        raise ImageTruncated(where, f"{follow} bytes follow the header, expected {expected}", PAGES_HEADER.size)
    if follow > expected:
        raise BadRecord(where, f"{follow} bytes follow the header, expected {expected} (trailing bytes)",
                        PAGES_HEADER.size)
    return GpuPages(gpu_id, path, expected, bos)


# --- render nodes and dma-bufs --------------------------------------------------------------
#
# CRIU's plugin also writes, for an open /dev/dri/renderD<minor> (amdgpu_plugin_drm.c):
#
#     amdgpu-renderD-<id>.img                      CriuRenderNode: the checkpoint gpu_id and
#                                                  minor, every GEM object of that DRM file
#                                                  (size, domains, flags, handle, mmap
#                                                  offset, is_import) and its GPU VM mappings
#     amdgpu-drm-pages-<id>-<minor>-<i %04x>.img   u64 size, then the bytes of BO <i>
#
# and for an open dma-buf fd (amdgpu_plugin_dmabuf.c) amdgpu-dmabuf_<id>.img: the GEM handle
# of the BO it exports. Handles join the three kinds of file: a KFD BO and a render-node BO
# that share memory carry the same handle, the importer with is_import set; a dma-buf file
# names the exporter's handle. Handles are numbers of one DRM file, so the plugin matches
# them per GPU: (checkpoint gpu_id, handle). Only an exporter has contents to fill.

RENDER_CONTENT_DOMAINS = 0x2 | 0x4  # AMDGPU_GEM_DOMAIN_GTT | _VRAM (<drm/amdgpu_drm.h>, drm.py)
NO_HANDLE = 0xFFFFFFFF  # CRIU stores -1 in the u32 handle of a BO without one
MAX_VMS_PER_BO = 1 << 16


def render_image_name(file_id: int) -> str:
    """``amdgpu-renderD-<file_id>.img``."""
    return file_name(_kind("AMDGPU_RENDERD").file_names[0], file_id)


def drm_pages_image_name(file_id: int, minor: int, index: int) -> str:
    """``amdgpu-drm-pages-<file_id>-<minor>-<index %04x>.img``."""
    return file_name(_kind("AMDGPU_DRM_PAGES").file_names[0], file_id, minor, index)


def dmabuf_image_name(file_id: int) -> str:
    """``amdgpu-dmabuf_<file_id>.img``."""
    return file_name(_kind("AMDGPU_DMABUF").file_names[0], file_id)


def _file_ids(images: ImageSet, kind_name: str) -> list[int]:
    kind = _kind(kind_name)
    try:
        names = os.listdir(images.directory)
    except OSError as err:
        raise ImageError(str(images.directory), f"cannot list the directory: {err.strerror or err}") from err
    return sorted(int(args[0]) for args in map(kind.match, names) if args is not None)


def render_file_ids(images: ImageSet) -> list[int]:
    """The ids of every amdgpu-renderD-<id>.img, sorted."""
    return _file_ids(images, "AMDGPU_RENDERD")


def dmabuf_file_ids(images: ImageSet) -> list[int]:
    """The ids of every amdgpu-dmabuf_<id>.img, sorted."""
    return _file_ids(images, "AMDGPU_DMABUF")


def render_bo_needs_fill(bo: Any) -> bool:
    """CRIU's rule (restore_bo_contents_drm): a created (not imported) BO in GTT or VRAM that
    is mapped in the GPU VM has contents in its drm-pages file."""
    return not bo.is_import and bool(bo.preferred_domains & RENDER_CONTENT_DOMAINS) and bo.num_of_vms > 0


@dataclass(frozen=True)
class RenderImage:
    """One checkpointed render-node file: its CriuRenderNode and its BOs' content files."""

    file_id: int
    path: Path
    node: Any  # CriuRenderNode
    contents: dict[int, Path]  # BO index -> its drm-pages file (BOs that need a fill)

    def content_bytes(self) -> int:
        return sum(self.node.bo_entries[i].size for i in self.contents)


def load_render_image(images: ImageSet, file_id: int, gpu_ids: set[int]) -> RenderImage:
    """Read amdgpu-renderD-<file_id>.img and check it and its content files.

    ``gpu_ids`` are the checkpoint GPUs the kfd images describe: the node's gpu_id must be
    one of them (CRIU maps it with the kfd image's topology). Checks the counts, the VM
    entries (page-aligned, inside the BO), unique handles, and that each content file
    holds exactly the BO's size after its 8-byte header.
    """
    name = render_image_name(file_id)
    path = images.path(name)
    node = images.image(name, required=True, kind=_kind("AMDGPU_RENDERD")).entries[0]
    where = str(path)
    if node.gpu_id not in gpu_ids:
        known = ", ".join(f"{g:#x}" for g in sorted(gpu_ids)) or "none"
        raise BadRecord(where, f"render node of gpu_id {node.gpu_id:#x}, which no kfd image describes (GPUs: {known})")
    if len(node.bo_entries) != node.num_of_bos:
        raise BadRecord(where, f"num_of_bos is {node.num_of_bos} but {len(node.bo_entries)} BO entries follow")
    if node.num_of_bos > MAX_BOS:
        raise BadRecord(where, f"{node.num_of_bos} BOs, more than the limit of {MAX_BOS}")
    handles: set[int] = set()
    contents: dict[int, Path] = {}
    for index, bo in enumerate(node.bo_entries):
        what = f"BO {index} (handle {bo.handle})"
        if bo.handle in (0, NO_HANDLE) or bo.handle in handles:
            raise BadRecord(where, f"{what}: handle is 0, -1 or appears twice in this render node")
        handles.add(bo.handle)
        if bo.size == 0 or bo.size % 4096:
            raise BadRecord(where, f"{what}: size {bo.size} is not a positive multiple of 4096")
        if bo.num_of_vms != len(bo.vm_entries) or bo.num_of_vms > MAX_VMS_PER_BO:
            raise BadRecord(where, f"{what}: num_of_vms is {bo.num_of_vms} but {len(bo.vm_entries)} VM entries follow")
        for j, vm in enumerate(bo.vm_entries):
            if (vm.addr | vm.offset | vm.size) % 4096 or vm.size == 0 or vm.offset + vm.size > bo.size:
                raise BadRecord(where, f"{what}: VM entry {j} maps {vm.size:#x} bytes at offset {vm.offset:#x} to "
                                f"{vm.addr:#x}: not page-aligned, empty, or beyond the BO's {bo.size:#x} bytes")
        if render_bo_needs_fill(bo):
            contents[index] = _check_drm_pages_file(images, file_id, node.drm_render_minor, index, bo.size)
    return RenderImage(file_id=file_id, path=path, node=node, contents=contents)


def _check_drm_pages_file(images: ImageSet, file_id: int, minor: int, index: int, size: int) -> Path:
    path = images.path(drm_pages_image_name(file_id, minor, index))
    where = str(path)
    try:
        with open(path, "rb") as f:
            header = f.read(PAGES_HEADER.size)
            file_bytes = os.fstat(f.fileno()).st_size
    except FileNotFoundError as err:
        raise MissingImage(where, f"no contents for BO {index} ({size} bytes) of {render_image_name(file_id)}") from err
    except OSError as err:
        raise ImageError(where, f"cannot read: {err.strerror or err}") from err
    if len(header) < PAGES_HEADER.size:
        raise ImageTruncated(where, f"file is {file_bytes} bytes, shorter than its 8-byte size header", 0)
    (claimed,) = PAGES_HEADER.unpack(header)
    if claimed != size or file_bytes - PAGES_HEADER.size != size:
        raise BadRecord(where, f"header says {claimed} bytes and {file_bytes - PAGES_HEADER.size} follow; "
                        f"BO {index} of {render_image_name(file_id)} is {size} bytes", 0)
    return path


def load_dmabuf_handle(images: ImageSet, file_id: int) -> int:
    """The GEM handle amdgpu-dmabuf_<file_id>.img names."""
    name = dmabuf_image_name(file_id)
    return int(images.image(name, required=True, kind=_kind("AMDGPU_DMABUF")).entries[0].gem_handle)
