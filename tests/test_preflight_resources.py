"""Limits named in the preflight (issue 11): RLIMIT_NOFILE, the images' rlimits, memory,
vm.max_map_count. Each too-low limit ends the restore before anything is created, with one
line: the limit, its value, what is needed. Uses the criu-4.2 counter workload (pid 31100),
restored with --cpu-cap none (docs/cpu.md).

Before restore/limits.py: `ulimit -n 64` failed inside the forked task (exit 5, "task 31100:
RLIMIT_NOFILE: ..."), `ulimit -n 200` or `1024` failed in the blob with "task 31100: memory:
set RLIMIT_OFILE: EPERM" (the dumped hard limit 20000 is above ours, and raising it needs
CAP_SYS_RESOURCE), and a cgroup too small for the pages was only seen as the OOM killer.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, kill_and_wait, needs_fixtures
from pycriu_restore.errors import EXIT_ENVIRONMENT
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.restore import limits
from pycriu_restore.restore.errors import LimitTooLow

pytestmark = needs_fixtures

COUNTER = FIXTURES / "images" / "counter"
PID = 31100
NOFILE_NEEDED = 135  # files/fdlayout.py for counter: highest fd 3, service fds from 69


def _cli(images: Path, nofile: tuple[int, int] | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    return subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-d", "--cpu-cap", "none",
                           "--pidfile", "/dev/null", "-D", str(images)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [l for l in result.stderr.strip().splitlines() if "XSAVE state the dump CPU lacked" not in l]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_hard_nofile_below_the_fd_layout_is_named() -> None:
    result = _cli(COUNTER, nofile=(8, 64))
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    assert f"RLIMIT_NOFILE (hard, this process) is 64, the restore needs {NOFILE_NEEDED}" in _error_line(result)
    assert "ulimit -Hn" in _error_line(result)


def test_dumped_hard_nofile_above_ours_is_named_without_cap_sys_resource(monkeypatch) -> None:
    """The dumped RLIMIT_NOFILE is 20000 = 20000; ours 200: the blob's prlimit64 would fail EPERM."""
    plan = build_plan(ImageSet.open(COUNTER))
    monkeypatch.setattr(limits, "_have_cap", lambda cap: False)
    monkeypatch.setattr(limits.resource, "getrlimit",
                        lambda which: (200, 200) if which == resource.RLIMIT_NOFILE else (-1, -1))
    with pytest.raises(LimitTooLow, match=r"RLIMIT_NOFILE \(hard, this process\) is 200, the restore needs 20000 "
                                          r"\(task 31100 was dumped with it.*CAP_SYS_RESOURCE.*prlimit --nofile=:20000"):
        limits.check_image_rlimits(plan)


def test_dumped_hard_nofile_above_nr_open_is_named(tmp_path: Path) -> None:
    nr_open = int(Path(limits.NR_OPEN_PATH).read_text())
    d = tmp_path / "counter"
    shutil.copytree(COUNTER, d)
    core = load_image(d / f"core-{PID}.img")
    core.entries[0].tc.rlimits.rlimits[limits.RLIMIT_NOFILE].max = nr_open + 1
    (d / f"core-{PID}.img").write_bytes(dump_image(core))
    result = _cli(d)
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    assert f"fs.nr_open is {nr_open}, the restore needs {nr_open + 1}" in _error_line(result)


def test_low_soft_nofile_restores(tmp_path: Path) -> None:
    """A soft limit of 16 (hard unchanged): each task raises its own soft limit to the layout's
    need. Before the fd layout (files/fdlayout.py) every restore under ~700 failed with EBADF."""
    subprocess.run([str(FIXTURES / "install.sh"), "counter"], check=True, capture_output=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        result = _cli(COUNTER, nofile=(16, hard))
        assert result.returncode == 0, result.stderr
        verify = subprocess.run([sys.executable, str(FIXTURES / "verify.py"), "counter"], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        kill_and_wait(PID)
    assert not Path(f"/proc/{PID}").exists()


def test_memory_needed_above_available_is_named(monkeypatch) -> None:
    plan = build_plan(ImageSet.open(COUNTER))
    need = limits.pages_bytes(plan)
    assert need == 26 * 4096  # counter's 26 present pages (pagemap-31100.img)
    monkeypatch.setattr(limits, "_mem_available", lambda: need - 1)
    with pytest.raises(LimitTooLow, match=r"memory \(MemAvailable, /proc/meminfo\) is 0 MiB, the restore needs 0 MiB"):
        limits.check_memory(plan)


def test_cgroup_memory_headroom_is_named(monkeypatch, tmp_path: Path) -> None:
    """A cgroup v2 directory whose memory.max less memory.current is below the pages."""
    plan = build_plan(ImageSet.open(COUNTER))
    (tmp_path / "memory.max").write_text(str(8 << 20))
    (tmp_path / "memory.current").write_text(str((8 << 20) - 4096))
    monkeypatch.setattr(limits, "_mem_available", lambda: 1 << 40)
    monkeypatch.setattr(limits, "_memory_cgroups", lambda: [(tmp_path, "memory.max", "memory.current")])
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path)
    with pytest.raises(LimitTooLow, match=rf"memory \(cgroup {tmp_path}: limit 8 MiB less usage\) is 0 MiB"):
        limits.check_memory(plan)


def test_this_machines_cgroup_is_read_without_error() -> None:
    found = limits.cgroup_headroom()
    assert found is None or found[1] >= 0


def test_max_map_count_is_named(monkeypatch, tmp_path: Path) -> None:
    plan = build_plan(ImageSet.open(COUNTER))
    path = tmp_path / "max_map_count"
    path.write_text("10")
    monkeypatch.setattr(limits, "MAX_MAP_COUNT_PATH", str(path))
    n = len(plan.root.vmas)
    with pytest.raises(LimitTooLow, match=rf"vm.max_map_count is 10, the restore needs {n + limits.BLOB_MAPPINGS} "
                                          rf"\(task 31100 has {n} VMAs"):
        limits.check_map_count(plan)


def test_real_plan_passes_every_limit_here() -> None:
    limits.check_limits(build_plan(ImageSet.open(COUNTER)))
