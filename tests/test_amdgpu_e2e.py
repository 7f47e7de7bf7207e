"""A whole restore with GPU state in upstream's full shape, on simgpu: one process and a tree.

Checkpoints of our own (the amdgpu pid range, 50000-50999), dumped by CRIU 4.2: ``sleep``
at pid 50100, and ``sh -c 'sleep & wait'`` at 50200 (a tree of two). generator.py adds, to
the root task (and, in a third checkpoint, to both tasks of the tree, on GPUs of their own,
with the same handle numbers): a /dev/kfd file (two GPUs after two CPU nodes,
VRAM/GTT/doorbell BOs, priv_data in the kernel's layout), a render-node file per GPU (a
created GTT BO with contents, an unmapped BO, an import of a KFD BO) and a dma-buf file of
the shared BO.

Each restore runs the orchestrator with the amdgpu plugin on simgpu and checks: every BO's
contents by checksum (KFD and render-node BOs), the GPU resumed for each task, the kfd,
render-node and dma-buf fds at their checkpointed numbers (the render fds are the GPU's
one DRM file, the dma-buf is the shared BO's buffer), no channel end left in the task, and
the restored processes alive, holding exactly the fds of their images. A task with GPU
state also has device VMAs (VMA_EXT_PLUGIN, as CRIU dumps the CPU mappings of GPU memory):
each must be at its checkpointed address in the live task, map the BO simgpu keeps (its
memfd, at the offset update_vma_map gave) and read as the BO's checksum-verified contents
through /proc/PID/mem; each GPU's doorbell VMA of /dev/kfd, and the MMIO page's, maps the
task's kfd memfd at simgpu's offset for it. A plugin that gives no offset for one fails
the restore (exit 5) naming the VMA, and leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from conftest import ensure_criu, kill_and_wait, kill_session, pid_max_at_least, wait_gone
from pycriu_restore.images import ImageSet
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state
from pycriu_restore.plugins.amdgpu.images import load_kfd_image
from pycriu_restore.plugins.amdgpu.plugin import AmdgpuPlugin
from pycriu_restore.plugins.amdgpu.sim import sim_kfd_offsets
from pycriu_restore.restore.errors import RestoreFailed
from pycriu_restore.restore.orchestrator import RestoreOptions, restore

MIB = 1 << 20
SINGLE_PID, TREE_PID = 50100, 50200  # amdgpu's range


def _start_at(pid: int, argv: list[str]) -> subprocess.Popen:
    for _ in range(50):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if proc.pid == pid:
            return proc
        kill_session(proc.pid)
        proc.wait()
    pytest.fail(f"could not start {argv[0]} at pid {pid} (pids are busy)")


def _dump(tmp: Path, pid: int, argv: list[str], n_tasks: int) -> Path:
    criu = ensure_criu()
    images = tmp / f"images-{pid}"
    images.mkdir()
    with pid_max_at_least(65536):
        proc = _start_at(pid, argv)
        try:
            deadline = time.monotonic() + 10
            while len(list(Path("/proc").glob("[0-9]*/stat"))) and not _session_size(pid) >= n_tasks:
                assert time.monotonic() < deadline, f"{argv} did not start its {n_tasks} processes"
                time.sleep(0.02)
            subprocess.run([str(criu), "dump", "-t", str(pid), "-D", str(images), "-o", "dump.log"],
                           check=True, capture_output=True)
            proc.wait(timeout=10)
        finally:
            kill_session(pid)
    return images


def _session_size(sid: int) -> int:
    from conftest import session_members

    return len(session_members(sid))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("restoring needs root")
    tmp = tmp_path_factory.mktemp("amdgpu-e2e")
    sleep = shutil.which("sleep")
    single = _dump(tmp, SINGLE_PID, [sleep, "1000"], 1)
    tree = _dump(tmp, TREE_PID, ["/bin/sh", "-c", f"{sleep} 1000 & wait"], 2)
    out = {}  # name -> (images, {pid: the GPU state that task holds})
    for name, images, pid in (("single", single, SINGLE_PID), ("tree", tree, TREE_PID)):
        dst = tmp / f"{name}-gpu"
        out[name] = (dst, {pid: generate_gpu_state(images, dst, n_gpus=2, n_bos=8, total_bytes=16 * MIB, seed=14,
                                                   render_nodes=True, device_vmas=True)})
    # Both tasks of the tree hold GPUs (other ones: another seed draws other gpu_ids), as
    # the processes of a multi-process ROCm job do: two senders on the one channel.
    child = next(e.pid for e in ImageSet.open(tree).pstree() if e.pid != TREE_PID)
    both = tmp / "gpu-tree"
    child_state = generate_gpu_state(out["tree"][0], both, n_gpus=2, n_bos=6, total_bytes=12 * MIB, seed=15,
                                      render_nodes=True, device_vmas=True, pid=child)
    root_state = out["tree"][1][TREE_PID]
    assert not set(root_state.gpu_ids) & set(child_state.gpu_ids)
    out["gpu-tree"] = (both, {TREE_PID: root_state, child: child_state})
    return out


def _maps(pid: int) -> dict[int, tuple[int, str, int, str]]:
    """/proc/PID/maps: start -> (end, perms, offset, path)."""
    out = {}
    for line in open(f"/proc/{pid}/maps"):
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        out[start] = (end, fields[1], int(fields[2], 16), fields[5].strip() if len(fields) > 5 else "")
    return out


def _check_device_vmas(pid: int, state, images: Path) -> None:
    """Each device VMA where CRIU's restore puts it: its address, shared and writable as dumped,
    through the BO simgpu keeps at the offset update_vma_map gave, showing the BO's bytes. A
    doorbell VMA of /dev/kfd maps the task's own kfd memfd (the fd of its kfd file) at
    simgpu's offset for that page, not KFD's checkpointed one (3 << 62 | gpu_id << 46)."""
    kfd = load_kfd_image(ImageSet.open(images), state.kfd_id).kfd
    kfd_offsets = sim_kfd_offsets(kfd)  # BO index -> simgpu's /dev/kfd offset
    maps = _maps(pid)
    # every KFD BO with contents, a doorbell per GPU, one MMIO page, and per render node its
    # GTT BO and import
    assert len(state.device_vmas) == len(state.checksums) + len(state.gpu_ids) + 1 + 2 * len(state.render_fds)
    on_kfd = [dev for dev in state.device_vmas if dev.path == "/dev/kfd"]
    assert sorted(dev.bo[2] for dev in on_kfd) == sorted(kfd_offsets) and len(on_kfd) == 3
    kfd_inode = os.stat(f"/proc/{pid}/fd/{state.fd}").st_ino
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for dev in state.device_vmas:
            assert dev.start in maps, f"no VMA at {dev.start:#x} ({dev.bo})"
            end, perms, offset, path = maps[dev.start]
            new_offset = kfd_offsets[dev.bo[2]] if dev.path == "/dev/kfd" else 0
            assert (end, perms, offset, path) == (dev.end, "rw-s", new_offset,
                                                  f"/memfd:{dev.sim_memfd} (deleted)"), dev
            assert dev.pgoff != offset  # moved from the checkpointed offset to the plugin's
            if dev.path == "/dev/kfd":
                assert os.stat(f"/proc/{pid}/map_files/{dev.start:x}-{dev.end:x}").st_ino == kfd_inode, dev
            mem.seek(dev.start)
            assert zlib.crc32(mem.read(dev.end - dev.start)) == dev.checksum, f"contents of {dev.bo}"


def _links(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return out


@pytest.mark.parametrize("name, parallel", [(n, p) for n in ("single", "tree", "gpu-tree") for p in (True, False)],
                         ids=[f"{n}-{m}" for n in ("one-process", "tree", "tree-both-with-gpus")
                              for m in ("parallel", "serial")])
def test_a_checkpoint_in_upstreams_shape_restores_on_simgpu(checkpoints, name, parallel):
    images, states = checkpoints[name]
    root_pid = SINGLE_PID if name == "single" else TREE_PID
    plugin = AmdgpuPlugin()
    with pid_max_at_least(65536):
        restored = restore(str(images), RestoreOptions(plugins=(plugin,), gpu_backend="sim", parallel_gpu=parallel))
    pid = restored.root_pid
    try:
        assert pid == root_pid
        assert plugin.parallel is parallel  # a tree too (CRIU fills a tree serially)
        device = plugin.sim_device
        assert device.checksums() == {k: v for s in states.values() for k, v in s.checksums.items()}
        assert device.render_checksums() == {k: v for s in states.values() for k, v in s.render_checksums.items()}
        assert sorted(plugin.backend.resumed) == sorted(states)
        plan = build_plan(ImageSet.open(images))
        for task_pid, state in states.items():
            links = _links(task_pid)
            assert links[state.fd] == "/memfd:simgpu-kfd (deleted)"
            assert sorted(links[fd] for fd in state.render_fds.values()) == [
                "/memfd:simgpu-renderD130 (deleted)", "/memfd:simgpu-renderD131 (deleted)"]
            gpu, index = state.shared_bo
            (dmabuf_fd,) = state.dmabuf_fds.values()
            assert links[dmabuf_fd] == f"/memfd:simgpu-bo-{gpu:04x}-{index} (deleted)"
            assert not any(link.startswith("socket:") for link in links.values()), links
            # exactly the image's fds: nothing of the plugin (its DRM files, BO dups, copier) is
            # left, unlike CRIU, which leaves the DRM files it opened for KFD in the process
            task = next(t for t in plan.tasks if t.pid == task_pid)
            assert sorted(links) == sorted(f.fd for f in task.files), links
            assert open(f"/proc/{task_pid}/stat").read().split()[2] in "SR"
            _check_device_vmas(task_pid, state, images)
        if name != "single":
            children = open(f"/proc/{pid}/task/{pid}/children").read().split()
            dumped = [e.pid for e in ImageSet.open(images).pstree() if e.pid != pid]
            assert [int(c) for c in children] == dumped and len(dumped) == 1
    finally:
        members = [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()] \
            if os.path.exists(f"/proc/{pid}") else []
        for member in reversed(members):
            kill_and_wait(member)
        assert all(wait_gone(m) for m in members)
        if plugin.sim_device is not None:
            plugin.sim_device.close()


class _NoOffset(AmdgpuPlugin):
    """The amdgpu plugin, but it knows no render-node VMA (as if its BOs had none)."""

    def update_vma_map(self, ctx, task, path, start, pgoff):
        return None if path.startswith("/dev/dri/") else super().update_vma_map(ctx, task, path, start, pgoff)


def test_a_device_vma_no_plugin_maps_fails_the_restore_naming_it(checkpoints):
    images, states = checkpoints["single"]
    state = states[SINGLE_PID]
    plugin = _NoOffset()
    with pid_max_at_least(65536), pytest.raises(RestoreFailed) as err:
        restore(str(images), RestoreOptions(plugins=(plugin,), gpu_backend="sim", parallel_gpu=True))
    try:
        first = state.device_vmas[0]
        assert err.value.exit_code == 5
        assert f"device VMA {first.start:#x}-{first.end:#x} ({first.path})" in str(err.value), str(err.value)
        assert "no plugin maps it" in str(err.value)
        assert wait_gone(SINGLE_PID), "the failed task is still there"
    finally:
        if plugin.sim_device is not None:
            plugin.sim_device.close()
