"""A real process restored together with simulated GPU state (simgpu), in both modes.

The counter fixture gets 2 GPUs and 64 BOs holding more than 4 GiB in total (generator.py):
the process restores and passes verify.py, and every BO's content is checked by checksum
against what the generator wrote. Parallel mode fills the BOs in the orchestrator's pool
while the blob restores host memory; serial mode makes the task wait for them first. A
serial task that waits longer than the orchestrator gives a silent task is kept alive by
the pool's progress (and fails, leaving nothing, without it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import PACK_CPU_CAP, FIXTURES, needs_fixtures
from pycriu_restore.images import ImageSet
from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state
from pycriu_restore.plugins.amdgpu.plugin import AmdgpuPlugin
from pycriu_restore.restore import tree
from pycriu_restore.restore.errors import RestoreFailed
from pycriu_restore.restore.orchestrator import RestoreOptions, restore
from pycriu_restore.restore.cpucap import parse_cpu_cap

pytestmark = needs_fixtures

TOTAL_BYTES = (4 << 30) + (512 << 20)  # > 4 GiB of BO content: 64-bit sizes and offsets
N_GPUS, N_BOS = 2, 64


@pytest.fixture(scope="module")
def gpu_images(tmp_path_factory):
    # /tmp may be small or memory-backed: the pages files are > 4 GiB.
    work = os.environ.get("PYCRESTORE_BIG_TMP", "/var/tmp")
    base = tmp_path_factory.getbasetemp()
    dst = type(base)(work) / f"pycrestore-simgpu-{os.getpid()}" / "counter"
    dst.parent.mkdir(parents=True, exist_ok=True)
    state = generate_gpu_state(FIXTURES / "images" / "counter", dst, N_GPUS, N_BOS, TOTAL_BYTES, seed=7)
    yield dst, state
    subprocess.run(["rm", "-rf", str(dst.parent)], check=True)


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
def test_restore_with_simulated_gpu_state(gpu_images, parallel):
    images, state = gpu_images
    assert len(state.gpu_ids) == N_GPUS and len(state.checksums) >= N_BOS and state.total_bytes > 4 << 30
    subprocess.run([str(FIXTURES / "install.sh"), "counter"], check=True, capture_output=True)
    plugin = AmdgpuPlugin()
    restored = restore(str(images), RestoreOptions(cpu_cap=parse_cpu_cap(PACK_CPU_CAP), plugins=(plugin,), gpu_backend="sim", parallel_gpu=parallel))
    pid = restored.root_pid
    try:
        device = plugin.sim_device
        assert device is not None
        assert device.checksums() == state.checksums  # every BO, byte for byte (crc32)
        assert plugin.backend.resumed == [pid]  # RESUME_DEVICES_LATE reached the device
        check = subprocess.run([sys.executable, str(FIXTURES / "verify.py"), "counter"], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        # The device fd is in the task at the dumped number; the channel is not.
        assert os.path.exists(f"/proc/{pid}/fd/{state.fd}")
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not any(link.startswith("socket:") for link in links), links
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if plugin.sim_device is not None:
            plugin.sim_device.close()


@pytest.fixture(scope="module")
def slow_gpu_images(tmp_path_factory):
    dst = tmp_path_factory.mktemp("slow-gpu") / "counter"
    return dst, generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=2, n_bos=4, total_bytes=8 << 20,
                                   seed=3)


class _Mute(AmdgpuPlugin):
    """The amdgpu plugin, but it does not tell the orchestrator that its pool works for a task."""

    def last_progress(self) -> float:
        return 0.0


@pytest.mark.parametrize("plugin_class, ok", [(AmdgpuPlugin, True), (_Mute, False)], ids=["progress", "mute"])
def test_a_serial_fill_outlasting_the_prepare_timeout_is_judged_by_its_progress(slow_gpu_images, monkeypatch,
                                                                                plugin_class, ok):
    """The task waits about 2 s for its fill (4 MiB per GPU at 2 MiB/s) and says nothing; the
    orchestrator gives a silent task 0.5 s. The pool's progress keeps it alive; without it the
    restore fails naming the task, and leaves nothing behind."""
    images, state = slow_gpu_images
    monkeypatch.setattr(tree, "PREPARE_TIMEOUT_S", 0.5)
    subprocess.run([str(FIXTURES / "install.sh"), "counter"], check=True, capture_output=True)
    plugin = plugin_class()
    options = RestoreOptions(cpu_cap=parse_cpu_cap(PACK_CPU_CAP), plugins=(plugin,), gpu_backend="sim",
                             parallel_gpu=False, gpu_bytes_per_s=2 << 20)
    pid = None
    try:
        if not ok:
            with pytest.raises(RestoreFailed, match="no answer from the task within 0.5 s"):
                restore(str(images), options)
            return
        pid = restore(str(images), options).root_pid
        assert plugin.sim_device.checksums() == state.checksums
        check = subprocess.run([sys.executable, str(FIXTURES / "verify.py"), "counter"], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if plugin.sim_device is not None:
            plugin.sim_device.close()
        root = ImageSet.open(images).pstree()[0].pid
        assert not os.path.exists(f"/proc/{root}"), f"pid {root} is left behind"
