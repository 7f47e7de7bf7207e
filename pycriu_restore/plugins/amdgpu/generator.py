"""Add simulated GPU state to a real checkpoint, so that simgpu has VRAM to restore.

CRIU cannot dump a GPU process here (there is no GPU), so tests and benchmarks take a real
CRIU 4.2 checkpoint of a CPU workload and add what CRIU's amdgpu plugin would have written
for a process that held /dev/kfd (images.py draws the files)::

    files.img                       + FileEntry {type EXT, id K, ext {id K}}
    fdinfo-<root files_id>.img      + FdinfoEntry {id K, type EXT, fd 100 (or the next free)}
    amdgpu-kfd-K.img                CriuKfd: n GPUs, their BOs (VRAM, GTT, and one doorbell
                                    BO per GPU, which has no contents)
    amdgpu-pages-K-<gpu>.img        per GPU: u64 size, then its VRAM/GTT BOs' bytes

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
import zlib
from dataclasses import dataclass
from pathlib import Path

from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.images.image import Image
from pycriu_restore.images.kinds import kind_by_name
from pycriu_restore.images.schemas import amdgpu_pb2, fdinfo_pb2
from pycriu_restore.plugins.amdgpu.images import (
    PAGES_HEADER,
    has_contents,
    kfd_image_name,
    pages_image_name,
)
from pycriu_restore.plugins.amdgpu.kfd import (
    KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL,
    KFD_IOC_ALLOC_MEM_FLAGS_GTT,
    KFD_IOC_ALLOC_MEM_FLAGS_VRAM,
)

SIM_KFD_FD = 100  # the fd the generated device file is given in the root task (if free)
PAGE_BYTES = 4096
BLOCK_BYTES = 1 << 20  # the random block, and the chunk each rotation covers
DOORBELL_BYTES = 2 * PAGE_BYTES
_GPU_VA_BASE = 0x7F00_0000_0000  # GPU virtual addresses of the BOs (KFD's SVM range)
_GPU_VA_STRIDE = 1 << 40  # each GPU's BOs in its own 1 TiB
_VA_ALIGN = 2 << 20


@dataclass(frozen=True)
class SimulatedGpuState:
    """What :func:`generate_gpu_state` added: the kfd file, its fd and the expected BO checksums."""

    kfd_id: int
    fd: int
    gpu_ids: tuple[int, ...]
    checksums: dict[tuple[int, int], int]  # (checkpoint gpu_id, BO index) -> zlib.crc32
    total_bytes: int


def add_simulated_gpu_state(src_images_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str],
                            n_gpus: int, n_bos: int, total_bytes: int, seed: int) -> dict[tuple[int, int], int]:
    """Copy a checkpoint to ``dst_dir`` and add simulated GPU state; return the expected checksums.

    The checksums are zlib.crc32 of each VRAM/GTT BO, keyed (checkpoint gpu_id, BO index in
    the kfd image): what SimDevice.checksums() must report after a correct restore.
    See :func:`generate_gpu_state` for the preconditions.
    """
    return generate_gpu_state(src_images_dir, dst_dir, n_gpus, n_bos, total_bytes, seed).checksums


def generate_gpu_state(src_images_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str],
                       n_gpus: int, n_bos: int, total_bytes: int, seed: int) -> SimulatedGpuState:
    """Copy ``src_images_dir`` to ``dst_dir`` (which must not exist) and add a /dev/kfd file.

    ``n_bos`` VRAM/GTT BOs share ``total_bytes`` (a multiple of 4096, at least a page each)
    and are spread over ``n_gpus`` GPUs; each GPU also gets one doorbell BO.
    """
    if not 1 <= n_gpus <= 64:
        raise ValueError(f"n_gpus is {n_gpus}, expected 1..64 (KFD's limit)")
    if n_bos < n_gpus:
        raise ValueError(f"n_bos is {n_bos}, expected at least one per GPU ({n_gpus})")
    if total_bytes % PAGE_BYTES or total_bytes < n_bos * PAGE_BYTES:
        raise ValueError(f"total_bytes is {total_bytes}, expected a multiple of {PAGE_BYTES} "
                         f"of at least {n_bos * PAGE_BYTES} (a page per BO)")
    dst = Path(dst_dir)
    shutil.copytree(src_images_dir, dst)
    images = ImageSet.open(dst)
    root = images.pstree()[0]
    files_id = images.ids(root.pid).files_id
    rng = random.Random(seed)

    kfd_id = _add_ext_file(dst)
    fd = _add_fd(dst, files_id, kfd_id)
    kfd = _make_kfd(rng, root.pid, n_gpus, n_bos, total_bytes)
    kfd_kind = kind_by_name("AMDGPU_KFD")
    assert kfd_kind is not None, "generator: no AMDGPU_KFD kind"
    (dst / kfd_image_name(kfd_id)).write_bytes(dump_image(Image(kind=kfd_kind, entries=[kfd])))
    checksums = _write_pages(rng, dst, kfd_id, kfd)
    gpu_ids = tuple(d.gpu_id for d in kfd.device_entries)
    return SimulatedGpuState(kfd_id=kfd_id, fd=fd, gpu_ids=gpu_ids, checksums=checksums, total_bytes=total_bytes)


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
    """Give the root task the EXT file at SIM_KFD_FD (or the next free number); return the fd."""
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
    kfd = amdgpu_pb2.CriuKfd(pid=pid, num_of_gpus=n_gpus, num_of_cpus=0, num_of_objects=0,
                             shared_mem_size=0, shared_mem_magic=0, priv_data=b"")
    for i, gpu_id in enumerate(gpu_ids):
        kfd.device_entries.append(_device(i, gpu_id))

    total_pages = total_bytes // PAGE_BYTES
    cuts = sorted(rng.sample(range(1, total_pages), n_bos - 1)) if n_bos > 1 else []
    sizes = [(b - a) * PAGE_BYTES for a, b in zip([0, *cuts], [*cuts, total_pages])]
    va = {g: _GPU_VA_BASE + i * _GPU_VA_STRIDE for i, g in enumerate(gpu_ids)}

    def add_bo(gpu_id: int, size: int, flags: int) -> None:
        index = len(kfd.bo_entries)
        kfd.bo_entries.append(amdgpu_pb2.KfdBoEntry(
            addr=va[gpu_id], size=size, offset=(gpu_ids.index(gpu_id) + 1) << 40 | (va[gpu_id] & ((1 << 40) - 1)),
            alloc_flags=flags, gpu_id=gpu_id, handle=index + 1))
        va[gpu_id] += (size + _VA_ALIGN - 1) // _VA_ALIGN * _VA_ALIGN

    for i, size in enumerate(sizes):
        gpu_id = gpu_ids[i % n_gpus]
        if i < n_gpus:  # each GPU's doorbell page first, as a process maps it early
            add_bo(gpu_id, DOORBELL_BYTES, KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL)
        add_bo(gpu_id, size, KFD_IOC_ALLOC_MEM_FLAGS_GTT if i % 3 == 2 else KFD_IOC_ALLOC_MEM_FLAGS_VRAM)
    kfd.num_of_bos = len(kfd.bo_entries)
    return kfd


def _device(i: int, gpu_id: int) -> amdgpu_pb2.KfdDeviceEntry:
    """Topology properties of an MI210-like GPU (only gpu_id and the render minor matter here)."""
    return amdgpu_pb2.KfdDeviceEntry(
        node_id=i + 1, gpu_id=gpu_id, cpu_cores_count=0, simd_count=416, mem_banks_count=1, caches_count=0,
        io_links_count=0, max_waves_per_simd=8, lds_size_in_kb=64, gds_size_in_kb=0, num_gws=64,
        wave_front_size=64, array_count=8, simd_arrays_per_engine=1, cu_per_simd_array=13, simd_per_cu=4,
        max_slots_scratch_cu=32, vendor_id=0x1002, device_id=0x740F, domain=0, drm_render_minor=128 + i,
        hive_id=0, num_sdma_engines=2, num_sdma_xgmi_engines=3, num_sdma_queues_per_engine=8, num_cp_queues=24,
        fw_version=78, capability=0x2A3E0280, sdma_fw_version=8, vram_public=0, vram_size=64 << 30)


def _write_pages(rng: random.Random, dst: Path, kfd_id: int, kfd: amdgpu_pb2.CriuKfd) -> dict[tuple[int, int], int]:
    """Write each GPU's pages file (sparse where zero); return the crc32 of every content BO."""
    block = rng.randbytes(BLOCK_BYTES)
    twice = memoryview(block + block)  # a rotation by r is twice[r:r + BLOCK_BYTES], no copy
    zeros = memoryview(bytes(BLOCK_BYTES))
    checksums: dict[tuple[int, int], int] = {}
    for device in kfd.device_entries:
        gpu_id = device.gpu_id
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
