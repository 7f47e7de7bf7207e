"""The plugin hooks: each runs in the process and at the point CRIU's does.

A recording plugin restores an EXT file added to the counter fixture (the shape an amdgpu
checkpoint has: files.img type EXT + an fd in fdinfo) and notes which process ran each hook.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import PACK_CPU_CAP, FIXTURES, needs_fixtures
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.images.image import Image
from pycriu_restore.plugins.api import ExtFile, Plugin, RestoreContext, missing_plugins
from pycriu_restore.restore.orchestrator import RestoreOptions, restore
from pycriu_restore.restore.cpucap import parse_cpu_cap

pytestmark = needs_fixtures

EXT_ID = 4242
EXT_FD = 50


def counter_with_ext_file(dst):
    """Counter's images plus one EXT file (id EXT_ID) at fd EXT_FD of the task."""
    shutil.copytree(FIXTURES / "images" / "counter", dst)
    files = load_image(dst / "files.img")
    entry = type(files.entries[0])()
    entry.type = 16  # FD_TYPES__EXT (CRIU's fdinfo.proto)
    entry.id = EXT_ID
    entry.ext.id = EXT_ID
    entry.ext.fown.uid = entry.ext.fown.euid = entry.ext.fown.signum = 0
    entry.ext.fown.pid_type = entry.ext.fown.pid = 0
    (dst / "files.img").write_bytes(dump_image(Image(kind=files.kind, entries=[*files.entries, entry])))
    fdinfo = load_image(dst / "fdinfo-2.img")
    fd = type(fdinfo.entries[0])()
    fd.id, fd.flags, fd.type, fd.fd = EXT_ID, 0, 16, EXT_FD
    (dst / "fdinfo-2.img").write_bytes(dump_image(Image(kind=fdinfo.kind, entries=[*fdinfo.entries, fd])))
    return dst


class Recorder(Plugin):
    name = "recorder"

    def __init__(self, log_path):
        self.log_path = log_path

    def _note(self, what: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(f"{what} {os.getpid()}\n")

    def restore_init(self, ctx: RestoreContext) -> None:
        self._note("restore_init")

    def post_forking(self, ctx: RestoreContext) -> None:
        self._note("post_forking")

    def restore_ext_file(self, ctx, task, ext: ExtFile):
        if ext.file_id != EXT_ID:
            return None
        self._note(f"restore_ext_file fd={ext.fd}")
        return os.open("/dev/null", os.O_RDWR)

    def resume_devices_late(self, ctx, pid: int) -> None:
        self._note(f"resume_devices_late pid={pid}")

    def cleanup(self, ctx, failed: bool) -> None:
        self._note(f"cleanup failed={failed}")


def test_hooks_run_in_order_and_in_the_right_process(tmp_path):
    subprocess.run([str(FIXTURES / "install.sh"), "counter"], check=True, capture_output=True)
    images = counter_with_ext_file(tmp_path / "counter")
    log_path = tmp_path / "hooks.log"
    restored = restore(str(images), RestoreOptions(cpu_cap=parse_cpu_cap(PACK_CPU_CAP), plugins=(Recorder(log_path),)))
    pid = restored.root_pid
    try:
        assert os.readlink(f"/proc/{pid}/fd/{EXT_FD}") == "/dev/null"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    calls = [line.rsplit(" ", 1) for line in log_path.read_text().splitlines()]
    me = str(os.getpid())
    assert [c[0] for c in calls] == ["restore_init", "post_forking", f"restore_ext_file fd={EXT_FD}",
                                     f"resume_devices_late pid={pid}", "cleanup failed=False"]
    assert [c[1] for c in calls] == [me, me, str(pid), me, me]  # the ext file hook ran in the task


def test_ext_file_without_a_plugin_fails_cleanly(tmp_path):
    subprocess.run([str(FIXTURES / "install.sh"), "counter"], check=True, capture_output=True)
    images = counter_with_ext_file(tmp_path / "counter")
    with pytest.raises(Exception) as info:
        restore(str(images), RestoreOptions(cpu_cap=parse_cpu_cap(PACK_CPU_CAP), plugins=()))
    assert f"no plugin restores EXT file id {EXT_ID}" in str(info.value)
    assert not os.path.exists("/proc/31100")


def test_plugins_command_lists_amdgpu():
    out = subprocess.run([sys.executable, "-m", "pycriu_restore", "plugins"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "amdgpu" in out.stdout and "pycriu_restore.plugins.amdgpu.plugin:AmdgpuPlugin" in out.stdout


@pytest.mark.parametrize("listed, ok", [(["amdgpu_plugin"], True), (["amdgpu_plugin", "cuda_plugin"], False)],
                         ids=["amdgpu", "amdgpu-and-cuda"])
def test_a_plugin_the_dump_used_must_be_there(tmp_path, listed, ok):
    """inventory.img names the plugins that dumped state (CRIU's names); a restore without one
    of them is refused before anything is made (exit 3), as CRIU's "Missing required plugin"."""
    listed_dir = tmp_path / "listed"
    shutil.copytree(FIXTURES / "images" / "counter", listed_dir)
    inventory = load_image(listed_dir / "inventory.img")
    inventory.entries[0].plugins_entry.plugins.extend(listed)
    (listed_dir / "inventory.img").write_bytes(dump_image(Image(kind=inventory.kind, entries=inventory.entries)))
    images = ImageSet.open(listed_dir)
    from pycriu_restore.plugins.amdgpu.plugin import AmdgpuPlugin

    assert missing_plugins(images, (AmdgpuPlugin(),)) == ([] if ok else ["cuda_plugin"])
    assert missing_plugins(images, ()) == listed
    if ok:
        return
    subprocess.run([str(FIXTURES / "install.sh"), "counter"], check=True, capture_output=True)
    res = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(listed_dir), "-d",
                          f"--cpu-cap={PACK_CPU_CAP}"], capture_output=True, text=True)
    assert res.returncode == 3, res.stderr
    error = res.stderr.strip().splitlines()[-1]  # after the CPU check's warning, if any
    assert "Traceback" not in res.stderr and "inventory.img" in error and "cuda_plugin" in error, res.stderr
    assert "no pycrestore plugin restores (loaded: amdgpu_plugin)" in error, error
    assert not os.path.exists("/proc/31100")
