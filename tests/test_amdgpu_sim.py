"""simgpu and the AmdgpuPlugin hooks, run as a restore runs them: orchestrator here, task in a fork.

The images are a real CRIU fixture with generated GPU state (generator.py); the expected BO
checksums come from the generator, the found ones from the SimDevice the orchestrator keeps.
The full restore (ptrace, blob) is the lead's fixture test; here the hooks are driven by hand
in the same processes and order: restore_init, fork, post_forking (parent) while the child
runs restore_ext_file, then resume_devices_late and cleanup.
"""

from __future__ import annotations

import json
import mmap
import os
import time
import zlib

import pytest

from conftest import FIXTURES, needs_fixtures
from pycriu_restore.images import ImageSet
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plugins.amdgpu import plugin as plugin_module
from pycriu_restore.plugins.amdgpu.channel import ChannelError, Command, Entry, GpuRecord
from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state
from pycriu_restore.plugins.amdgpu.images import load_kfd_image
from pycriu_restore.plugins.amdgpu.plugin import AmdgpuError, AmdgpuPlugin
from pycriu_restore.plugins.amdgpu.backend import GpuBackend
from pycriu_restore.plugins.amdgpu.kfd import (
    KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL,
    KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP,
    KFD_MMAP_TYPE_DOORBELL,
)
from pycriu_restore.plugins.amdgpu.sim import (SIM_KFD_MMAP_OFFSET_BASE, SIM_KFD_NAME, SIM_MMAP_OFFSET_BASE,
                                               SimBackend, SimDevice, SimGpuError, sim_kfd_offsets)
from pycriu_restore.plugins.api import ExtFile, RestoreContext

pytestmark = needs_fixtures

MIB = 1 << 20


def fd_target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


# --- the backend on its own ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_images(tmp_path_factory):
    dst = tmp_path_factory.mktemp("sim") / "counter"
    return dst, generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=3, n_bos=12,
                                   total_bytes=24 * MIB, seed=21)


def test_restore_bos_makes_one_named_memfd_per_vram_gtt_bo(gpu_images):
    dst, state = gpu_images
    image = load_kfd_image(ImageSet.open(dst), state.kfd_id)
    backend = SimBackend()
    device = backend.open_device()
    assert fd_target(device) == f"/memfd:{SIM_KFD_NAME} (deleted)"
    bos = backend.restore_bos(device, image.kfd, {g: g for g in state.gpu_ids})
    try:
        assert [(b.gpu_id, b.index) for b in bos] == sorted(state.checksums, key=lambda k: k[1])
        for bo in bos:
            entry = image.kfd.bo_entries[bo.index]
            assert fd_target(bo.dmabuf_fd) == f"/memfd:simgpu-bo-{bo.gpu_id:04x}-{bo.index} (deleted)"
            assert os.fstat(bo.dmabuf_fd).st_size == bo.size == entry.size
            assert (bo.addr, bo.old_offset) == (entry.addr, entry.offset)
            assert bo.restored_offset == SIM_MMAP_OFFSET_BASE + bo.index * 4096 != entry.offset
    finally:
        for bo in bos:
            os.close(bo.dmabuf_fd)
        os.close(device)


def _fds_of(fd: int) -> list[int]:
    """This process's fds of the same file as ``fd`` (dups of it, and other opens)."""
    st = os.fstat(fd)
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            other = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue  # listdir's own fd, gone
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            out.append(int(name))
    return sorted(out)


def test_doorbells_move_to_simgpus_offsets_of_the_kfd_memfd_and_map_there(gpu_images):
    """The protocol's vma_remaps and kfd_vma_target on simgpu: each doorbell BO gets a small
    offset of its own in the kfd memfd (KFD's, 3 << 62 | gpu_id << 46, is beyond any file),
    the memfd holds it, and a /dev/kfd VMA maps a new dup of that memfd there; the dup kept
    for this is closed by close_task_files, and an offset no doorbell has is refused."""
    dst, state = gpu_images
    kfd = load_kfd_image(ImageSet.open(dst), state.kfd_id).kfd
    doorbells = {i: b for i, b in enumerate(kfd.bo_entries) if b.alloc_flags & KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL}
    assert len(doorbells) == 3 and all(b.offset >> 62 == KFD_MMAP_TYPE_DOORBELL >> 62 for b in doorbells.values())
    mmio = len(kfd.bo_entries) - 1  # the generator's MMIO page, the last BO
    assert kfd.bo_entries[mmio].alloc_flags & KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP
    offsets = sim_kfd_offsets(kfd)
    assert sorted(offsets) == sorted([*doorbells, mmio])
    # 2 pages per doorbell, then the MMIO page
    assert sorted(offsets.values()) == [SIM_KFD_MMAP_OFFSET_BASE + n * 8192 for n in range(4)]
    backend = SimBackend()
    assert isinstance(backend, GpuBackend)
    device = backend.open_device()
    bos = backend.restore_bos(device, kfd, {g: g for g in state.gpu_ids})
    kfd_path = f"/memfd:{SIM_KFD_NAME} (deleted)"
    try:
        moved = {m.addr: m for m in backend.vma_remaps}
        assert len(backend.vma_remaps) == len(kfd.bo_entries)  # VRAM/GTT, doorbells, MMIO, as KfdBackend
        for bo in bos:
            assert moved[bo.addr].new_offset == bo.restored_offset and moved[bo.addr].old_offset == bo.old_offset
        assert os.fstat(device).st_size == SIM_KFD_MMAP_OFFSET_BASE + 3 * 8192 + 4096  # sparse, holds every page
        for index, db in doorbells.items():
            remap = moved[db.addr]
            assert (remap.old_offset, remap.new_offset, remap.alloc_flags) == (db.offset, offsets[index],
                                                                               db.alloc_flags)
            pgoff, fd = backend.kfd_vma_target(remap.new_offset)
            try:
                assert pgoff == offsets[index] != db.offset and fd_target(fd) == kfd_path
                assert os.fstat(fd).st_ino == os.fstat(device).st_ino  # the task's own kfd memfd
                with mmap.mmap(fd, db.size, mmap.MAP_SHARED, offset=pgoff) as page:
                    assert page[:] == bytes(db.size)  # mappable there, and a hole
            finally:
                os.close(fd)
        with pytest.raises(SimGpuError, match=r"no doorbell or MMIO page at offset 0x5133000001000 of "
                                              r"simgpu-kfd \(offsets: 0x100000, 0x102000, 0x104000, 0x106000\)"):
            backend.kfd_vma_target(SIM_MMAP_OFFSET_BASE + 4096)  # a VRAM BO's: not a /dev/kfd page
        assert len(_fds_of(device)) == 2  # the device and the dup kept for kfd_vma_target
        backend.close_task_files()
        assert _fds_of(device) == [device]
        with pytest.raises(SimGpuError, match=r"\(offsets: none\)"):
            backend.kfd_vma_target(offsets[min(doorbells)])
    finally:
        for bo in bos:
            os.close(bo.dmabuf_fd)
        os.close(device)


def test_mmio_and_odd_sized_pages_get_whole_pages_of_their_own():
    """MMIO pages move as doorbells do; each BO rounds up to whole pages; VRAM/GTT BOs move in
    their DRM file and userptr BOs not at all (KfdBackend's REMAPPED_BO_FLAGS)."""
    from pycriu_restore.images.schemas import amdgpu_pb2
    from pycriu_restore.plugins.amdgpu import kfd as k

    flags = [k.KFD_IOC_ALLOC_MEM_FLAGS_VRAM, k.KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL,
             k.KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP, k.KFD_IOC_ALLOC_MEM_FLAGS_GTT,
             k.KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL, k.KFD_IOC_ALLOC_MEM_FLAGS_USERPTR]
    sizes = [8192, 8192, 4096, 4096, 100, 4096]
    kfd = amdgpu_pb2.CriuKfd(pid=1, num_of_gpus=1, num_of_bos=len(flags))
    kfd.device_entries.add(node_id=0, gpu_id=0xA1, drm_render_minor=128)
    for i, (flag, size) in enumerate(zip(flags, sizes)):
        kfd.bo_entries.add(addr=0x7F00_0000_0000 + i * (2 << 20), size=size, offset=(0xD0 + i) << 20,
                           alloc_flags=flag, gpu_id=0xA1, handle=i + 1)
    base = SIM_KFD_MMAP_OFFSET_BASE
    assert sim_kfd_offsets(kfd) == {1: base, 2: base + 8192, 4: base + 12288}
    backend = SimBackend()
    device = backend.open_device()
    bos = backend.restore_bos(device, kfd, {0xA1: 0xA1})
    try:
        assert [(m.addr, m.new_offset) for m in backend.vma_remaps] == [
            (kfd.bo_entries[0].addr, SIM_MMAP_OFFSET_BASE), (kfd.bo_entries[1].addr, base),
            (kfd.bo_entries[2].addr, base + 8192), (kfd.bo_entries[3].addr, SIM_MMAP_OFFSET_BASE + 3 * 4096),
            (kfd.bo_entries[4].addr, base + 12288)]
        assert os.fstat(device).st_size == base + 16384
        pgoff, fd = backend.kfd_vma_target(base + 8192)  # the MMIO page
        os.close(fd)
        assert pgoff == base + 8192
    finally:
        backend.close_task_files()
        for bo in bos:
            os.close(bo.dmabuf_fd)
        os.close(device)


def test_without_device_vmas_simgpu_keeps_no_kfd_dup(gpu_images):
    dst, state = gpu_images
    kfd = load_kfd_image(ImageSet.open(dst), state.kfd_id).kfd
    backend = SimBackend(keep_vma_targets=False)
    device = backend.open_device()
    bos = backend.restore_bos(device, kfd, {g: g for g in state.gpu_ids})
    try:
        assert _fds_of(device) == [device]
        assert sorted(m.new_offset for m in backend.vma_remaps if m.new_offset < SIM_MMAP_OFFSET_BASE) == \
            sorted(sim_kfd_offsets(kfd).values())  # still reported
    finally:
        backend.close_task_files()
        for bo in bos:
            os.close(bo.dmabuf_fd)
        os.close(device)


def test_fill_copies_data_and_leaves_holes_zero(tmp_path):
    src = tmp_path / "pages"
    data = os.urandom(3 * MIB)
    with open(src, "wb") as f:
        f.write(data[:MIB])
        f.seek(2 * MIB)  # a hole of 1 MiB in the middle
        f.write(data[2 * MIB:])
    expected = data[:MIB] + bytes(MIB) + data[2 * MIB:]
    src_fd = os.open(src, os.O_RDONLY)
    bo = os.memfd_create("bo")
    os.ftruncate(bo, 3 * MIB - 4096)
    backend = SimBackend()
    # Two calls, as the pool's chunks make them: offsets in the file and in the BO move together.
    backend.fill(bo, MIB + 4096, src_fd, 4096, gpu_id=1, bo_offset=0)
    backend.fill(bo, 2 * MIB - 8192, src_fd, MIB + 8192, gpu_id=1, bo_offset=MIB + 4096)
    assert os.pread(bo, 3 * MIB, 0) == expected[4096:]
    os.close(src_fd)
    os.close(bo)


def test_sim_device_keeps_dups_and_checksums_them():
    fds = []
    for i in range(2):
        fd = os.memfd_create(f"bo{i}")
        os.write(fd, bytes([i + 1]) * (5 * MIB + 17))
        fds.append(fd)
    device = SimDevice()
    device.adopt(Command(kfd_id=1, gpus=[GpuRecord(7, 7, 0)],
                         entries=[Entry(7, 0, 3, 8, 5 * MIB + 17), Entry(7, 1, 4, 8, 5 * MIB + 17)], fds=fds))
    for fd in fds:
        os.close(fd)  # the device holds its own copies
    assert device.keys() == [(7, 3), (7, 4)]
    assert device.checksums() == {(7, 3): zlib.crc32(b"\x01" * (5 * MIB + 17)),
                                  (7, 4): zlib.crc32(b"\x02" * (5 * MIB + 17))}
    assert device.read(7, 4, 0, 3) == b"\x02\x02\x02"
    device.close()
    assert len(device) == 0


# --- the plugin's hooks, in a restore's processes ---------------------------------------------


def run_hooks(images_dir, state, options, plugin=None, task_hook=None, keep_channel=True, reports=None):
    """restore_init; fork a "task" that runs restore_ext_file; post_forking; resume; cleanup.

    Returns (plugin, the task's report, seconds the task spent in restore_ext_file).
    """
    images = ImageSet.open(images_dir)
    plan = build_plan(images)
    ctx = RestoreContext(images=images, plan=plan, options=options)
    plugin = plugin or AmdgpuPlugin()
    plugin.restore_init(ctx)
    channel_fds = plugin.inherited_fds() + ((plugin._orch_sock.fileno(),) if plugin._orch_sock else ())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        report = {}
        try:
            os.close(r)
            # As the task's preparation does (restore/task.py _keep_only): every inherited fd
            # is closed but the ones the plugin asked for.
            keep = {0, 1, 2, w, *(plugin.inherited_fds() if keep_channel else ())}
            for name in os.listdir("/proc/self/fd"):
                if int(name) not in keep:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            start = time.monotonic()
            fd = plugin.restore_ext_file(ctx, plan.root, ExtFile(file_id=state.kfd_id, fd=state.fd, flags=0))
            report["seconds"] = time.monotonic() - start
            report["device"] = fd_target(fd)
            report["open_channel_fds"] = [n for n in channel_fds if os.path.exists(f"/proc/self/fd/{n}")]
            report["other_file"] = plugin.restore_ext_file(ctx, plan.root, ExtFile(file_id=999, fd=7, flags=0))
            if task_hook:
                report.update(task_hook(ctx, plan, plugin))
            plugin.close_inherited_fds()  # nothing left to close, and nothing else is closed
            report["device_after_close"] = fd_target(fd)
        except BaseException as err:  # noqa: BLE001
            report["error"] = f"{type(err).__name__}: {err}"
        os.write(w, json.dumps(report).encode())
        os._exit(0)
    os.close(w)
    failed = True
    try:
        plugin.post_forking(ctx)
        with os.fdopen(r) as f:
            report = json.loads(f.read())
        if reports is not None:
            reports.append(report)
        os.waitpid(pid, 0)
        plugin.resume_devices_late(ctx, pid)
        failed = False
    finally:
        plugin.cleanup(ctx, failed)
    return plugin, report


@pytest.mark.parametrize("parallel", [True, False])
def test_every_bo_of_three_gpus_is_restored(gpu_images, parallel, monkeypatch):
    dst, state = gpu_images
    monkeypatch.setattr(plugin_module, "_checkpoint_pid", lambda pid: 31100)  # the fork stands for 31100
    plugin, report = run_hooks(dst, state, {"gpu_backend": "sim", "parallel_gpu": parallel})
    assert "error" not in report, report["error"]
    assert report["device"] == f"/memfd:{SIM_KFD_NAME} (deleted)"
    assert report["open_channel_fds"] == []  # the task let go of both ends
    assert report["device_after_close"] == report["device"]
    assert report["other_file"] is None  # not a kfd file: not ours
    assert plugin.parallel is parallel
    try:
        assert plugin.sim_device.checksums() == state.checksums
        assert plugin.stats.commands == 1 and plugin.stats.bos == len(state.checksums)
        copied = sum(plugin.stats.bytes_by_gpu.values())
        assert copied == 24 * MIB  # both modes copy in the orchestrator's pool
        assert len(plugin.backend.resumed) == 1
    finally:
        plugin.sim_device.close()


def test_parallel_mode_returns_to_the_task_before_the_copies_end(gpu_images):
    dst, state = gpu_images
    # 3 GPUs, 24 MiB, 16 MiB/s per GPU: the copies take about 0.5 s after the task moved on.
    options = {"gpu_backend": "sim", "parallel_gpu": True, "gpu_bytes_per_s": 16 * MIB}
    start = time.monotonic()
    plugin, report = run_hooks(dst, state, options)
    total = time.monotonic() - start
    assert "error" not in report, report["error"]
    assert report["seconds"] < 0.2 < 0.4 < total
    assert plugin.sim_device.checksums() == state.checksums
    plugin.sim_device.close()


def test_serial_mode_waits_in_the_task_for_its_fill(gpu_images):
    dst, state = gpu_images
    options = {"gpu_backend": "sim", "parallel_gpu": False, "gpu_bytes_per_s": 16 * MIB}
    plugin, report = run_hooks(dst, state, options)
    assert "error" not in report, report["error"]
    assert report["seconds"] > 0.4  # the task waited until the pool had copied its 24 MiB
    assert plugin.sim_device.checksums() == state.checksums
    plugin.sim_device.close()


def test_update_vma_map_gives_the_new_offset_and_file_of_a_device_vma(gpu_images):
    """A doorbell VMA of /dev/kfd: simgpu's offset in the task's kfd memfd (kfd_vma_target);
    a VRAM BO's VMA of its render node: the BO's memfd at 0 (vma_target). A VRAM BO's VMA
    claimed by /dev/kfd is refused by simgpu (a real GPU reopens /dev/kfd, as CRIU)."""
    dst, state = gpu_images
    image = load_kfd_image(ImageSet.open(dst), state.kfd_id)
    index = next(i for (_, i) in state.checksums)
    bo = image.kfd.bo_entries[index]
    minor = next(d.drm_render_minor for d in image.kfd.device_entries if d.gpu_id == bo.gpu_id)
    db_index, db = next((i, b) for i, b in enumerate(image.kfd.bo_entries)
                        if b.alloc_flags & KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL)

    def task_hook(ctx, plan, plugin):
        out = {}
        for name, path, vma in (("doorbell", "//dev/kfd", db), ("bo", f"/dev/dri/renderD{minor}", bo)):
            pgoff, fd = plugin.update_vma_map(ctx, plan.root, path, vma.addr, vma.offset)
            out[name] = [pgoff, fd_target(fd)]
            os.close(fd)
        try:
            plugin.update_vma_map(ctx, plan.root, "/dev/kfd", bo.addr, bo.offset)
        except SimGpuError as err:
            out["bo_on_kfd"] = str(err)
        out["other_offset"] = plugin.update_vma_map(ctx, plan.root, "/dev/kfd", db.addr, db.offset + 4096)
        out["other_file"] = plugin.update_vma_map(ctx, plan.root, "/dev/zero", bo.addr, bo.offset)
        return out

    # A backend that keeps its targets, as with device VMAs in the images (these have none).
    plugin, report = run_hooks(dst, state, {}, plugin=AmdgpuPlugin(backend=SimBackend()), task_hook=task_hook)
    assert "error" not in report, report["error"]
    assert report["doorbell"] == [sim_kfd_offsets(image.kfd)[db_index], f"/memfd:{SIM_KFD_NAME} (deleted)"]
    assert report["bo"] == [0, f"/memfd:simgpu-bo-{bo.gpu_id:04x}-{index} (deleted)"]
    assert f"no doorbell or MMIO page at offset {SIM_MMAP_OFFSET_BASE + index * 4096:#x}" in report["bo_on_kfd"]
    assert report["other_offset"] is None and report["other_file"] is None
    plugin.sim_device.close()


def test_a_command_with_running_offsets_across_gpus_is_refused(gpu_images):
    """Upstream's multi-GPU bug (§5.12.1): one offset over all GPUs. The orchestrator catches it."""
    dst, state = gpu_images
    images = ImageSet.open(dst)
    ctx = RestoreContext(images=images, plan=build_plan(images), options={"gpu_backend": "sim"})
    plugin = AmdgpuPlugin()
    plugin.restore_init(ctx)
    try:
        image = plugin._kfd[state.kfd_id]
        entries, running = [], 8
        for n, (gpu_id, pages) in enumerate(image.gpus.items()):
            for bo in pages.bos:
                entries.append(Entry(gpu_id, len(entries), bo.index, running, bo.size_bytes))
                running += bo.size_bytes
        command = Command(kfd_id=state.kfd_id, gpus=[GpuRecord(g, g, 0) for g in image.gpus], entries=entries)
        with pytest.raises(ChannelError, match=r"the image says offset 8, \d+ bytes at 0"):
            plugin._check_command(command)
        good = [Entry(e.gpu_id, e.fd_index, e.bo_index, image.content(e.bo_index).file_offset, e.size_bytes)
                for e in entries]
        plugin._check_command(Command(kfd_id=state.kfd_id, gpus=command.gpus, entries=good))
    finally:
        plugin.cleanup(ctx, failed=True)


def test_without_gpu_images_the_plugin_does_nothing():
    images = ImageSet.open(FIXTURES / "images" / "counter")
    ctx = RestoreContext(images=images, plan=build_plan(images), options={"gpu_backend": "bogus"})
    plugin = AmdgpuPlugin()
    plugin.restore_init(ctx)
    assert plugin.inherited_fds() == () and plugin.backend is None
    plugin.post_forking(ctx)
    plugin.resume_devices_late(ctx, os.getpid())
    plugin.cleanup(ctx, failed=False)


def test_an_unknown_backend_is_refused(gpu_images):
    dst, _ = gpu_images
    images = ImageSet.open(dst)
    ctx = RestoreContext(images=images, plan=build_plan(images), options={"gpu_backend": "bogus"})
    with pytest.raises(AmdgpuError, match="gpu_backend is 'bogus', expected one of kfd, sim"):
        AmdgpuPlugin().restore_init(ctx)


@pytest.mark.parametrize("parallel", [True, False])
def test_a_tree_of_several_processes_keeps_its_mode_and_shares_the_channel_under_a_lock(tmp_path, parallel):
    """Unlike CRIU (parallel_disabled when the root has children), a tree fills in parallel
    too; its tasks send on the one channel, one at a time."""
    src = FIXTURES / "images" / "pipes"
    images = ImageSet.open(src)
    assert len(images.pstree()) > 1, "the pipes fixture is a tree"
    dst = tmp_path / "pipes"
    generate_gpu_state(src, dst, n_gpus=1, n_bos=2, total_bytes=MIB, seed=1)
    images = ImageSet.open(dst)
    ctx = RestoreContext(images=images, plan=build_plan(images), options={"gpu_backend": "sim",
                                                                          "parallel_gpu": parallel})
    plugin = AmdgpuPlugin()
    plugin.restore_init(ctx)
    try:
        assert plugin.parallel is parallel and plugin._send_lock is not None
    finally:
        plugin.cleanup(ctx, failed=True)


def test_a_failing_fill_fails_resume_devices_late(gpu_images, monkeypatch):
    dst, state = gpu_images

    class Broken(SimBackend):
        def fill(self, bo_fd, size, src_fd, src_offset, gpu_id, bo_offset=0):
            raise OSError(28, "No space left on device")

    with pytest.raises(Exception) as info:
        run_hooks(dst, state, {"parallel_gpu": True}, plugin=AmdgpuPlugin(backend=Broken()))
    assert "amdgpu fill: gpu_id" in str(info.value) and "No space left on device" in str(info.value)


def test_a_task_that_lost_the_channel_says_why_and_the_orchestrator_fails(gpu_images):
    dst, state = gpu_images
    reports = []
    with pytest.raises(ChannelError, match="ended after 0 of 1 commands"):
        run_hooks(dst, state, {"gpu_backend": "sim"}, keep_channel=False, reports=reports)
    assert "must keep AmdgpuPlugin.inherited_fds() open" in reports[0]["error"]


def test_close_inherited_fds_closes_the_task_end_of_a_task_without_gpu_files(gpu_images):
    dst, _ = gpu_images
    images = ImageSet.open(dst)
    ctx = RestoreContext(images=images, plan=build_plan(images), options={"gpu_backend": "sim"})
    plugin = AmdgpuPlugin()
    plugin.restore_init(ctx)
    try:
        (task_fd,) = plugin.inherited_fds()
        orch_fd = plugin._orch_sock.fileno()
        pid = os.fork()
        if pid == 0:  # a task that holds no kfd file
            plugin.close_inherited_fds()
            os._exit(0 if not any(os.path.exists(f"/proc/self/fd/{n}") for n in (task_fd, orch_fd)) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(f"/proc/self/fd/{orch_fd}")  # the orchestrator's copies are its own
    finally:
        plugin.cleanup(ctx, failed=True)
