"""Render-node and dma-buf files (amdgpu-renderD-*, amdgpu-dmabuf_*) through the plugin's hooks, on simgpu.

A generated checkpoint in upstream's full shape (generator.py, render_nodes=True): CPU nodes,
two GPUs, a render-node file per GPU (a created GTT BO with contents, a BO mapped nowhere, an
import of a KFD BO) and a dma-buf file naming the shared KFD BO. The hooks run as a restore
runs them (orchestrator here, the task in a fork), with the task's files in an order CRIU
does not guarantee: render nodes and the dma-buf before /dev/kfd.
"""

from __future__ import annotations

import json
import os
import time
import zlib

import pytest

from conftest import FIXTURES, needs_fixtures
from pycriu_restore.images import BadRecord, ImageSet, dump_image, load_image
from pycriu_restore.images.image import Image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plugins.amdgpu import plugin as plugin_module
from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state
from pycriu_restore.plugins.amdgpu.images import (drm_pages_image_name, load_render_image, render_bo_needs_fill,
                                                  render_image_name)
from pycriu_restore.plugins.amdgpu.plugin import AmdgpuPlugin
from pycriu_restore.plugins.amdgpu.sim import SimBackend
from pycriu_restore.plugins.api import ExtFile, RestoreContext

pytestmark = needs_fixtures
MIB = 1 << 20


@pytest.fixture(scope="module")
def render_images(tmp_path_factory):
    dst = tmp_path_factory.mktemp("render") / "counter"
    state = generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=2, n_bos=6, total_bytes=2 * MIB,
                               seed=31, render_nodes=True, device_vmas=True)  # the task maps its BOs
    return dst, state


def link(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def run_task(images_dir, state, options, order, plugin=None):
    """restore_init; a forked task restores ``order`` (ExtFile ids) and reports; the orchestrator
    runs post_forking, resume_devices_late and cleanup. Returns (plugin, report)."""
    images = ImageSet.open(images_dir)
    plan = build_plan(images)
    ctx = RestoreContext(images=images, plan=plan, options=options)
    plugin = plugin or AmdgpuPlugin()
    plugin.restore_init(ctx)
    fd_of = {state.kfd_id: state.fd, **state.render_fds, **state.dmabuf_fds}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        report = {}
        try:
            os.close(r)
            keep = {0, 1, 2, w, *plugin.inherited_fds()}
            for name in os.listdir("/proc/self/fd"):
                if int(name) not in keep:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            got = {}
            for file_id in order:
                got[file_id] = plugin.restore_ext_file(ctx, plan.root, ExtFile(file_id=file_id, fd=fd_of[file_id],
                                                                               flags=0))
            report["links"] = {str(i): link(fd) for i, fd in got.items()}
            if state.render_fds:  # the device VMAs' moves
                image = load_render_image(images, min(state.render_fds), set(state.gpu_ids))
                gtt = image.node.bo_entries[0]
                moved = plugin.update_vma_map(ctx, plan.root, f"//dev/dri/renderD{image.node.drm_render_minor}",
                                              gtt.addr, gtt.offset)
                report["render_move"] = [moved[0], link(moved[1])]
                os.close(moved[1])
                kfd_bo = images_kfd_bo(images, state)
                kfd_move = plugin.update_vma_map(ctx, plan.root, f"/dev/dri/renderD{image.node.drm_render_minor}",
                                                 kfd_bo.addr, kfd_bo.offset)
                report["kfd_move"] = [kfd_move[0], link(kfd_move[1])]
                os.close(kfd_move[1])
            plugin.close_inherited_fds()
            names = [int(n) for n in os.listdir("/proc/self/fd")]
            report["open"] = sorted(link(n) for n in names if n not in (0, 1, 2, w) and n not in got.values()
                                    and os.path.exists(f"/proc/self/fd/{n}"))  # not listdir's own fd
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
        os.waitpid(pid, 0)
        plugin.resume_devices_late(ctx, pid)
        failed = False
    finally:
        plugin.cleanup(ctx, failed)
    return plugin, report


def images_kfd_bo(images, state):
    from pycriu_restore.plugins.amdgpu.images import load_kfd_image

    return load_kfd_image(images, state.kfd_id).kfd.bo_entries[state.shared_bo[1]]


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
def test_render_nodes_and_a_dmabuf_restore_in_any_order(render_images, parallel, monkeypatch):
    dst, state = render_images
    monkeypatch.setattr(plugin_module, "_checkpoint_pid", lambda pid: 31100)
    order = [*sorted(state.dmabuf_fds), *sorted(state.render_fds, reverse=True), state.kfd_id]
    plugin, report = run_task(dst, state, {"gpu_backend": "sim", "parallel_gpu": parallel}, order)
    assert "error" not in report, report["error"]
    try:
        device = plugin.sim_device
        assert device.checksums() == state.checksums  # KFD BOs, each filled once
        assert device.render_checksums() == state.render_checksums  # render-node BOs, same fill path
        assert plugin.stats.commands == 1 + len(state.render_fds)
        links = report["links"]
        assert links[str(state.kfd_id)] == "/memfd:simgpu-kfd (deleted)"
        minors = sorted(link.removeprefix("/memfd:simgpu-renderD").removesuffix(" (deleted)")
                        for i, link in links.items() if int(i) in state.render_fds)
        assert minors == ["130", "131"]  # the generator's GPUs sit on nodes 2 and 3
        # the dma-buf fd is the shared KFD BO's buffer itself
        gpu, index = state.shared_bo
        assert links[str(min(state.dmabuf_fds))] == f"/memfd:simgpu-bo-{gpu:04x}-{index} (deleted)"
        # a device VMA maps what the backend's vma_target gives for the BO's new offset: on
        # simgpu the BO's own memfd at 0 (a real GPU: the GPU's one DRM file at that offset)
        images = ImageSet.open(dst)
        node = load_render_image(images, min(state.render_fds), set(state.gpu_ids)).node
        assert report["render_move"] == [0, f"/memfd:simgpu-drm-bo-{node.gpu_id:04x}-{node.bo_entries[0].handle} "
                                            "(deleted)"]
        assert report["kfd_move"] == [0, f"/memfd:simgpu-bo-{gpu:04x}-{index} (deleted)"]
        # nothing of ours is left open in the task: no channel end, no BO, no kept dma-buf, and
        # no DRM file of the plugin's (KFD holds its own reference; the render fds are dups)
        assert report["open"] == []
    finally:
        plugin.sim_device.close()


def _rewrite(path, change):
    image = load_image(path)
    change(image.entries[0])
    path.write_bytes(dump_image(Image(kind=image.kind, entries=image.entries)))


def test_an_import_without_exporter_and_a_dangling_dmabuf_are_refused(tmp_path):
    dst = tmp_path / "counter"
    state = generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=2, n_bos=4, total_bytes=MIB, seed=3,
                               render_nodes=True)
    render_id = min(state.render_fds)

    def orphan_import(node):
        node.bo_entries[2].handle = 4242

    _rewrite(dst / render_image_name(render_id), orphan_import)
    images = ImageSet.open(dst)
    ctx = RestoreContext(images=images, plan=build_plan(images), options={"gpu_backend": "sim"})
    with pytest.raises(BadRecord, match="BO 2 imports handle 4242 of gpu_id .*, which no KFD or render-node BO"):
        AmdgpuPlugin().restore_init(ctx)

    def restore_handle(node):
        node.bo_entries[2].handle = images_kfd_bo(images, state).handle

    _rewrite(dst / render_image_name(render_id), restore_handle)
    _rewrite(dst / f"amdgpu-dmabuf_{min(state.dmabuf_fds)}.img", lambda node: setattr(node, "gem_handle", 99999))
    with pytest.raises(BadRecord, match="gem_handle 99999 names 0 exported BOs"):
        AmdgpuPlugin().restore_init(RestoreContext(images=ImageSet.open(dst), plan=ctx.plan,
                                                   options={"gpu_backend": "sim"}))


def test_render_images_are_checked(render_images, tmp_path):
    src, state = render_images
    images = ImageSet.open(src)
    render_id = min(state.render_fds)
    image = load_render_image(images, render_id, set(state.gpu_ids))
    assert list(image.contents) == [0]  # the GTT BO; the unmapped VRAM BO and the import have none
    assert [render_bo_needs_fill(b) for b in image.node.bo_entries] == [True, False, False]
    with pytest.raises(BadRecord, match="render node of gpu_id 0x[0-9a-f]+, which no kfd image describes"):
        load_render_image(images, render_id, set())
    pages = images.path(drm_pages_image_name(render_id, image.node.drm_render_minor, 0))
    data = pages.read_bytes()
    assert zlib.crc32(data[8:]) == state.render_checksums[(render_id, 0)]
    pages.write_bytes(data[:-4096])
    try:
        with pytest.raises(BadRecord, match=r"header says \d+ bytes and \d+ follow; BO 0 of amdgpu-renderD-"):
            load_render_image(images, render_id, set(state.gpu_ids))
    finally:
        pages.write_bytes(data)


def test_device_vmas_become_plugin_mappings_with_a_service_fd_each(tmp_path):
    """CRIU marks device mappings VMA_EXT_PLUGIN, with the render node's regular-file entry as
    shmid: the plan keeps them as MAP_SHARED mappings its plugins will place, never opened
    by path, each with a service fd of its own above the mapped files'."""
    from pycriu_restore.files.fdlayout import ServiceFds
    from pycriu_restore.plan.model import VmaKind

    dst = tmp_path / "counter"
    state = generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=2, n_bos=4, total_bytes=MIB, seed=1,
                               render_nodes=True, device_vmas=True)
    plan = build_plan(ImageSet.open(dst))
    devices = [v for v in plan.root.vmas if v.file is not None and v.file.plugin]
    assert [(v.start, v.end, v.pgoff, v.file.path) for v in devices] == [
        (d.start, d.end, d.pgoff, d.path) for d in state.device_vmas]
    assert all(v.kind is VmaKind.FILE_SHARED and v.flags == 0x1 and v.prot == 0x3 and not v.page_runs
               and v.file.open_flags == os.O_RDWR for v in devices)
    service = ServiceFds.for_task(plan.root)
    assert {d.path for d in state.device_vmas} == {"/dev/kfd", "/dev/dri/renderD130", "/dev/dri/renderD131"}
    assert not any(path.startswith(("/dev/dri/", "/dev/kfd")) for path, _ in service.mapped)  # never opened by path
    assert sorted(service.plugin) == [v.start for v in devices]
    assert min(service.plugin.values()) > max(service.mapped.values())
    assert len(set(service.all)) == len(service.all) and service.end == max(service.plugin.values()) + 1
    assert [service.fd_of(v) for v in devices] == [service.plugin[v.start] for v in devices]


@pytest.mark.parametrize("change, error, match", [
    (lambda vma: setattr(vma, "flags", 0x2), "UnsupportedFeature", r"a private device mapping \(VMA_EXT_PLUGIN"),
    (lambda vma: setattr(vma, "shmid", 1 << 30), "InconsistentImages", r"VMA at 0x[0-9a-f]+.*file id 1073741824"),
], ids=["private", "no-file-entry"])
def test_a_device_vma_that_cannot_be_placed_is_refused_by_the_plan(tmp_path, change, error, match):
    from pycriu_restore.plan import errors
    from pycriu_restore.plan.validate import VMA_EXT_PLUGIN

    dst = tmp_path / "counter"
    generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=1, n_bos=1, total_bytes=4096, seed=1,
                       render_nodes=True, device_vmas=True)
    mm_path = next(dst.glob("mm-*.img"))
    _rewrite(mm_path, lambda mm: change(next(v for v in mm.vmas if v.status & VMA_EXT_PLUGIN)))
    with pytest.raises(getattr(errors, error), match=match):
        build_plan(ImageSet.open(dst))


# --- ROCm's shared memory, progress-based liveness, GPUs side by side in serial mode ---------------

def _sem_value(name: str) -> int:
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.sem_open.restype = ctypes.c_void_p
    libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
    sem = libc.sem_open(name.encode(), 0)
    assert sem, f"no semaphore {name}"
    value = ctypes.c_int()
    libc.sem_getvalue(ctypes.c_void_p(sem), ctypes.byref(value))
    libc.sem_close(ctypes.c_void_p(sem))
    return value.value


def test_hsakmt_shared_memory_is_recreated_once(tmp_path):
    from pycriu_restore.plugins.amdgpu import hsakmt

    sem = f"pycrestore-test-{os.getpid()}"
    try:
        assert hsakmt.restore_shared_mem(0, 0, str(tmp_path), sem) is False  # none recorded: nothing made
        assert not (tmp_path / "hsakmt_shared_mem").exists()
        assert hsakmt.restore_shared_mem(3 * 4096, 0xCAFE, str(tmp_path), sem) is True
        data = (tmp_path / "hsakmt_shared_mem").read_bytes()
        assert len(data) == 3 * 4096 and data[:4] == (0xCAFE).to_bytes(4, "little") and not any(data[4:])
        assert _sem_value(sem) == 1
        (tmp_path / "hsakmt_shared_mem").write_bytes(b"in use")
        assert hsakmt.restore_shared_mem(4096, 0xBEEF, str(tmp_path), sem) is False  # another ROCm process's: kept
        assert (tmp_path / "hsakmt_shared_mem").read_bytes() == b"in use"
        with pytest.raises(Exception, match="expected 1.."):
            hsakmt.restore_shared_mem(1 << 40, 1, str(tmp_path), sem)
    finally:
        if os.path.exists(f"/dev/shm/sem.{sem}"):
            os.unlink(f"/dev/shm/sem.{sem}")


def test_the_plugin_recreates_rocm_shared_memory(tmp_path, monkeypatch):
    dst = tmp_path / "counter"
    state = generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=1, n_bos=2, total_bytes=8 * 4096,
                               seed=2, shared_mem_size=2 * 4096)
    monkeypatch.setattr(plugin_module, "_checkpoint_pid", lambda pid: 31100)
    sem = f"pycrestore-test-{os.getpid()}"
    shm = tmp_path / "shm"
    shm.mkdir()
    try:
        plugin, report = run_task(dst, state, {"gpu_backend": "sim", "gpu_shm_dir": str(shm),
                                               "gpu_shm_sem_name": sem}, [state.kfd_id])
        plugin.sim_device.close()
        assert "error" not in report, report
        data = (shm / "hsakmt_shared_mem").read_bytes()
        assert len(data) == 2 * 4096 and int.from_bytes(data[:4], "little") == 0x5348_4D4B
        assert _sem_value(sem) == 1
    finally:
        if os.path.exists(f"/dev/shm/sem.{sem}"):
            os.unlink(f"/dev/shm/sem.{sem}")


@pytest.fixture(scope="module")
def three_gpus(tmp_path_factory):
    dst = tmp_path_factory.mktemp("three") / "counter"
    return dst, generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=3, n_bos=6, total_bytes=12 * MIB,
                                   seed=8)


class _Timed(SimBackend):
    """simgpu, noting when each GPU's copies ran (the pool's threads, in the orchestrator)."""

    def __init__(self):
        super().__init__()
        self.spans: dict[int, list[float]] = {}

    def fill(self, bo_fd, size, src_fd, src_offset, gpu_id, bo_offset=0):
        super().fill(bo_fd, size, src_fd, src_offset, gpu_id, bo_offset)
        span = self.spans.setdefault(gpu_id, [time.monotonic(), 0.0])
        span[1] = time.monotonic()


def test_serial_mode_fills_the_gpus_side_by_side_and_a_long_wait_is_not_idle(three_gpus, monkeypatch):
    """Three GPUs, 4 MiB each at 3 MiB/s per GPU: each takes ~1.3 s, and their copies overlap.
    The task waits silently all along; the pool's idle wait (0.5 s) must not run out."""
    dst, state = three_gpus
    monkeypatch.setattr(plugin_module, "_checkpoint_pid", lambda pid: 31100)
    options = {"gpu_backend": "sim", "parallel_gpu": False, "gpu_bytes_per_s": 3 * MIB, "gpu_idle_timeout_s": 0.5,
               "gpu_chunk_bytes": MIB}
    backend = _Timed()
    plugin, report = run_task(dst, state, options, [state.kfd_id], plugin=AmdgpuPlugin(backend=backend))
    try:
        assert "error" not in report, report
        assert plugin.parallel is False
        assert plugin.sim_device.checksums() == state.checksums
        spans = sorted(backend.spans.values())
        assert len(spans) == 3
        assert all(start < spans[0][1] for start, _ in spans[1:]), spans  # every GPU started before the first ended
    finally:
        plugin.sim_device.close()
