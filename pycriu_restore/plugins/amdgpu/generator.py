"""Add simulated GPU state to a real checkpoint, so that simgpu has VRAM to restore.

CRIU cannot dump a GPU process here (there is no GPU), so tests and benchmarks take a real
CRIU 4.2 checkpoint of a CPU workload and add what CRIU's amdgpu plugin would have written
for a process that held /dev/kfd (images.py draws the files)::

    files.img                       + FileEntry {type EXT, id K, ext {id K}}
    fdinfo-<files_id>.img           + FdinfoEntry {id K, type EXT, fd 100 (or the next free)}
                                    of the task that holds the GPU (the root, or ``pid``)
    amdgpu-kfd-K.img                CriuKfd in CRIU's shape: one device entry per topology
                                    node (1 or 2 CPU nodes, gpu_id 0, then n GPUs), their BOs
                                    (VRAM, GTT, one doorbell BO per GPU and the first GPU's
                                    MMIO remap page, which have no contents), priv_data in
                                    the kernel's layout and 2 objects
    amdgpu-pages-K-<gpu>.img        per GPU: u64 size, then its VRAM/GTT BOs' bytes
    (render_nodes)                  render-node and dma-buf files (generate_gpu_state)
    (device_vmas) files.img         + FileEntry {type REG, name /dev/dri/renderD<minor>},
                                    and one named /dev/kfd
                  mm-<pid>.img      + a VMA_EXT_PLUGIN VmaEntry per mapped BO (its shmid that
                                    entry, its pgoff the BO's mmap offset), as dump_filemap
                                    writes a device mapping; each doorbell and MMIO BO is
                                    one, over /dev/kfd at KFD's offset for it
                  inventory.img     "amdgpu_plugin" in plugins_entry, as CRIU's plugin adds
                                    itself when it dumps a render-node mapping

The restored task then holds a "device" fd at that number, and RESTORE_EXT_FILE fires for it.

Contents are deterministic from ``seed`` and cheap to make at GiB scale: a 1 MiB random
block, seen at a different rotation for each 1 MiB chunk of each BO (so a BO filled from
the wrong offset, or with another BO's bytes, has the wrong checksum). About one BO in six
is all zeros and one in three has a zero range; zero chunks are left as holes in a sparse
file. Sizes and offsets are 64-bit throughout: totals above 4 GiB work.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.images.flags import MMAP_FLAGS, MMAP_PROT, MMAP_STATUS
from pycriu_restore.images.image import Image
from pycriu_restore.images.kinds import kind_by_name
from pycriu_restore.images.schemas import amdgpu_pb2, fdinfo_pb2, vma_pb2
from pycriu_restore.plugins.amdgpu.images import (
    CRIU_PLUGIN_NAME,
    NO_HANDLE,
    PAGES_HEADER,
    dmabuf_image_name,
    drm_pages_image_name,
    has_contents,
    kfd_image_name,
    pages_image_name,
    render_image_name,
)
from pycriu_restore.plan.validate import VMA_EXT_PLUGIN
from pycriu_restore.plugins.amdgpu.kfd import (
    KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL,
    KFD_IOC_ALLOC_MEM_FLAGS_GTT,
    KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP,
    KFD_IOC_ALLOC_MEM_FLAGS_VRAM,
    KFD_MMAP_TYPE_DOORBELL,
    KFD_MMAP_TYPE_MMIO,
    kfd_mmap_offset,
)

SIM_KFD_FD = 100  # the fd the generated device file is given in its task (if free)
SHARED_MEM_MAGIC = 0x5348_4D4B  # any u32: the thunk's own value is not a uapi fact
PAGE_BYTES = 4096
BLOCK_BYTES = 1 << 20  # the random block, and the chunk each rotation covers
DOORBELL_BYTES = 2 * PAGE_BYTES
_GPU_VA_BASE = 0x7F00_0000_0000  # GPU virtual addresses of the BOs (KFD's SVM range)
_GPU_VA_STRIDE = 1 << 36  # each GPU's BOs in its own 64 GiB, below the 47-bit user limit
# kfd_priv.h (kernel-internal, KFD_CRIU_PRIV_VERSION 1): the priv_data sections KFD's
# CHECKPOINT writes and RESTORE parses: process, one record per device, one per BO, then
# the queue/event/SVM objects (opaque here: num_of_objects records of _OBJECT bytes).
_PRIV_PROCESS = struct.Struct("<II")            # version, xnack_mode
_PRIV_DEVICE = struct.Struct("<Q")              # reserved
_PRIV_BO = struct.Struct("<QI64I4x")            # user_addr, idr_handle, mapped_gpuids[64]
_PRIV_VERSION = 1
_OBJECT = struct.Struct("<II")                  # object_type, then the object's bytes
_N_OBJECTS = 2
_VA_ALIGN = 2 << 20
# Render-node BOs: GPU addresses apart from the KFD ones, fake mmap offsets, handles above
# the KFD BOs' (index + 1), AMDGPU_GEM_DOMAIN_* and AMDGPU_VM_PAGE_READABLE | _WRITEABLE.
_RENDER_VA_BASE = 0x4000_0000_0000
_RENDER_MMAP_BASE = 0x1_0000_0000
_RENDER_HANDLE_BASE = 1 << 20
_DOMAIN_GTT, _DOMAIN_VRAM = 0x2, 0x4
_VM_PAGE_RW = 0x2 | 0x4
# Device VMAs: where the render-node BOs are CPU-mapped (apart from their GPU addresses and
# below a PIE's 0x55.. and the 0x7f.. mmap area), the node's name, and CRIU's VmaEntry
# fields for a device mapping (proc_parse.c handle_vma_plugin): VMA_AREA_REGULAR |
# VMA_FILE_SHARED | VMA_EXT_PLUGIN, PROT_READ | PROT_WRITE, MAP_SHARED.
_RENDER_CPU_BASE = 0x5000_0000_0000
RENDER_NODE_DIR = "/dev/dri/renderD"
KFD_DEVICE = "/dev/kfd"  # where doorbell and MMIO pages are mapped from (libhsakmt mmaps the kfd fd)
_DEVICE_VMA_STATUS = dict(MMAP_STATUS)["VMA_AREA_REGULAR"] | dict(MMAP_STATUS)["VMA_FILE_SHARED"] | VMA_EXT_PLUGIN
_PROT_RW = dict(MMAP_PROT)["PROT_READ"] | dict(MMAP_PROT)["PROT_WRITE"]
_MAP_SHARED = dict(MMAP_FLAGS)["MAP_SHARED"]


@dataclass(frozen=True)
class SimulatedGpuState:
    """What :func:`generate_gpu_state` added: the kfd file, its fd and the expected BO checksums."""

    kfd_id: int
    fd: int
    gpu_ids: tuple[int, ...]
    checksums: dict[tuple[int, int], int]  # (checkpoint gpu_id, BO index) -> zlib.crc32
    total_bytes: int
    # with render_nodes=True: file id -> fd of each render-node file and of the dma-buf file
    render_fds: dict[int, int] = field(default_factory=dict)
    dmabuf_fds: dict[int, int] = field(default_factory=dict)
    render_checksums: dict[tuple[int, int], int] = field(default_factory=dict)  # (file id, BO index)
    shared_bo: tuple[int, int] | None = None  # the KFD BO (gpu_id, index) shared by import and dma-buf
    device_vmas: tuple[DeviceVma, ...] = ()  # with device_vmas=True, in address order


@dataclass(frozen=True)
class DeviceVma:
    """A device mapping added to the task's mm-<pid>.img, as CRIU dumps one (VMA_EXT_PLUGIN).

    ``path`` is the device the process mapped it through, a render node or /dev/kfd for a
    doorbell or MMIO page (a regular-file entry of files.img, as cr-dump.c dump_filemap
    writes), ``pgoff`` the BO's checkpointed mmap offset (for those pages KFD's: type << 62 |
    gpu_id << 46). ``checksum`` is the crc32 of what the restored task must read there: the
    BO's contents (for an import, its exporter's); zeros for a doorbell or MMIO page, which
    has none (simgpu's page is a hole of its kfd memfd). ``bo`` names the BO: ("kfd",
    gpu_id, index) or ("render", render file id, index); ``sim_memfd`` is the memfd simgpu
    maps it through (the BO's own, for an import its exporter's, for /dev/kfd pages the kfd
    one).
    """

    start: int
    end: int
    path: str
    pgoff: int
    checksum: int
    bo: tuple[str, int, int]
    sim_memfd: str


def add_simulated_gpu_state(src_images_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str],
                            n_gpus: int, n_bos: int, total_bytes: int, seed: int) -> dict[tuple[int, int], int]:
    """Copy a checkpoint to ``dst_dir`` and add simulated GPU state; return the expected checksums.

    The checksums are zlib.crc32 of each VRAM/GTT BO, keyed (checkpoint gpu_id, BO index in
    the kfd image): what SimDevice.checksums() must report after a correct restore.
    See :func:`generate_gpu_state` for the preconditions.
    """
    return generate_gpu_state(src_images_dir, dst_dir, n_gpus, n_bos, total_bytes, seed).checksums


def generate_gpu_state(src_images_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str],
                       n_gpus: int, n_bos: int, total_bytes: int, seed: int,
                       render_nodes: bool = False, shared_mem_size: int = 0,
                       device_vmas: bool = False, pid: int | None = None) -> SimulatedGpuState:
    """Copy ``src_images_dir`` to ``dst_dir`` (which must not exist) and add a /dev/kfd file
    to the task ``pid`` (default: the root). Called again on its own output for another
    task (another ``seed``: other GPU ids), it makes a tree whose tasks each hold GPUs.

    ``n_bos`` VRAM/GTT BOs share ``total_bytes`` (a multiple of 4096, at least a page each)
    and are spread over ``n_gpus`` GPUs; each GPU also gets one doorbell BO, and the first
    one an MMIO remap page (the last BO).

    ``render_nodes`` adds what every ROCm process also has: per GPU a render-node file
    (amdgpu-renderD-<id>.img) holding a created GTT BO mapped in the GPU VM (with its
    drm-pages file), a created VRAM BO mapped nowhere (no contents, as CRIU's rule says)
    and an import of that GPU's first VRAM KFD BO; and one dma-buf file naming the first
    GPU's shared BO, so that one buffer is reached as a KFD BO, a render-node BO and a
    dma-buf fd. Drawn after the kfd contents: the kfd checksums do not change.
    ``shared_mem_size`` > 0 records ROCm's /dev/shm/hsakmt_shared_mem (magic SHARED_MEM_MAGIC).
    ``device_vmas`` (needs ``render_nodes``) adds the task's CPU mappings of the GPU memory,
    as CRIU dumps them (VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_EXT_PLUGIN, MAP_SHARED,
    shmid a regular-file entry /dev/dri/renderD<minor>, pgoff the BO's mmap offset): every
    KFD BO with contents at its address (libhsakmt maps them where the GPU sees them), each
    doorbell and MMIO BO at its address over /dev/kfd (shmid a regular-file entry /dev/kfd,
    pgoff KFD's offset for it, as the BO's image offset is), and per render node its GTT BO
    and its import of a KFD BO at CPU addresses of their own.
    """
    if device_vmas and not render_nodes:
        raise ValueError("device_vmas needs render_nodes (the mappings go through render nodes)")
    if not 1 <= n_gpus <= 64:
        raise ValueError(f"n_gpus is {n_gpus}, expected 1..64 (KFD's limit)")
    if n_bos < n_gpus:
        raise ValueError(f"n_bos is {n_bos}, expected at least one per GPU ({n_gpus})")
    if total_bytes % PAGE_BYTES or total_bytes < n_bos * PAGE_BYTES:
        raise ValueError(f"total_bytes is {total_bytes}, expected a multiple of {PAGE_BYTES} "
                         f"of at least {n_bos * PAGE_BYTES} (a page per BO)")
    pids = [e.pid for e in ImageSet.open(src_images_dir).pstree()]
    if pid is None:
        pid = pids[0]
    elif pid not in pids:
        raise ValueError(f"pid {pid} is not a task of {src_images_dir} (tasks: {pids})")
    dst = Path(dst_dir)
    shutil.copytree(src_images_dir, dst)
    images = ImageSet.open(dst)
    files_id = images.ids(pid).files_id
    rng = random.Random(seed)

    kfd_id = _add_ext_file(dst)
    fd = _add_fd(dst, files_id, kfd_id)
    kfd = _make_kfd(rng, pid, n_gpus, n_bos, total_bytes)
    kfd.shared_mem_size = shared_mem_size
    kfd.shared_mem_magic = SHARED_MEM_MAGIC if shared_mem_size else 0
    kfd_kind = kind_by_name("AMDGPU_KFD")
    assert kfd_kind is not None, "generator: no AMDGPU_KFD kind"
    (dst / kfd_image_name(kfd_id)).write_bytes(dump_image(Image(kind=kfd_kind, entries=[kfd])))
    checksums = _write_pages(rng, dst, kfd_id, kfd)
    gpu_ids = tuple(d.gpu_id for d in kfd.device_entries if d.gpu_id)
    state = SimulatedGpuState(kfd_id=kfd_id, fd=fd, gpu_ids=gpu_ids, checksums=checksums, total_bytes=total_bytes)
    if render_nodes:
        state = _add_render_nodes(rng, dst, files_id, kfd, state)
    if device_vmas:
        state = replace(state, device_vmas=_add_device_vmas(dst, pid, kfd, state))
        _list_in_inventory(dst, CRIU_PLUGIN_NAME)
    return state


def _list_in_inventory(dst: Path, plugin: str) -> None:
    """Name ``plugin`` in inventory.img's plugins_entry (once), as CRIU's add_inventory_plugin."""
    inventory = load_image(dst / "inventory.img")
    entry = inventory.entries[0]
    if plugin not in entry.plugins_entry.plugins:
        entry.plugins_entry.plugins.append(plugin)
        (dst / "inventory.img").write_bytes(dump_image(Image(kind=inventory.kind, entries=[entry])))


def _add_device_vmas(dst: Path, pid: int, kfd: amdgpu_pb2.CriuKfd, state: SimulatedGpuState) -> tuple[DeviceVma, ...]:
    """Map the GPU memory in task ``pid`` (see generate_gpu_state); return the mappings."""
    minors = {d.gpu_id: d.drm_render_minor for d in kfd.device_entries if d.gpu_id}
    out: list[DeviceVma] = []
    for index, bo in enumerate(kfd.bo_entries):
        if (bo.gpu_id, index) in state.checksums:
            out.append(DeviceVma(start=bo.addr, end=bo.addr + bo.size, path=f"{RENDER_NODE_DIR}{minors[bo.gpu_id]}",
                                 pgoff=bo.offset, checksum=state.checksums[(bo.gpu_id, index)],
                                 bo=("kfd", bo.gpu_id, index), sim_memfd=f"simgpu-bo-{bo.gpu_id:04x}-{index}"))
        elif bo.alloc_flags & (KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL | KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP):
            out.append(DeviceVma(start=bo.addr, end=bo.addr + bo.size, path=KFD_DEVICE, pgoff=bo.offset,
                                 checksum=zlib.crc32(bytes(bo.size)), bo=("kfd", bo.gpu_id, index),
                                 sim_memfd="simgpu-kfd"))
    for n, file_id in enumerate(sorted(state.render_fds)):
        node = load_image(dst / render_image_name(file_id)).entries[0]
        cpu = _RENDER_CPU_BASE + n * (1 << 30)
        path = f"{RENDER_NODE_DIR}{node.drm_render_minor}"
        gtt = node.bo_entries[0]
        out.append(DeviceVma(start=cpu, end=cpu + gtt.size, path=path, pgoff=gtt.offset,
                             checksum=state.render_checksums[(file_id, 0)], bo=("render", file_id, 0),
                             sim_memfd=f"simgpu-drm-bo-{node.gpu_id:04x}-{gtt.handle}"))
        imported = next(i for i, b in enumerate(node.bo_entries) if b.is_import)
        import_bo = node.bo_entries[imported]
        exporter = next(i for i, b in enumerate(kfd.bo_entries)
                        if b.gpu_id == node.gpu_id and b.handle == import_bo.handle)
        out.append(DeviceVma(start=cpu + (1 << 29), end=cpu + (1 << 29) + import_bo.size, path=path,
                             pgoff=import_bo.offset, checksum=state.checksums[(node.gpu_id, exporter)],
                             bo=("render", file_id, imported), sim_memfd=f"simgpu-bo-{node.gpu_id:04x}-{exporter}"))
    out.sort(key=lambda v: v.start)

    reg_ids = {path: _add_device_file(dst, path) for path in sorted({v.path for v in out})}
    mm_path = dst / f"mm-{pid}.img"
    mm_image = load_image(mm_path)
    mm = mm_image.entries[0]
    vmas = list(mm.vmas)
    for dev in out:
        clash = next((v for v in vmas if v.start < dev.end and dev.start < v.end), None)
        if clash is not None:
            raise ValueError(f"{mm_path.name}: device VMA {dev.start:#x}-{dev.end:#x} overlaps the task's VMA "
                             f"{clash.start:#x}-{clash.end:#x}: dump the workload again (its layout is random)")
        vmas.append(vma_pb2.VmaEntry(start=dev.start, end=dev.end, pgoff=dev.pgoff, shmid=reg_ids[dev.path],
                                    prot=_PROT_RW, flags=_MAP_SHARED, status=_DEVICE_VMA_STATUS, fd=-1,
                                    fdflags=os.O_RDWR))
    del mm.vmas[:]
    mm.vmas.extend(sorted(vmas, key=lambda v: v.start))
    mm_path.write_bytes(dump_image(Image(kind=mm_image.kind, entries=[mm])))
    return tuple(out)


def _add_device_file(dst: Path, path: str) -> int:
    """Append the regular-file entry CRIU writes for a mapped device node; return its id."""
    files = load_image(dst / "files.img")
    file_id = max((e.id for e in files.entries), default=0) + 1
    entry = fdinfo_pb2.FileEntry(type=fdinfo_pb2.REG, id=file_id)
    entry.reg.id, entry.reg.flags, entry.reg.pos, entry.reg.name = file_id, os.O_RDWR, 0, path
    entry.reg.mode = stat.S_IFCHR | 0o666
    entry.reg.fown.uid = entry.reg.fown.euid = entry.reg.fown.signum = 0
    entry.reg.fown.pid_type = entry.reg.fown.pid = 0
    (dst / "files.img").write_bytes(dump_image(Image(kind=files.kind, entries=[*files.entries, entry])))
    return file_id


def _add_render_nodes(rng: random.Random, dst: Path, files_id: int, kfd: amdgpu_pb2.CriuKfd,
                      state: SimulatedGpuState) -> SimulatedGpuState:
    """Per GPU a render-node file; one dma-buf file (see generate_gpu_state)."""
    render_kind, dmabuf_kind = kind_by_name("AMDGPU_RENDERD"), kind_by_name("AMDGPU_DMABUF")
    assert render_kind is not None and dmabuf_kind is not None, "generator: no render/dma-buf kind"
    render_fds: dict[int, int] = {}
    checksums: dict[tuple[int, int], int] = {}
    shared: tuple[int, int] | None = None
    for n, device in enumerate(d for d in kfd.device_entries if d.gpu_id):
        file_id = _add_ext_file(dst)
        render_fds[file_id] = _add_fd(dst, files_id, file_id)
        node = amdgpu_pb2.CriuRenderNode(gpu_id=device.gpu_id, id=file_id, drm_render_minor=device.drm_render_minor)
        va = _RENDER_VA_BASE + n * _GPU_VA_STRIDE
        gtt_bytes = rng.randrange(1, 4) * PAGE_BYTES
        gtt = node.bo_entries.add(addr=va, size=gtt_bytes, offset=_RENDER_MMAP_BASE + n * (1 << 30), alloc_flags=0,
                                  alignment=PAGE_BYTES, preferred_domains=_DOMAIN_GTT, handle=_RENDER_HANDLE_BASE,
                                  is_import=0, num_of_vms=1)
        gtt.vm_entries.add(addr=va, size=gtt_bytes, offset=0, flags=_VM_PAGE_RW)
        node.bo_entries.add(addr=0, size=PAGE_BYTES, offset=_RENDER_MMAP_BASE + n * (1 << 30) + (1 << 20),
                            alloc_flags=0, alignment=PAGE_BYTES, preferred_domains=_DOMAIN_VRAM,
                            handle=_RENDER_HANDLE_BASE + 1, is_import=0, num_of_vms=0)
        index, kfd_bo = next((i, b) for i, b in enumerate(kfd.bo_entries)
                             if b.gpu_id == device.gpu_id and b.alloc_flags & KFD_IOC_ALLOC_MEM_FLAGS_VRAM)
        imported = node.bo_entries.add(addr=va + (1 << 30), size=kfd_bo.size, offset=kfd_bo.offset, alloc_flags=0,
                                       alignment=PAGE_BYTES, preferred_domains=_DOMAIN_VRAM, handle=kfd_bo.handle,
                                       is_import=1, num_of_vms=1)
        imported.vm_entries.add(addr=va + (1 << 30), size=kfd_bo.size, offset=0, flags=_VM_PAGE_RW)
        if shared is None:
            shared = (device.gpu_id, index)
        node.num_of_bos = len(node.bo_entries)
        (dst / render_image_name(file_id)).write_bytes(dump_image(Image(kind=render_kind, entries=[node])))
        data = rng.randbytes(gtt_bytes)
        (dst / drm_pages_image_name(file_id, node.drm_render_minor, 0)).write_bytes(PAGES_HEADER.pack(gtt_bytes) + data)
        checksums[(file_id, 0)] = zlib.crc32(data)
    assert shared is not None, "generator: no GPU"
    dmabuf_id = _add_ext_file(dst)
    dmabuf_fd = _add_fd(dst, files_id, dmabuf_id)
    node = amdgpu_pb2.CriuDmabufNode(gem_handle=kfd.bo_entries[shared[1]].handle)
    (dst / dmabuf_image_name(dmabuf_id)).write_bytes(dump_image(Image(kind=dmabuf_kind, entries=[node])))
    return replace(state, render_fds=render_fds, dmabuf_fds={dmabuf_id: dmabuf_fd}, render_checksums=checksums,
                   shared_bo=shared)


def _add_ext_file(dst: Path) -> int:
    """Append an EXT FileEntry to files.img with a fresh id; return the id."""
    files = load_image(dst / "files.img")
    kfd_id = max((e.id for e in files.entries), default=0) + 1
    entry = fdinfo_pb2.FileEntry(type=fdinfo_pb2.EXT, id=kfd_id)
    entry.ext.id = kfd_id
    entry.ext.fown.uid = entry.ext.fown.euid = entry.ext.fown.signum = 0
    entry.ext.fown.pid_type = entry.ext.fown.pid = 0
    (dst / "files.img").write_bytes(dump_image(Image(kind=files.kind, entries=[*files.entries, entry])))
    return kfd_id


def _add_fd(dst: Path, files_id: int, kfd_id: int) -> int:
    """Give the task's fd table ``files_id`` the file at SIM_KFD_FD (or the next free number);
    return the fd."""
    path = dst / f"fdinfo-{files_id}.img"
    fdinfo = load_image(path)
    used = {e.fd for e in fdinfo.entries}
    fd = SIM_KFD_FD
    while fd in used:
        fd += 1
    entry = fdinfo_pb2.FdinfoEntry(id=kfd_id, flags=0, type=fdinfo_pb2.EXT, fd=fd)
    path.write_bytes(dump_image(Image(kind=fdinfo.kind, entries=[*fdinfo.entries, entry])))
    return fd


def _make_kfd(rng: random.Random, pid: int, n_gpus: int, n_bos: int, total_bytes: int) -> amdgpu_pb2.CriuKfd:
    """A CriuKfd with ``n_gpus`` MI210-like GPUs and their BOs (sizes split at random)."""
    gpu_ids = rng.sample(range(0x1000, 0x10000), n_gpus)  # real gpu_ids are hashes; any distinct u32
    n_cpus = 1 if n_gpus == 1 else 2  # one or two CPU sockets: NUMA nodes come first
    kfd = amdgpu_pb2.CriuKfd(pid=pid, num_of_gpus=n_gpus, num_of_cpus=n_cpus, num_of_objects=_N_OBJECTS,
                             shared_mem_size=0, shared_mem_magic=0, priv_data=b"")
    # CRIU writes every topology node, CPUs (gpu_id 0) included, in node order.
    for node_id in range(n_cpus):
        kfd.device_entries.append(amdgpu_pb2.KfdDeviceEntry(node_id=node_id, gpu_id=0, cpu_cores_count=64,
                                                            **{f: 0 for f in _GPU_ONLY_FIELDS}))
    for i, gpu_id in enumerate(gpu_ids):
        kfd.device_entries.append(_device(n_cpus + i, gpu_id))

    total_pages = total_bytes // PAGE_BYTES
    cuts = sorted(rng.sample(range(1, total_pages), n_bos - 1)) if n_bos > 1 else []
    sizes = [(b - a) * PAGE_BYTES for a, b in zip([0, *cuts], [*cuts, total_pages])]
    va = {g: _GPU_VA_BASE + i * _GPU_VA_STRIDE for i, g in enumerate(gpu_ids)}

    def add_bo(gpu_id: int, size: int, flags: int) -> None:
        index = len(kfd.bo_entries)
        if flags & KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL:  # what KFD's CHECKPOINT writes (criu_checkpoint_bos)
            offset = kfd_mmap_offset(KFD_MMAP_TYPE_DOORBELL, gpu_id)
        elif flags & KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP:
            offset = kfd_mmap_offset(KFD_MMAP_TYPE_MMIO, gpu_id)
        else:  # a DRM mmap offset, distinct per BO
            offset = (gpu_ids.index(gpu_id) + 1) << 40 | (va[gpu_id] & ((1 << 40) - 1))
        kfd.bo_entries.append(amdgpu_pb2.KfdBoEntry(
            addr=va[gpu_id], size=size, offset=offset,
            alloc_flags=flags, gpu_id=gpu_id, handle=index + 1 if has_contents(flags) else NO_HANDLE))
        va[gpu_id] += (size + _VA_ALIGN - 1) // _VA_ALIGN * _VA_ALIGN

    for i, size in enumerate(sizes):
        gpu_id = gpu_ids[i % n_gpus]
        if i < n_gpus:  # each GPU's doorbell page first, as a process maps it early
            add_bo(gpu_id, DOORBELL_BYTES, KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL)
        add_bo(gpu_id, size, KFD_IOC_ALLOC_MEM_FLAGS_GTT if i % 3 == 2 else KFD_IOC_ALLOC_MEM_FLAGS_VRAM)
    # The first GPU's MMIO remap page (the HDP flush page libhsakmt maps), last: the other
    # BOs keep their indices and handles whatever the GPUs have.
    add_bo(gpu_ids[0], PAGE_BYTES, KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP)
    kfd.num_of_bos = len(kfd.bo_entries)
    kfd.priv_data = _priv_data(kfd)
    return kfd


def _priv_data(kfd: amdgpu_pb2.CriuKfd) -> bytes:
    """priv_data in the layout KFD's RESTORE parses: each BO mapped on its own GPU only."""
    out = _PRIV_PROCESS.pack(_PRIV_VERSION, 0) + _PRIV_DEVICE.pack(0) * kfd.num_of_gpus
    for index, bo in enumerate(kfd.bo_entries):
        out += _PRIV_BO.pack(0, index + 1, bo.gpu_id, *([0] * 63))
    return out + b"".join(_OBJECT.pack(0, i) for i in range(_N_OBJECTS))


_GPU_ONLY_FIELDS = (
    "simd_count", "mem_banks_count", "caches_count", "io_links_count", "max_waves_per_simd", "lds_size_in_kb",
    "gds_size_in_kb", "num_gws", "wave_front_size", "array_count", "simd_arrays_per_engine", "cu_per_simd_array",
    "simd_per_cu", "max_slots_scratch_cu", "vendor_id", "device_id", "domain", "drm_render_minor", "hive_id",
    "num_sdma_engines", "num_sdma_xgmi_engines", "num_sdma_queues_per_engine", "num_cp_queues", "fw_version",
    "capability", "sdma_fw_version", "vram_public", "vram_size")


def _device(node_id: int, gpu_id: int) -> amdgpu_pb2.KfdDeviceEntry:
    """Topology properties of an MI210-like GPU on node ``node_id``, linked to CPU node 0 by PCIe."""
    entry = amdgpu_pb2.KfdDeviceEntry(
        node_id=node_id, gpu_id=gpu_id, cpu_cores_count=0, simd_count=416, mem_banks_count=1, caches_count=0,
        io_links_count=1, max_waves_per_simd=8, lds_size_in_kb=64, gds_size_in_kb=0, num_gws=64,
        wave_front_size=64, array_count=8, simd_arrays_per_engine=1, cu_per_simd_array=13, simd_per_cu=4,
        max_slots_scratch_cu=32, vendor_id=0x1002, device_id=0x740F, domain=0, drm_render_minor=128 + node_id,
        hive_id=0, num_sdma_engines=2, num_sdma_xgmi_engines=3, num_sdma_queues_per_engine=8, num_cp_queues=24,
        fw_version=78, capability=0x2A3E0280, sdma_fw_version=8, vram_public=0, vram_size=64 << 30)
    entry.iolinks.add(type=2, node_to_id=0)  # TOPO_IOLINK_TYPE_PCIE to the first CPU node
    return entry


def _write_pages(rng: random.Random, dst: Path, kfd_id: int, kfd: amdgpu_pb2.CriuKfd) -> dict[tuple[int, int], int]:
    """Write each GPU's pages file (sparse where zero); return the crc32 of every content BO."""
    block = rng.randbytes(BLOCK_BYTES)
    twice = memoryview(block + block)  # a rotation by r is twice[r:r + BLOCK_BYTES], no copy
    zeros = memoryview(bytes(BLOCK_BYTES))
    checksums: dict[tuple[int, int], int] = {}
    for device in kfd.device_entries:
        gpu_id = device.gpu_id
        if not gpu_id:
            continue  # a CPU node: no pages file
        bos = [(i, bo) for i, bo in enumerate(kfd.bo_entries) if bo.gpu_id == gpu_id and has_contents(bo.alloc_flags)]
        total = sum(bo.size for _, bo in bos)
        fd = os.open(dst / pages_image_name(kfd_id, gpu_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, PAGES_HEADER.pack(total), 0)
            os.ftruncate(fd, PAGES_HEADER.size + total)  # unwritten ranges stay holes (zeros)
            offset = PAGES_HEADER.size
            for index, bo in bos:
                checksums[(gpu_id, index)] = _write_bo(rng, fd, offset, bo.size, twice, zeros)
                offset += bo.size
        finally:
            os.close(fd)
    return checksums


def _write_bo(rng: random.Random, fd: int, offset: int, size: int, twice: memoryview, zeros: memoryview) -> int:
    """Write one BO's bytes at ``offset``; return their crc32."""
    all_zero = rng.random() < 1 / 6
    zero_from = zero_to = 0
    if not all_zero and size > PAGE_BYTES and rng.random() < 1 / 3:
        pages = size // PAGE_BYTES
        first = rng.randrange(pages)
        zero_from, zero_to = first * PAGE_BYTES, rng.randrange(first + 1, pages + 1) * PAGE_BYTES
    crc = 0
    done = 0
    while done < size:
        n = min(BLOCK_BYTES, size - done)
        if all_zero:
            crc = zlib.crc32(zeros[:n], crc)
        else:
            rotation = rng.randrange(BLOCK_BYTES)
            chunk = twice[rotation:rotation + n]
            lo, hi = max(zero_from, done) - done, min(zero_to, done + n) - done  # zero part of this chunk
            if lo < hi:
                data = bytearray(chunk)
                data[lo:hi] = bytes(hi - lo)
                if lo > 0 or hi < n:
                    _pwrite_all(fd, memoryview(data), offset + done)
                crc = zlib.crc32(data, crc)
            else:
                _pwrite_all(fd, chunk, offset + done)
                crc = zlib.crc32(chunk, crc)
        done += n
    return crc


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)
