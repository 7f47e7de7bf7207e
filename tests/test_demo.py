"""`pycrestore demo` on this machine, and upstream CRIU restoring the checkpoint it writes.

The demo needs no fixture pack: it checkpoints its own program with pycrestore's dumper
(pycriu_restore/dump/), restores it, and the program itself checks that its memory page
and xmm15 survived. Needs root (skipped otherwise, saying so).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import CRIU, FIXTURES, ensure_criu, needs_fixtures, wait_gone
from pycriu_restore.cli import main
from pycriu_restore.demo import run_demo
from pycriu_restore.demo.program import OUTPUT_NAME, parse_line
from pycriu_restore.images import ImageSet, image_to_dict, load_image

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root (ptrace, clone3 set_tid)")

STOP_TICK = 3
# What `criu dump` writes for such a task (the counter fixture's file list, pids aside).
EXPECTED_FILES = {"inventory.img", "pstree.img", "core-{pid}.img", "ids-{pid}.img", "mm-{pid}.img",
                  "pagemap-{pid}.img", "pages-1.img", "files.img", "fdinfo-2.img", "fs-{pid}.img",
                  "timens-0.img", "seccomp.img", "stats-dump"}


@needs_root
def test_demo_goes_on_from_the_next_tick_with_its_checks_passing() -> None:
    lines: list[str] = []
    result = run_demo(STOP_TICK, echo=lines.append)
    assert [t.tick for t in result.before][-1] == STOP_TICK
    assert result.after[0].tick == STOP_TICK + 1, lines
    assert all(t.ok and t.pid == result.pid for t in result.after), lines
    assert any(line.startswith("pycrestore: [") and "MEMORY" in line for line in lines), lines
    assert wait_gone(result.pid)
    assert not result.checkpoint.directory.exists()   # the temporary directory is removed


def test_demo_names_the_cause_in_one_line_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    run = CliRunner().invoke(main, ["demo"])
    assert run.exit_code == 4
    assert run.output.startswith("pycrestore: error: needs root") and run.output.count("\n") == 1, run.output


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint kept by `pycrestore demo --keep` (the demo itself ran and passed)."""
    keep = tmp_path_factory.mktemp("demo") / "ckpt"
    run = CliRunner().invoke(main, ["demo", "--ticks", str(STOP_TICK), "--keep", str(keep)])
    assert run.exit_code == 0, run.output
    assert f"went on from tick {STOP_TICK + 1}" in run.output, run.output
    return keep


@needs_root
def test_demo_keep_writes_the_files_criu_dump_writes(kept: Path) -> None:
    keep = kept
    (pstree,) = ImageSet.open(keep).pstree()
    pid = pstree.pid
    names = {p.name for p in keep.iterdir()} - {OUTPUT_NAME, "stats-restore"}
    assert names == {n.format(pid=pid) for n in EXPECTED_FILES}
    assert wait_gone(pid)
    info = CliRunner().invoke(main, ["info", str(keep)])
    assert info.exit_code == 0 and "demo-program" in info.output, info.output
    core = load_image(keep / f"core-{pid}.img").entries[0]
    xmm15 = list(core.thread_info.fpregs.xmm_space[60:64])   # the value demo.c loads
    assert xmm15 == [0x89abcdef, 0x01234567, 0xcafebeef, 0xfeedface]


def _shape(value: object) -> object:
    """The keys of a crit-style dict, recursively (a list by its first element)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        return [_shape(value[0])]
    return None


# xsave arrays are recorded for the components the dump CPU enables: they differ by CPU.
CPU_DEPENDENT = {"ymmh_space", "bndreg_state", "bndcsr_state", "opmask_reg", "zmm_upper",
                 "hi16_zmm", "pkru", "cet"}


@needs_root
@needs_fixtures
def test_demo_images_have_the_fields_criu_writes(kept: Path) -> None:
    """Every image of the demo's checkpoint has the fields of CRIU 4.2's for the counter fixture."""
    reference = FIXTURES / "decoded" / "counter"
    (pstree,) = ImageSet.open(kept).pstree()
    for ours in sorted(kept.iterdir()):
        if ours.name in (OUTPUT_NAME, "stats-restore") or ours.name.startswith("pages-"):
            continue
        ref_name = ours.name.replace(str(pstree.pid), "31100").replace(".img", "") + ".json"
        mine = _shape(image_to_dict(load_image(ours)))
        theirs = _shape(json.loads((reference / ref_name).read_text()))
        if ours.name.startswith("core-"):
            for shape in (mine, theirs):
                xsave = shape["entries"][0]["thread_info"]["fpregs"]["xsave"]
                for key in CPU_DEPENDENT:
                    xsave.pop(key, None)
        assert mine == theirs, ours.name


@needs_root
def test_upstream_criu_restores_the_demo_checkpoint(kept: Path, tmp_path: Path) -> None:
    ensure_criu()
    keep = kept
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
        assert wait_gone(pid)
