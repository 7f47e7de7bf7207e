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

from pycriu_restore.images import BadRecord, ImageError, ImageSet, ImageTruncated, MissingImage
from pycriu_restore.images.kinds import ImageKind, file_name, kind_by_name
from pycriu_restore.images.schemas import amdgpu_pb2
from pycriu_restore.plugins.amdgpu.kfd import KFD_IOC_ALLOC_MEM_FLAGS_GTT, KFD_IOC_ALLOC_MEM_FLAGS_VRAM

CriuKfd = amdgpu_pb2.CriuKfd

# The u64 at the start of a pages file: the number of content bytes that follow.
PAGES_HEADER = struct.Struct("<Q")

# Bounds on what an image may claim, checked before anything is allocated. KFD itself
# allows at most 64 GPUs per process (MAX_GPU_INSTANCE in the kernel's kfd_priv.h).
MAX_GPUS = 64
MAX_BOS = 1 << 20


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
    gpus: dict[int, GpuPages]  # checkpoint gpu_id -> its pages file (every device entry)

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


def load_kfd_image(images: ImageSet, file_id: int) -> KfdImage:
    """Read amdgpu-kfd-<file_id>.img and check it against its GPUs' pages files.

    Checks, each an ImageError naming the file: the counts the message claims match its
    lists and stay in bounds; every BO names a GPU of device_entries; each GPU's pages file
    exists (when it has contents), its header equals the sum of that GPU's VRAM/GTT BO
    sizes, and exactly that many bytes follow it. Reads only the 8-byte headers.
    """
    name = kfd_image_name(file_id)
    path = images.path(name)
    image = images.image(name, required=True, kind=_kind("AMDGPU_KFD"))
    kfd: CriuKfd = image.entries[0]
    where = str(path)
    if len(kfd.device_entries) != kfd.num_of_gpus:
        raise BadRecord(where, f"num_of_gpus is {kfd.num_of_gpus} but {len(kfd.device_entries)} device entries follow")
    if kfd.num_of_gpus > MAX_GPUS:
        raise BadRecord(where, f"{kfd.num_of_gpus} GPUs, more than the {MAX_GPUS} KFD allows")
    if len(kfd.bo_entries) != kfd.num_of_bos:
        raise BadRecord(where, f"num_of_bos is {kfd.num_of_bos} but {len(kfd.bo_entries)} BO entries follow")
    if kfd.num_of_bos > MAX_BOS:
        raise BadRecord(where, f"{kfd.num_of_bos} BOs, more than the limit of {MAX_BOS}")

    per_gpu: dict[int, list[BoContent]] = {}
    for device in kfd.device_entries:
        if device.gpu_id in per_gpu:
            raise BadRecord(where, f"gpu_id {device.gpu_id:#x} appears in two device entries")
        per_gpu[device.gpu_id] = []
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
