"""KfdBackend against the fake KFD/DRM machine (tests/fake_amdgpu.py), at the ioctl boundary.

The whole real-hardware sequence runs here: topology mapping over a sysfs tree with CPU
nodes, /dev/kfd version check, CRIU RESTORE with device and BO buckets and priv_data,
the collection of restored BOs and VMA offset changes, the SDMA fill through a render
node of the copier's own (INFO, USERPTR, GEM_CREATE, GEM_MMAP, GEM_VA, CTX, CS, WAIT_CS,
PRIME_FD_TO_HANDLE, GEM_CLOSE), the CPU fill through dma-buf SYNC, and CRIU RESUME. The
fake checks each ioctl as the kernel would; the negative tests inject a wrong argument or
order and see it refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

import fake_amdgpu as fk
from conftest import FIXTURES, needs_fixtures
from fake_amdgpu import FakeAmdgpuMachine, GpuSpec, kfd_priv_data
from pycriu_restore.images.proto.amdgpu_pb2 import CriuKfd
from pycriu_restore.plugins.amdgpu import dmabuf, ioctl, kfd, kfd_backend, topology
from pycriu_restore.plugins.amdgpu.backend import LocalGpu
from pycriu_restore.plugins.amdgpu.ioctl import GpuIoctlError
from pycriu_restore.plugins.amdgpu.kfd_backend import KfdBackend

PAGE = 4096
VRAM, GTT, DOORBELL, MMIO = (kfd.KFD_IOC_ALLOC_MEM_FLAGS_VRAM, kfd.KFD_IOC_ALLOC_MEM_FLAGS_GTT,
                             kfd.KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL,
                             kfd.KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP)
LOCAL = [GpuSpec(gpu_id=0xB1, minor=130, node_id=2), GpuSpec(gpu_id=0xB2, minor=131, node_id=3)]
CKPT_IDS = {0xB1: 0xA1, 0xB2: 0xA2}  # local -> checkpoint gpu_id (the ids differ by machine)


# --- the fake's own layouts against the C headers ------------------------------------------------

def test_fake_layouts_match_the_headers(tmp_path: Path) -> None:
    """The fake's struct formats are written from the headers: compile C to check each size."""
    assert shutil.which("gcc"), "gcc is needed"
    checks = {
        "sizeof(struct kfd_ioctl_get_version_args)": fk.KFD_GET_VERSION.size,
        "sizeof(struct kfd_ioctl_criu_args)": fk.KFD_CRIU_ARGS.size,
        "sizeof(struct kfd_criu_device_bucket)": fk.KFD_DEVICE_BUCKET.size,
        "sizeof(struct kfd_criu_bo_bucket)": fk.KFD_BO_BUCKET.size,
        "sizeof(struct drm_gem_close)": fk.DRM_GEM_CLOSE.size,
        "sizeof(struct drm_prime_handle)": fk.DRM_PRIME_HANDLE.size,
        "sizeof(union drm_amdgpu_gem_create)": fk.GEM_CREATE.size,
        "sizeof(union drm_amdgpu_gem_mmap)": fk.GEM_MMAP.size,
        "sizeof(union drm_amdgpu_ctx)": fk.CTX.size,
        "sizeof(union drm_amdgpu_cs)": fk.CS_IN.size,
        "sizeof(struct drm_amdgpu_cs_chunk)": fk.CS_CHUNK.size,
        "sizeof(struct drm_amdgpu_cs_chunk_ib)": fk.CS_CHUNK_IB.size,
        "sizeof(struct drm_amdgpu_bo_list_in)": fk.BO_LIST_IN.size,
        "sizeof(struct drm_amdgpu_bo_list_entry)": fk.BO_LIST_ENTRY.size,
        "sizeof(struct drm_amdgpu_info)": fk.INFO.size,
        "sizeof(struct drm_amdgpu_gem_va)": fk.GEM_VA.size,
        "sizeof(union drm_amdgpu_wait_cs)": fk.WAIT_CS.size,
        "sizeof(struct drm_amdgpu_gem_userptr)": fk.USERPTR.size,
        "sizeof(struct dma_buf_sync)": fk.DMA_BUF_SYNC.size,
        "sizeof(struct drm_amdgpu_info_device)": fk.INFO_DEVICE_BYTES,
        "AMDKFD_IOC_CRIU_OP": fk.ioc(3, "K", 0x22, fk.KFD_CRIU_ARGS.size),
        "DRM_IOCTL_AMDGPU_GEM_VA": fk.ioc(1, "d", 0x48, fk.GEM_VA.size),
        "DRM_IOCTL_PRIME_FD_TO_HANDLE": fk.ioc(3, "d", 0x2E, fk.DRM_PRIME_HANDLE.size),
    }
    for name, (offset, _fmt) in fk.INFO_DEVICE_FIELDS.items():
        checks[f"offsetof(struct drm_amdgpu_info_device, {name})"] = offset
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "drm").symlink_to("/usr/include/libdrm")
    body = "\n".join(f'    printf("%llu\\n", (unsigned long long)({expr}));' for expr in checks)
    src = tmp_path / "fake_layouts.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/kfd_ioctl.h>\n"
                   "#include <linux/dma-buf.h>\n#include <drm.h>\n#include <amdgpu_drm.h>\n"
                   f"int main(void)\n{{\n{body}\n    return 0;\n}}\n")
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{tmp_path / 'include'}", "-I/usr/include/libdrm",
                    "-o", str(tmp_path / "a.out"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "a.out")], capture_output=True, text=True, check=True).stdout
    assert dict(zip(checks, map(int, out.split()))) == checks


def test_kfd_mmap_offsets_agree_with_the_fakes() -> None:
    """kfd_priv.h's /dev/kfd offsets are kernel-internal (no header to compile against): the
    package's copy (kfd.py, which the generator writes doorbell offsets with) and the fake's,
    written separately, must agree, down to the 16-bit gpu_id mask."""
    assert (kfd.KFD_MMAP_TYPE_DOORBELL, kfd.KFD_MMAP_TYPE_MMIO) == (fk.KFD_MMAP_TYPE_DOORBELL, fk.KFD_MMAP_TYPE_MMIO)
    assert kfd.KFD_MMAP_GPU_ID_SHIFT == fk.KFD_MMAP_GPU_ID_SHIFT
    for gpu_id in (0x1, 0xB2, 0xFFFF, 0x1_2345):
        assert kfd.kfd_mmap_offset(kfd.KFD_MMAP_TYPE_DOORBELL, gpu_id) == \
            fk.KFD_MMAP_TYPE_DOORBELL | fk.kfd_mmap_gpu_id(gpu_id)


# --- a machine, a checkpoint, the backend wired to the fake ----------------------------------------

def _device_entries(image: CriuKfd, machine: FakeAmdgpuMachine) -> None:
    """CRIU's device entries for the checkpoint machine: its sysfs nodes (CPUs first), other ids."""
    topo = topology.local_topology(machine.topology_root)
    for node in topo.nodes:
        entry = image.device_entries.add(node_id=node.node_id, gpu_id=CKPT_IDS.get(node.gpu_id, 0))
        for name, value in node.props.items():
            setattr(entry, name, value)
        if node.is_gpu:
            entry.drm_render_minor = node.render_minor - 2  # the checkpoint machine's minors differed
        for link in node.iolinks:
            entry.iolinks.add(type=link.type, node_to_id=link.node_to)
    image.num_of_gpus = sum(1 for n in topo.nodes if n.is_gpu)
    image.num_of_cpus = len(topo.nodes) - image.num_of_gpus


# (gpu, alloc_flags, size): per GPU a doorbell, VRAM and GTT; an MMIO page on the first.
LAYOUT = [(0xA1, DOORBELL, 2 * PAGE), (0xA1, VRAM, 5 * PAGE), (0xA1, GTT, 2 * PAGE), (0xA1, MMIO, PAGE),
          (0xA2, DOORBELL, 2 * PAGE), (0xA2, VRAM, 3 * PAGE), (0xA2, GTT, 7 * PAGE)]


def make_checkpoint(machine: FakeAmdgpuMachine, layout: list[tuple[int, int, int]] = LAYOUT) -> CriuKfd:
    image = CriuKfd(pid=50123, num_of_bos=len(layout), num_of_objects=0, shared_mem_size=0,
                    shared_mem_magic=0)
    _device_entries(image, machine)
    for i, (gpu_id, flags, size) in enumerate(layout):
        image.bo_entries.add(addr=0x7F00_0000_0000 + (gpu_id & 0xF) * (1 << 36) + i * (1 << 21), size=size,
                             offset=0xD000_0000 + i * 0x10000, alloc_flags=flags, gpu_id=gpu_id,
                             handle=i + 1)
    image.priv_data = kfd_priv_data([gpu for gpu, _, _ in layout], image.num_of_gpus)
    return image


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    fake = FakeAmdgpuMachine(tmp_path / "machine", LOCAL, cpu_nodes=2)
    monkeypatch.setattr(ioctl, "ioctl_syscall", fake.ioctl)
    yield fake
    fake.close()


def make_backend(machine: FakeAmdgpuMachine, **kwargs: Any) -> KfdBackend:
    return KfdBackend(topology_root=machine.topology_root, dev_dir=str(machine.dev_dir), fd_floor=200,
                      staging_bytes=kwargs.pop("staging_bytes", 2 * PAGE),
                      policy=topology.MatchPolicy(), **kwargs)


def contents(index: int, size: int) -> bytes:
    """Distinct, non-zero bytes for BO ``index``."""
    block = zlib.crc32(bytes([index])).to_bytes(4, "little") * (PAGE // 4)
    return bytes((b + i) & 0xFF for i, b in enumerate(block)) * (size // PAGE)


def run_restore(machine: FakeAmdgpuMachine, backend: KfdBackend, image: CriuKfd, tmp_path: Path,
                chunk: int = 3 * PAGE) -> tuple[list[Any], dict[int, LocalGpu], int]:
    """The task's part (map, open, restore) and the filler's part (prepare, fill in chunks)."""
    gpus = backend.map_gpus(image)
    device_fd = backend.open_device()
    restored = backend.restore_bos(device_fd, image, {g: local.gpu_id for g, local in gpus.items()})
    for bo in restored:
        src = tmp_path / f"bo{bo.index}"
        src.write_bytes(b"\xEE" * 8 + contents(bo.index, bo.size))
        src_fd = os.open(src, os.O_RDONLY)
        try:
            backend.prepare_fill(bo.gpu_id, gpus[bo.gpu_id])
            for start in range(0, bo.size, chunk):
                n = min(chunk, bo.size - start)
                backend.fill(bo.dmabuf_fd, n, src_fd, 8 + start, bo.gpu_id, bo_offset=start)
            backend.release_bo(bo.dmabuf_fd)
        finally:
            os.close(src_fd)
    return restored, gpus, device_fd


def _kfd_bos(machine: FakeAmdgpuMachine) -> list[fk.Bo]:
    return machine.processes[os.getpid()].bos


# --- the whole sequence ---------------------------------------------------------------------------

@pytest.mark.parametrize("copy_method", ["sdma", "cpu"])
def test_kfd_restore_fill_and_resume_against_the_fake(machine: FakeAmdgpuMachine, tmp_path: Path,
                                                      copy_method: str) -> None:
    image = make_checkpoint(machine)
    backend = make_backend(machine, copy_method=copy_method)
    restored, gpus, device_fd = run_restore(machine, backend, image, tmp_path)
    vma_fds: list[tuple[int, int]] = []
    try:
        # CPU nodes were skipped; the GPUs were remapped to this machine's ids and minors.
        assert gpus == {0xA1: LocalGpu(0xB1, 130), 0xA2: LocalGpu(0xB2, 131)}
        assert [(b.index, b.gpu_id, b.local_gpu_id, b.minor) for b in restored] == [
            (1, 0xA1, 0xB1, 130), (2, 0xA1, 0xB1, 130), (5, 0xA2, 0xB2, 131), (6, 0xA2, 0xB2, 131)]
        kfd_bos = _kfd_bos(machine)
        for bo in restored:  # every byte arrived, at the offset the kernel gave
            assert machine.bo_bytes(kfd_bos[bo.index]) == contents(bo.index, bo.size)
            assert bo.restored_offset == kfd_bos[bo.index].mmap_offset
            # the task's render fd (the one KFD got) may mmap the BO there: VRAM VMAs map through it
            assert machine.can_mmap(backend.render_fd(bo.local_gpu_id), bo.restored_offset)
            # and the device VMA gets that very DRM file (a dup: the same open file), at that offset
            pgoff, vma_fd = backend.vma_target(bo.local_gpu_id, bo.restored_offset)
            vma_fds.append((pgoff, vma_fd))
            assert pgoff == bo.restored_offset and machine.can_mmap(vma_fd, pgoff)
            assert machine.file_of(vma_fd).fid == machine.file_of(backend.render_fd(bo.local_gpu_id)).fid
        # once its device VMAs have their dups, the task closes the DRM files it opened for KFD:
        # the dups still map the BOs (same open file), and KFD's VM lives on (its own reference)
        task_files = {machine.file_of(backend.render_fd(g)).fid for g in (0xB1, 0xB2)}
        task_fds = list(backend._task_render_fds.values())
        backend.close_task_files()
        assert backend._task_render_fds == {}
        for fd in task_fds:
            with pytest.raises(OSError):
                os.fstat(fd)
        assert all(machine.can_mmap(fd, pgoff) for pgoff, fd in vma_fds)
        # doorbell and MMIO VMAs move to /dev/kfd offsets naming the *local* gpu_id
        remaps = {m.addr: m.new_offset for m in backend.vma_remaps}
        db = image.bo_entries[4]
        assert remaps[db.addr] == fk.KFD_MMAP_TYPE_DOORBELL | (0xB2 << 46)
        assert remaps[image.bo_entries[3].addr] == fk.KFD_MMAP_TYPE_MMIO | (0xB1 << 46)
        # and such a VMA reopens /dev/kfd by path at that offset (no fd), as CRIU's update_vmamap:
        # kfd_mmap maps the doorbells of the process that calls it, through any open of /dev/kfd
        for addr in (db.addr, image.bo_entries[3].addr):
            assert backend.kfd_vma_target(remaps[addr]) == (remaps[addr], None)

        backend.resume(os.getpid())
        names = machine.names()
        assert names[:2] == ["GET_VERSION", "CRIU_RESTORE"] and names[-1] == "CRIU_RESUME"
        assert machine.calls[-1][2]["unfilled"] == []
        if copy_method == "sdma":
            # one copier file per GPU, not the task's: its VM never holds the task's BO addresses
            cs_files = {d["file"] for _, n, d in machine.calls if n == "CS"}
            assert len(cs_files) == 2 and not cs_files & task_files
            # every submission is waited for before the next one on that file
            pending: dict[int, int] = {}
            for _, name, d in machine.calls:
                if name == "CS":
                    assert d["file"] not in pending
                    pending[d["file"]] = d["seq"]
                elif name == "WAIT_CS":
                    assert pending.pop(d["file"]) == d["seq"]
            assert not pending
        else:
            syncs = [d["flags"] for _, n, d in machine.calls if n == "DMA_BUF_SYNC"]
            assert syncs and len(syncs) % 2 == 0
    finally:
        backend.close()
        for bo in restored:
            os.close(bo.dmabuf_fd)
        os.close(device_fd)
        for fd in [*backend._task_render_fds.values(), *(fd for _, fd in vma_fds)]:
            os.close(fd)
    # close() gave back every lane and import: the copiers' files hold no handle any more
    for (_gpu, _mark), file in machine._files.items():
        if not file.kfd_vm:
            assert file.handles == {} and file.vm == [] and file.contexts == {}


def test_the_device_buckets_follow_the_image_and_skip_cpu_nodes(machine: FakeAmdgpuMachine,
                                                                 tmp_path: Path) -> None:
    image = make_checkpoint(machine)
    assert [e.gpu_id for e in image.device_entries] == [0, 0, 0xA1, 0xA2]
    backend = make_backend(machine)
    restored, _, device_fd = run_restore(machine, backend, image, tmp_path)
    proc = machine.processes[os.getpid()]
    assert proc.user_ids == {0xB1: 0xA1, 0xB2: 0xA2}  # pdd user ids are the checkpoint's
    assert {g: f.fid for g, f in proc.drm_files.items()} == {
        g: machine.file_of(backend.render_fd(g)).fid for g in (0xB1, 0xB2)}
    assert all(fd >= 200 for fd in backend._task_render_fds.values())  # parked above fd_floor
    backend.close()
    for bo in restored:
        os.close(bo.dmabuf_fd)
    os.close(device_fd)
    for fd in backend._task_render_fds.values():
        os.close(fd)


# --- the fake refuses what the kernel would -------------------------------------------------------

def _refused(machine: FakeAmdgpuMachine) -> str:
    return machine.refusals[-1][1]


def test_a_drifted_struct_is_refused(machine: FakeAmdgpuMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror whose size drifted encodes another request number: no such ioctl."""

    class Short(ctypes.Structure):
        _fields_ = [("x", ctypes.c_uint64 * 6)]  # 48 bytes, not kfd_ioctl_criu_args' 56

    monkeypatch.setattr(kfd, "AMDKFD_IOC_CRIU_OP", ioctl.iowr("K", 0x22, Short))
    backend = make_backend(machine)
    image = make_checkpoint(machine)
    gpus = backend.map_gpus(image)
    fd = backend.open_device()
    with pytest.raises(GpuIoctlError) as info:
        backend.restore_bos(fd, image, {g: v.gpu_id for g, v in gpus.items()})
    assert info.value.errno == errno.ENOTTY and "no ioctl of the uapi headers" in _refused(machine)
    os.close(fd)
    for rfd in backend._task_render_fds.values():
        os.close(rfd)


def test_a_render_fd_of_the_wrong_gpu_is_refused(machine: FakeAmdgpuMachine) -> None:
    backend = make_backend(machine)
    image = make_checkpoint(machine)
    fd = backend.open_device()
    backend.map_gpus(image)
    with pytest.raises(GpuIoctlError) as info:  # the two GPUs swapped: each bucket gets the other's node
        backend.restore_bos(fd, image, _swapped_render_nodes(backend))
    assert info.value.errno == errno.EINVAL and "is a render node of GPU" in _refused(machine)
    os.close(fd)
    for rfd in backend._task_render_fds.values():
        os.close(rfd)


def _swapped_render_nodes(backend: KfdBackend) -> dict[int, int]:
    """Open each GPU's render node under the other GPU's id, as a buggy backend would."""
    a = backend._task_render_node(0xB1)
    b = backend._task_render_node(0xB2)
    backend._task_render_fds[0xB1], backend._task_render_fds[0xB2] = b, a
    return {0xA1: 0xB1, 0xA2: 0xB2}


def test_empty_priv_data_is_refused(machine: FakeAmdgpuMachine) -> None:
    """The kernel's criu_restore wants priv_data: a generator writing b"" would never restore."""
    backend = make_backend(machine)
    image = make_checkpoint(machine)
    image.priv_data = b""
    gpus = backend.map_gpus(image)
    fd = backend.open_device()
    with pytest.raises(GpuIoctlError) as info:
        backend.restore_bos(fd, image, {g: v.gpu_id for g, v in gpus.items()})
    assert info.value.errno == errno.EINVAL and "priv_data_size 0" in _refused(machine)
    os.close(fd)
    for rfd in backend._task_render_fds.values():
        os.close(rfd)


def test_resume_before_restore_is_esrch_and_tolerated(machine: FakeAmdgpuMachine) -> None:
    make_backend(machine).resume(os.getpid())  # ESRCH: no KFD state, as CRIU tolerates
    assert machine.refusals == [("AMDKFD_IOC_CRIU_OP", f"pid {os.getpid()} has no restored KFD process")]


def test_cpu_writes_without_dma_buf_sync_are_lost(machine: FakeAmdgpuMachine, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the SYNC bracket (a wrong order of calls): the fake's device never sees the bytes."""
    monkeypatch.setattr(dmabuf, "cpu_write_access", lambda fd, device="": nullcontext())
    monkeypatch.setattr(kfd_backend.dmabuf, "cpu_write_access", lambda fd, device="": nullcontext())
    image = make_checkpoint(machine)
    backend = make_backend(machine, copy_method="cpu")
    restored, _, device_fd = run_restore(machine, backend, image, tmp_path)
    kfd_bos = _kfd_bos(machine)
    assert all(machine.bo_bytes(kfd_bos[b.index]) == bytes(b.size) for b in restored)
    backend.resume(os.getpid())
    assert machine.calls[-1][2]["unfilled"] == [1, 2, 5, 6]  # queues would start on empty VRAM
    for bo in restored:
        os.close(bo.dmabuf_fd)
    os.close(device_fd)
    for rfd in backend._task_render_fds.values():
        os.close(rfd)


def test_an_sdma_copy_outside_the_copiers_vm_faults(machine: FakeAmdgpuMachine, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong destination address in the IB: the job faults and WAIT_CS says so."""
    real_copy_ib = kfd_backend.sdma.copy_ib
    monkeypatch.setattr(kfd_backend.sdma, "copy_ib",
                        lambda src, dst, n, family: real_copy_ib(src, dst + (1 << 40), n, family))
    image = make_checkpoint(machine)
    backend = make_backend(machine)
    with pytest.raises(GpuIoctlError) as info:
        run_restore(machine, backend, image, tmp_path)
    assert info.value.errno == errno.ECANCELED and "faulted" in _refused(machine)
    backend.close()
    for rfd in backend._task_render_fds.values():
        os.close(rfd)


# --- a generated checkpoint (CRIU's shape) restored by KfdBackend on the fake -------------------

@needs_fixtures
def test_a_generated_checkpoint_restores_on_the_fake(machine: FakeAmdgpuMachine, tmp_path: Path) -> None:
    """CPU nodes, priv_data in the kernel's layout, doorbells: KfdBackend fills every BO right."""
    from pycriu_restore.images import ImageSet
    from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state
    from pycriu_restore.plugins.amdgpu.images import load_kfd_image

    state = generate_gpu_state(FIXTURES / "images" / "counter", tmp_path / "ckpt", n_gpus=2, n_bos=6,
                               total_bytes=24 * PAGE * 6, seed=5)
    image = load_kfd_image(ImageSet.open(tmp_path / "ckpt"), state.kfd_id)
    backend = make_backend(machine, staging_bytes=8 * PAGE)
    gpus = backend.map_gpus(image.kfd)
    assert sorted(local.gpu_id for local in gpus.values()) == [0xB1, 0xB2]
    device_fd = backend.open_device()
    restored = backend.restore_bos(device_fd, image.kfd, {g: v.gpu_id for g, v in gpus.items()})
    try:
        for bo in restored:
            content = image.content(bo.index)
            pages = image.gpus[bo.gpu_id].path
            src_fd = os.open(pages, os.O_RDONLY)
            backend.prepare_fill(bo.gpu_id, gpus[bo.gpu_id])
            backend.fill(bo.dmabuf_fd, bo.size, src_fd, content.file_offset, bo.gpu_id)
            backend.release_bo(bo.dmabuf_fd)
            os.close(src_fd)
        kfd_bos = _kfd_bos(machine)
        found = {(bo.gpu_id, bo.index): zlib.crc32(machine.bo_bytes(kfd_bos[bo.index])) for bo in restored}
        assert found == state.checksums
        # each doorbell's image offset is what KFD's CHECKPOINT writes; its VMA moves to the offset
        # RESTORE gives (the local gpu_id's) and reopens /dev/kfd there
        remaps = {m.addr: m.new_offset for m in backend.vma_remaps}
        doorbells = [b for b in image.kfd.bo_entries if b.alloc_flags & DOORBELL]
        assert len(doorbells) == 2
        for bo in doorbells:
            assert bo.offset == fk.KFD_MMAP_TYPE_DOORBELL | fk.kfd_mmap_gpu_id(bo.gpu_id)
            new = fk.KFD_MMAP_TYPE_DOORBELL | fk.kfd_mmap_gpu_id(gpus[bo.gpu_id].gpu_id)
            assert remaps[bo.addr] == new and backend.kfd_vma_target(new) == (new, None)
        backend.resume(os.getpid())
        assert machine.calls[-1][1:] == ("CRIU_RESUME", {"pid": os.getpid(), "unfilled": []})
        assert machine.calls[1][2] == {"devices": 2, "bos": len(image.kfd.bo_entries), "objects": 2}
    finally:
        backend.close()
        for bo in restored:
            os.close(bo.dmabuf_fd)
        os.close(device_fd)
        for fd in backend._task_render_fds.values():
            os.close(fd)


# --- render nodes: GEM objects re-created in the GPU's one DRM file ------------------------------

def make_render_node(gpu_id: int = 0xA1, minor: int = 128) -> Any:
    """A render node: a created GTT BO (mapped, to fill), an import of KFD BO 1 (handle 2), and a
    VRAM BO the CPU cannot map."""
    from pycriu_restore.images.proto.amdgpu_pb2 import CriuRenderNode

    node = CriuRenderNode(gpu_id=gpu_id, id=9, drm_render_minor=minor, num_of_bos=3)
    gtt = node.bo_entries.add(addr=0x10_0000_0000, size=2 * PAGE, offset=0x1_2345_0000, alloc_flags=0,
                              alignment=PAGE, preferred_domains=2, handle=7, is_import=0, num_of_vms=1)
    gtt.vm_entries.add(addr=0x10_0000_0000, size=2 * PAGE, offset=0, flags=0x6)
    imp = node.bo_entries.add(addr=0x11_0000_0000, size=5 * PAGE, offset=0x1_2346_0000, alloc_flags=0,
                              alignment=PAGE, preferred_domains=4, handle=2, is_import=1, num_of_vms=1)
    imp.vm_entries.add(addr=0x11_0000_0000, size=5 * PAGE, offset=0, flags=0x6)
    node.bo_entries.add(addr=0, size=PAGE, offset=0x1_2347_0000, alloc_flags=1 << 1, alignment=PAGE,
                        preferred_domains=4, handle=3, is_import=0, num_of_vms=0)
    return node


def test_a_render_node_is_restored_into_the_kfd_drm_file(machine: FakeAmdgpuMachine, tmp_path: Path) -> None:
    image = make_checkpoint(machine)
    backend = make_backend(machine)
    restored, gpus, device_fd = run_restore(machine, backend, image, tmp_path)
    by_handle = {image.bo_entries[b.index].handle: b.dmabuf_fd for b in restored}
    node = make_render_node()
    fd, bos = backend.restore_render_node(node, gpus[0xA1], lambda handle: by_handle[handle])
    try:
        task_file = machine.file_of(backend.render_fd(0xB1))
        assert machine.file_of(fd) is task_file  # the app's render fd is KFD's DRM file, as upstream
        assert sorted(task_file.handles) == [2, 3, 7]  # every BO has its checkpointed handle
        assert [(b.index, b.handle, b.dmabuf_fd >= 0) for b in bos] == [(0, 7, True), (1, 2, False), (2, 3, True)]
        # the import is KFD BO 1 itself: same memory, same mmap offset, already filled
        kfd_bo = _kfd_bos(machine)[1]
        assert task_file.handles[2] is kfd_bo and bos[1].new_offset == kfd_bo.mmap_offset
        assert bos[2].new_offset is None  # NO_CPU_ACCESS: no GEM_MMAP, which would be EPERM
        for bo in bos[:2]:
            assert machine.can_mmap(fd, bo.new_offset)
        assert {(va, size) for va, size, _, _ in task_file.vm} >= {(0x10_0000_0000, 2 * PAGE),
                                                                 (0x11_0000_0000, 5 * PAGE)}
        created = [n for _, n, d in machine.calls if n in ("GEM_CREATE", "PRIME_FD_TO_HANDLE", "GEM_CHANGE_HANDLE")
                   and d.get("file") == task_file.fid]
        assert created == ["GEM_CREATE", "GEM_CHANGE_HANDLE", "PRIME_FD_TO_HANDLE", "GEM_CHANGE_HANDLE",
                           "GEM_CREATE", "GEM_CHANGE_HANDLE"]
        # its contents go through the same fill path as KFD BOs
        src = tmp_path / "drm-pages"
        src.write_bytes(b"\0" * 8 + contents(77, 2 * PAGE))
        src_fd = os.open(src, os.O_RDONLY)
        backend.fill(bos[0].dmabuf_fd, 2 * PAGE, src_fd, 8, 0xA1)
        backend.release_bo(bos[0].dmabuf_fd)
        os.close(src_fd)
        assert machine.bo_bytes(task_file.handles[7]) == contents(77, 2 * PAGE)
        # a second render node of the same GPU shares the file: restored BOs are not made twice
        again_fd, again = backend.restore_render_node(node, gpus[0xA1], lambda handle: by_handle[handle])
        assert again == [] and machine.file_of(again_fd) is task_file
        os.close(again_fd)
    finally:
        backend.close()
        for b in restored + [b for b in bos if b.dmabuf_fd >= 0]:
            os.close(b.dmabuf_fd)
        os.close(fd)
        os.close(device_fd)
        for rfd in backend._task_render_fds.values():
            os.close(rfd)


def test_a_render_mapping_over_a_kfd_bo_is_refused(machine: FakeAmdgpuMachine, tmp_path: Path) -> None:
    """KFD's BOs live in the same GPU VM: a render-node VA on top of one is a conflict (EINVAL)."""
    image = make_checkpoint(machine)
    backend = make_backend(machine)
    restored, gpus, device_fd = run_restore(machine, backend, image, tmp_path)
    node = make_render_node()
    node.bo_entries[0].vm_entries[0].addr = image.bo_entries[1].addr
    with pytest.raises(GpuIoctlError) as info:
        backend.restore_render_node(node, gpus[0xA1], lambda handle: -1)
    assert info.value.errno == errno.EINVAL and "conflicts with the mapping" in _refused(machine)
    backend.close()
    for b in restored:
        os.close(b.dmabuf_fd)
    os.close(device_fd)
    for rfd in backend._task_render_fds.values():
        os.close(rfd)


def test_mapping_before_the_handle_is_changed_back_is_refused(machine: FakeAmdgpuMachine,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip GEM_CHANGE_HANDLE (a wrong order): the checkpointed handle names nothing yet (ENOENT)."""
    from pycriu_restore.plugins.amdgpu import drm

    monkeypatch.setattr(drm, "gem_change_handle", lambda *args: None)
    backend = make_backend(machine)
    backend.map_gpus(make_checkpoint(machine))
    with pytest.raises(GpuIoctlError) as info:
        backend.restore_render_node(make_render_node(), LocalGpu(0xB1, 130), lambda handle: -1)
    assert info.value.errno == errno.ENOENT and "has no handle 7" in _refused(machine)
    assert machine.names()[-2:] == ["GEM_CREATE", "PRIME_HANDLE_TO_FD"]
    for rfd in backend._task_render_fds.values():
        os.close(rfd)


def test_gpus_may_swap_ids_between_machines(machine: FakeAmdgpuMachine, tmp_path: Path) -> None:
    """KFD finds a bucket's device by its actual id (kfd_device_by_id), the BOs by the user id."""
    image = make_checkpoint(machine)
    backend = make_backend(machine)
    backend.map_gpus(image)
    device_fd = backend.open_device()
    restored = backend.restore_bos(device_fd, image, {0xA1: 0xB2, 0xA2: 0xB1})
    try:
        assert machine.processes[os.getpid()].user_ids == {0xB1: 0xA2, 0xB2: 0xA1}
        assert {b.index: b.local_gpu_id for b in restored} == {1: 0xB2, 2: 0xB2, 5: 0xB1, 6: 0xB1}
        kfd_bos = _kfd_bos(machine)
        assert all(kfd_bos[b.index].gpu.gpu_id == b.local_gpu_id for b in restored)
    finally:
        for b in restored:
            os.close(b.dmabuf_fd)
        os.close(device_fd)
        for rfd in backend._task_render_fds.values():
            os.close(rfd)
