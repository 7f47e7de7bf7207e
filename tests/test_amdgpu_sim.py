"""simgpu and the AmdgpuPlugin hooks, run as a restore runs them: orchestrator here, task in a fork.

The images are a real CRIU fixture with generated GPU state (generator.py); the expected BO
checksums come from the generator, the found ones from the SimDevice the orchestrator keeps.
The full restore (ptrace, blob) is the lead's fixture test; here the hooks are driven by hand
in the same processes and order: restore_init, fork, post_forking (parent) while the child
runs restore_ext_file, then resume_devices_late and cleanup.
"""

from __future__ import annotations

import json
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
from pycriu_restore.plugins.amdgpu.sim import SIM_KFD_NAME, SIM_MMAP_OFFSET_BASE, SimBackend, SimDevice
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


def test_update_vma_map_gives_the_new_offset_of_a_device_vma(gpu_images):
    dst, state = gpu_images
    image = load_kfd_image(ImageSet.open(dst), state.kfd_id)
    index = next(i for (_, i) in state.checksums)
    bo = image.kfd.bo_entries[index]

    def task_hook(ctx, plan, plugin):
        return {"kfd": plugin.update_vma_map(ctx, plan.root, "//dev/kfd", bo.addr, bo.offset),
                "other_offset": plugin.update_vma_map(ctx, plan.root, "/dev/kfd", bo.addr, bo.offset + 4096),
                "other_file": plugin.update_vma_map(ctx, plan.root, "/dev/zero", bo.addr, bo.offset)}

    plugin, report = run_hooks(dst, state, {"gpu_backend": "sim"}, task_hook=task_hook)
    assert "error" not in report, report["error"]
    assert report["kfd"] == [SIM_MMAP_OFFSET_BASE + index * 4096, None]
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
