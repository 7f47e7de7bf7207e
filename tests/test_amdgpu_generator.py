"""The simulated-GPU image generator, and the amdgpu image checks it is read back with.

The generated images are read through the package's own image layer (ImageSet, the plan
builder, images.load_kfd_image); checksums are recomputed from the written files.
"""

from __future__ import annotations

import os
import stat
import zlib

import pytest

from conftest import FIXTURES, needs_fixtures
from pycriu_restore.images import BadRecord, ImageSet, ImageTruncated, MissingImage, dump_image, load_image
from pycriu_restore.images.image import Image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.model import ExtFileEnd
from pycriu_restore.plugins.amdgpu.generator import SIM_KFD_FD, add_simulated_gpu_state, generate_gpu_state
from pycriu_restore.plugins.amdgpu.images import (
    has_contents,
    kfd_file_ids,
    kfd_image_name,
    load_kfd_image,
    pages_image_name,
)
from pycriu_restore.plugins.amdgpu.kfd import (
    KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL,
    KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP,
    KFD_MMAP_TYPE_MMIO,
)

pytestmark = needs_fixtures

COUNTER = FIXTURES / "images" / "counter"
MIB = 1 << 20


def crc_of_file_range(path, offset: int, size: int) -> int:
    crc = 0
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left:
            data = f.read(min(left, MIB))
            assert data, f"{path} ends early"
            crc = zlib.crc32(data, crc)
            left -= len(data)
    return crc


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    dst = tmp_path_factory.mktemp("gen") / "counter"
    state = generate_gpu_state(COUNTER, dst, n_gpus=3, n_bos=24, total_bytes=40 * MIB, seed=11)
    return dst, state


def test_adds_an_ext_file_at_fd_100_of_the_root_task(generated):
    dst, state = generated
    assert state.fd == SIM_KFD_FD == 100
    plan = build_plan(ImageSet.open(dst))
    ext = [f for f in plan.root.files if isinstance(f, ExtFileEnd)]
    assert [(f.fd, f.file_id) for f in ext] == [(100, state.kfd_id)]
    files = load_image(dst / "files.img").entries
    assert [e.id for e in files if e.HasField("ext")] == [state.kfd_id]
    assert state.kfd_id == max(e.id for e in files)  # a fresh id


def test_kfd_image_describes_the_gpus_and_bos(generated):
    dst, state = generated
    image = load_kfd_image(ImageSet.open(dst), state.kfd_id)
    kfd = image.kfd
    assert kfd.pid == 31100 and kfd.num_of_gpus == 3 and kfd.num_of_bos == len(kfd.bo_entries) == 24 + 3 + 1
    # CRIU's shape: every topology node, the CPU nodes (gpu_id 0) first, in node order
    assert [(d.node_id, d.gpu_id) for d in kfd.device_entries] == [(0, 0), (1, 0)] + [
        (2 + i, g) for i, g in enumerate(state.gpu_ids)]
    assert kfd.num_of_cpus == 2 and kfd.device_entries[0].cpu_cores_count == 64
    assert all(d.iolinks[0].node_to_id == 0 for d in kfd.device_entries if d.gpu_id)
    # priv_data as KFD's RESTORE parses it: process (8) + devices (8 each) + BOs (272 each) + objects
    assert kfd.num_of_objects == 2
    assert len(kfd.priv_data) == 8 + 3 * 8 + 28 * 272 + 2 * 8
    assert int.from_bytes(kfd.priv_data[:4], "little") == 1  # KFD_CRIU_PRIV_VERSION
    doorbells = [b for b in kfd.bo_entries if b.alloc_flags == KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL]
    assert sorted(b.gpu_id for b in doorbells) == sorted(state.gpu_ids)  # one per GPU, without contents
    mmio = kfd.bo_entries[-1]  # the first GPU's MMIO remap page, last, at KFD's offset for it
    assert (mmio.alloc_flags, mmio.gpu_id, mmio.size, mmio.offset) == (
        KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP, state.gpu_ids[0], 4096, KFD_MMAP_TYPE_MMIO | state.gpu_ids[0] << 46)
    content = [b for b in kfd.bo_entries if has_contents(b.alloc_flags)]
    assert sum(b.size for b in content) == 40 * MIB and all(b.size % 4096 == 0 for b in content)
    assert len({b.addr for b in kfd.bo_entries}) == len(kfd.bo_entries)  # distinct VAs
    assert len({b.offset for b in kfd.bo_entries}) == len(kfd.bo_entries)
    assert kfd_file_ids(ImageSet.open(dst)) == [state.kfd_id]


def test_each_gpu_file_holds_its_bos_from_offset_8_and_the_checksums_match(generated):
    dst, state = generated
    image = load_kfd_image(ImageSet.open(dst), state.kfd_id)
    seen = {}
    for gpu_id, pages in image.gpus.items():
        assert pages.bos[0].file_offset == 8  # per-GPU offsets: every file starts after its header
        with open(pages.path, "rb") as f:
            assert int.from_bytes(f.read(8), "little") == pages.total_bytes
        for bo in pages.bos:
            seen[(gpu_id, bo.index)] = crc_of_file_range(pages.path, bo.file_offset, bo.size_bytes)
    assert seen == state.checksums
    assert len(set(state.checksums.values())) > len(state.checksums) // 2  # BOs differ from each other


def test_some_bos_are_zero_and_zeros_are_holes(generated):
    dst, state = generated
    image = load_kfd_image(ImageSet.open(dst), state.kfd_id)
    zero_crcs = {key for key, crc in state.checksums.items()
                 if crc == zlib.crc32(bytes(image.kfd.bo_entries[key[1]].size))}
    assert zero_crcs, "seed 11 makes at least one all-zero BO"
    allocated = sum(os.stat(p.path).st_blocks * 512 for p in image.gpus.values())
    assert allocated < image.total_bytes  # sparse: zero chunks were not written


def test_same_seed_same_state_other_seed_other_contents(tmp_path):
    a = add_simulated_gpu_state(COUNTER, tmp_path / "a", 2, 6, 4 * MIB, seed=5)
    b = add_simulated_gpu_state(COUNTER, tmp_path / "b", 2, 6, 4 * MIB, seed=5)
    c = add_simulated_gpu_state(COUNTER, tmp_path / "c", 2, 6, 4 * MIB, seed=6)
    assert a == b
    assert a != c


def test_refuses_impossible_requests(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4096"):
        generate_gpu_state(COUNTER, tmp_path / "x", 1, 2, 4096 * 2 + 1, 0)
    with pytest.raises(ValueError, match="at least one per GPU"):
        generate_gpu_state(COUNTER, tmp_path / "y", 3, 2, 4096 * 8, 0)


# --- images.py: what a damaged amdgpu checkpoint reports --------------------------------


@pytest.fixture
def small(tmp_path):
    dst = tmp_path / "counter"
    state = generate_gpu_state(COUNTER, dst, n_gpus=2, n_bos=4, total_bytes=MIB, seed=3)
    return dst, state


def _rewrite_kfd(dst, kfd_id, change):
    path = dst / kfd_image_name(kfd_id)
    image = load_image(path)
    change(image.entries[0])
    path.write_bytes(dump_image(Image(kind=image.kind, entries=image.entries)))


def test_pages_header_that_disagrees_with_the_bos_is_refused(small):
    dst, state = small
    path = dst / pages_image_name(state.kfd_id, state.gpu_ids[1])
    with open(path, "r+b") as f:
        f.write((12345).to_bytes(8, "little"))
    with pytest.raises(BadRecord) as info:
        load_kfd_image(ImageSet.open(dst), state.kfd_id)
    assert str(path) in str(info.value)
    assert "header says 12345 bytes, but the 2 VRAM/GTT BOs of gpu_id" in str(info.value)


def test_missing_and_truncated_pages_files_are_refused(small):
    dst, state = small
    path = dst / pages_image_name(state.kfd_id, state.gpu_ids[0])
    size = path.stat().st_size
    os.truncate(path, size - 4096)
    with pytest.raises(ImageTruncated, match=f"{size - 4096 - 8} bytes follow the header, expected {size - 8}"):
        load_kfd_image(ImageSet.open(dst), state.kfd_id)
    path.unlink()
    with pytest.raises(MissingImage, match=f"no pages file for gpu_id {state.gpu_ids[0]:#x}"):
        load_kfd_image(ImageSet.open(dst), state.kfd_id)


def test_inconsistent_kfd_images_are_refused(small):
    dst, state = small

    def orphan(kfd):
        kfd.bo_entries[1].gpu_id = 0xBEEF

    _rewrite_kfd(dst, state.kfd_id, orphan)
    with pytest.raises(BadRecord, match="BO 1 .* is on gpu_id 0xbeef, which no device entry describes"):
        load_kfd_image(ImageSet.open(dst), state.kfd_id)

    def miscount(kfd):
        kfd.num_of_bos = 99

    _rewrite_kfd(dst, state.kfd_id, miscount)
    with pytest.raises(BadRecord, match="num_of_bos is 99 but 7 BO entries follow"):
        load_kfd_image(ImageSet.open(dst), state.kfd_id)


def test_cpu_nodes_in_any_position_are_accepted_and_miscounts_refused(small):
    """Real images list CPU nodes (gpu_id 0) among the GPUs; the counts must still add up."""
    dst, state = small

    def cpu_in_the_middle(kfd):
        cpu0, _cpu1, gpu0, gpu1 = list(kfd.device_entries)
        del kfd.device_entries[:]
        kfd.device_entries.extend([gpu0, cpu0, gpu1])
        kfd.num_of_cpus = 1

    _rewrite_kfd(dst, state.kfd_id, cpu_in_the_middle)
    image = load_kfd_image(ImageSet.open(dst), state.kfd_id)
    assert [d.gpu_id for d in image.kfd.device_entries] == [state.gpu_ids[0], 0, state.gpu_ids[1]]
    assert sorted(image.gpus) == sorted(state.gpu_ids)  # only GPUs have pages files

    def one_cpu_too_many(kfd):
        kfd.num_of_cpus = 2

    _rewrite_kfd(dst, state.kfd_id, one_cpu_too_many)
    with pytest.raises(BadRecord, match=r"num_of_gpus 2 \+ num_of_cpus 2 = 4 topology nodes, but 3 device "
                                        r"entries follow"):
        load_kfd_image(ImageSet.open(dst), state.kfd_id)

    def gpu_counted_as_cpu(kfd):
        kfd.num_of_cpus, kfd.num_of_gpus = 2, 1

    _rewrite_kfd(dst, state.kfd_id, gpu_counted_as_cpu)
    with pytest.raises(BadRecord, match="num_of_gpus is 1 but 2 device entries have a gpu_id"):
        load_kfd_image(ImageSet.open(dst), state.kfd_id)

    def same_node_twice(kfd):
        kfd.num_of_cpus, kfd.num_of_gpus = 1, 2
        kfd.device_entries[1].node_id = kfd.device_entries[0].node_id

    _rewrite_kfd(dst, state.kfd_id, same_node_twice)
    with pytest.raises(BadRecord, match="device entry 1: node_id .* appears in two device entries"):
        load_kfd_image(ImageSet.open(dst), state.kfd_id)


def test_device_vmas_map_each_doorbell_over_dev_kfd_at_kfds_offset(tmp_path):
    """With device_vmas, each GPU's doorbell BO is a VMA_EXT_PLUGIN mapping of /dev/kfd, as CRIU
    dumps it (dump_filemap: shmid a regular-file entry of the node, pgoff the offset the
    process mapped): at the BO's address, pgoff the BO's image offset, which is what KFD's
    CHECKPOINT writes for a doorbell (KFD_MMAP_TYPE_DOORBELL | gpu_id << 46). The plan takes
    that 64-bit offset as is (the plugin moves the VMA)."""
    from pycriu_restore.plan.validate import VMA_EXT_PLUGIN
    from pycriu_restore.plugins.amdgpu.kfd import KFD_MMAP_TYPE_DOORBELL

    dst = tmp_path / "counter"
    state = generate_gpu_state(COUNTER, dst, n_gpus=2, n_bos=4, total_bytes=MIB, seed=3, render_nodes=True,
                               device_vmas=True)
    kfd = load_kfd_image(ImageSet.open(dst), state.kfd_id).kfd
    doorbells = sorted(((b.addr, i, b) for i, b in enumerate(kfd.bo_entries)
                        if b.alloc_flags == KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL), key=lambda d: d[0])
    assert [b.offset for _, _, b in doorbells] == [KFD_MMAP_TYPE_DOORBELL | b.gpu_id << 46 for _, _, b in doorbells]
    on_kfd = [v for v in state.device_vmas if v.path == "/dev/kfd" and v.bo[2] in {i for _, i, _ in doorbells}]
    assert [(v.start, v.end, v.pgoff, v.bo, v.sim_memfd) for v in on_kfd] == [
        (b.addr, b.addr + b.size, b.offset, ("kfd", b.gpu_id, i), "simgpu-kfd") for _, i, b in doorbells]
    mmio = len(kfd.bo_entries) - 1  # and the MMIO page, the same way
    assert [(v.pgoff, v.sim_memfd) for v in state.device_vmas if v.bo == ("kfd", kfd.bo_entries[mmio].gpu_id, mmio)] \
        == [(kfd.bo_entries[mmio].offset, "simgpu-kfd")]
    assert all(v.checksum == zlib.crc32(bytes(v.end - v.start)) for v in on_kfd)  # no contents: zeros

    files = {e.id: e for e in load_image(dst / "files.img").entries}
    vmas = {v.start: v for v in load_image(dst / f"mm-{kfd.pid}.img").entries[0].vmas}
    written = [vmas[v.start] for v in on_kfd]
    assert len({e.shmid for e in written}) == 1  # one regular-file entry for the node
    reg = files[written[0].shmid].reg
    assert reg.name == "/dev/kfd" and stat.S_ISCHR(reg.mode) and reg.flags == os.O_RDWR
    assert all(e.pgoff == v.pgoff and e.status & VMA_EXT_PLUGIN and e.flags == 0x1 and e.prot == 0x3
               for e, v in zip(written, on_kfd))
    plan = build_plan(ImageSet.open(dst))
    planned = {v.start: v for v in plan.root.vmas if v.file is not None and v.file.plugin}
    assert [(planned[v.start].pgoff, planned[v.start].file.path) for v in on_kfd] == [
        (v.pgoff, "/dev/kfd") for v in on_kfd]
    # CRIU's plugin names itself in the inventory when it dumps a render-node mapping
    assert list(load_image(dst / "inventory.img").entries[0].plugins_entry.plugins) == ["amdgpu_plugin"]


def test_the_state_goes_to_the_task_asked_for(tmp_path):
    """``pid`` puts the files in that task's fd table and mappings; a pid of no task is refused."""
    pipes = FIXTURES / "images" / "pipes"
    tasks = [e.pid for e in ImageSet.open(pipes).pstree()]
    child = tasks[1]
    dst = tmp_path / "pipes"
    state = generate_gpu_state(pipes, dst, n_gpus=1, n_bos=2, total_bytes=MIB, seed=3, render_nodes=True,
                               device_vmas=True, pid=child)
    plan = build_plan(ImageSet.open(dst))
    holders = {t.pid for t in plan.tasks for f in t.files if isinstance(f, ExtFileEnd) and f.file_id == state.kfd_id}
    assert holders == {child}
    assert load_kfd_image(ImageSet.open(dst), state.kfd_id).kfd.pid == child
    mapped = {t.pid for t in plan.tasks for v in t.vmas if v.file is not None and v.file.plugin}
    assert mapped == {child}
    with pytest.raises(ValueError, match="pid 1 is not a task of"):
        generate_gpu_state(pipes, tmp_path / "nobody", n_gpus=1, n_bos=2, total_bytes=MIB, seed=3, pid=1)
