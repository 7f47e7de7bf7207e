"""`pycrestore demo` on this machine, and upstream CRIU restoring the checkpoint it writes.

The demo needs no fixture pack: it checkpoints its own program with pycrestore's dumper
(pycriu_restore/dump/), restores it, and the program itself checks that its memory page
and xmm15 survived. Needs root (skipped otherwise, saying so).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SHARED
from pycriu_restore.cli import main
from pycriu_restore.demo import run_demo
from pycriu_restore.demo.program import OUTPUT_NAME, parse_line
from pycriu_restore.images import ImageSet, load_image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root (ptrace, clone3 set_tid)")

CRIU = Path("/usr/local/sbin/criu")
CRIU_INSTALL = SHARED / "tools" / "criu-4.2" / "install.sh"
STOP_TICK = 3
# What `criu dump` writes for such a task (the counter fixture's file list, pids aside).
EXPECTED_FILES = {"inventory.img", "pstree.img", "core-{pid}.img", "ids-{pid}.img", "mm-{pid}.img",
                  "pagemap-{pid}.img", "pages-1.img", "files.img", "fdinfo-2.img", "fs-{pid}.img",
                  "timens-0.img", "seccomp.img", "stats-dump"}


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_demo_goes_on_from_the_next_tick_with_its_checks_passing() -> None:
    lines: list[str] = []
    result = run_demo(STOP_TICK, echo=lines.append)
    assert [t.tick for t in result.before][-1] == STOP_TICK
    assert result.after[0].tick == STOP_TICK + 1, lines
    assert all(t.ok and t.pid == result.pid for t in result.after), lines
    assert any(line.startswith("pycrestore: [") and "MEMORY" in line for line in lines), lines
    assert _gone(result.pid)
    assert not result.checkpoint.directory.exists()   # the temporary directory is removed


def test_demo_keep_writes_the_files_criu_dump_writes(tmp_path: Path) -> None:
    keep = tmp_path / "ckpt"
    run = CliRunner().invoke(main, ["demo", "--ticks", str(STOP_TICK), "--keep", str(keep)])
    assert run.exit_code == 0, run.output
    (pstree,) = ImageSet.open(keep).pstree()
    pid = pstree.pid
    names = {p.name for p in keep.iterdir()} - {OUTPUT_NAME}
    assert names == {n.format(pid=pid) for n in EXPECTED_FILES}
    assert _gone(pid)
    info = CliRunner().invoke(main, ["info", str(keep)])
    assert info.exit_code == 0 and "demo-program" in info.output, info.output
    core = load_image(keep / f"core-{pid}.img").entries[0]
    xmm15 = list(core.thread_info.fpregs.xmm_space[60:64])   # the value demo.c loads
    assert xmm15 == [0x89abcdef, 0x01234567, 0xcafebeef, 0xfeedface]


def _ensure_criu() -> None:
    if CRIU.exists():
        return
    if not CRIU_INSTALL.exists():
        pytest.skip(f"upstream CRIU is not installed ({CRIU}) and {CRIU_INSTALL} (which has it) is absent")
    subprocess.run([str(CRIU_INSTALL)], check=True, capture_output=True, timeout=600)


def test_upstream_criu_restores_the_demo_checkpoint(tmp_path: Path) -> None:
    _ensure_criu()
    keep = tmp_path / "ckpt"
    run = CliRunner().invoke(main, ["demo", "--ticks", str(STOP_TICK), "--keep", str(keep)])
    assert run.exit_code == 0, run.output
    (pstree,) = ImageSet.open(keep).pstree()
    pid = pstree.pid
    output = keep / OUTPUT_NAME
    seen_before = output.stat().st_size
    log = tmp_path / "restore.log"
    restore = subprocess.run([str(CRIU), "restore", "-D", str(keep), "-d", "-v4", "-o", str(log)],
                             capture_output=True, text=True, timeout=60)
    try:
        assert restore.returncode == 0, log.read_text()[-3000:] if log.exists() else restore.stderr
        deadline = time.monotonic() + 15
        ticks = []
        while len(ticks) < 3 and time.monotonic() < deadline:
            with open(output) as f:
                f.seek(seen_before)
                ticks = [t for t in map(parse_line, f.read().splitlines()) if t is not None]
            time.sleep(0.05)
        assert [t.tick for t in ticks[:3]] == [STOP_TICK + 1, STOP_TICK + 2, STOP_TICK + 3], ticks
        assert all(t.ok and t.pid == pid for t in ticks), ticks
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        assert _gone(pid)
