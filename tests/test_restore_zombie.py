"""Tasks that are not running: criu-4.2-more's zombie workload, a zombie and a stopped child.

The parent 40800 has three children: 40801 exited with code 7 and was never reaped (a
zombie: core-40801.img only, tc.exit_code 1792 = 7 << 8), 40802 stopped itself with SIGSTOP
(state T), 40803 runs. The plan tests need no root; the restore tests restore the workload
in our pid namespace and in a new one, check it with its verify.py and in /proc, then kill
every task by pid and check that none is left (the zombie goes when its parent dies; the
stopped task dies of SIGKILL like any other). Tampered copies prove the exit status is
applied, for an exit code and for a killing signal. Last, a program of our own
(tests/c/zombie_sigchld.c), dumped by upstream CRIU during the test: a zombie killed by a
signal under a parent with a SIGCHLD handler, which must not run again after the restore.
Runs as root; the pids need kernel.pid_max above 32768.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURES_MORE, REPO, kill_and_wait, needs_fixtures_more, pid_max_at_least, wait_gone
from realprogs import dumped_program, restored, wait_for
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature
from pycriu_restore.plan.model import TaskState
from packs import MORE, restore_cli

pytestmark = needs_fixtures_more

IMAGES = FIXTURES_MORE / "images" / "zombie"
PARENT, ZOMBIE, STOPPED, RUNNING = 40800, 40801, 40802, 40803
SIGCHLD_BIT = 1 << (signal.SIGCHLD - 1)  # proc(5) SigPnd/ShdPnd: bit n-1 for signal n


# -- the plan (no root) --------------------------------------------------------------------

def _tampered(tmp_path: Path, pid: int, change) -> Path:
    """A copy of the images with core-PID.img changed by ``change(entry)``."""
    images = tmp_path / "zombie"
    if not images.exists():
        shutil.copytree(IMAGES, images)
    path = images / f"core-{pid}.img"
    core = load_image(path)
    change(core.entries[0])
    path.write_bytes(dump_image(core))
    return images


def test_plan_holds_a_zombie_and_a_stopped_task():
    plan = build_plan(ImageSet.open(str(IMAGES)))
    by_pid = {t.pid: t for t in plan.tasks}
    assert [t.pid for t in plan.tasks] == [PARENT, ZOMBIE, STOPPED, RUNNING]
    zombie = by_pid[ZOMBIE]
    assert (zombie.state, zombie.exit_status, zombie.ppid, zombie.pgid, zombie.sid, zombie.comm) == (
        TaskState.DEAD, 7 << 8, PARENT, PARENT, PARENT, "zombie")
    # Its pstree thread list holds stale memory (3949993008): not read.
    assert (zombie.threads, zombie.vmas, zombie.files, zombie.mm) == ((), (), (), None)
    stopped = by_pid[STOPPED]
    assert (stopped.state, stopped.stop_signo) == (TaskState.STOPPED, signal.SIGSTOP)
    assert [t.tid for t in stopped.threads] == [STOPPED] and stopped.vmas and stopped.mm is not None
    assert by_pid[PARENT].state is by_pid[RUNNING].state is TaskState.ALIVE
    assert [t.pid for t in plan.live_tasks] == [PARENT, STOPPED, RUNNING]
    assert plan.notes == ()


@pytest.mark.parametrize("status, error, says", [
    (0x8B, UnsupportedFeature, "core dump"),  # SIGSEGV with the core-dump flag
    (signal.SIGSTOP, InconsistentImages, "does not end a process"),
    (0x7F, InconsistentImages, "not the wait status of a dead task"),
    ((7 << 8) | 0x80, InconsistentImages, "not a wait status"),
    (1 << 16, InconsistentImages, "not a wait status"),
], ids=["core-dumped", "sigstop", "stop-status", "exit-with-core-bit", "too-wide"])
def test_plan_refuses_impossible_exit_status(tmp_path, status, error, says):
    images = _tampered(tmp_path, ZOMBIE, lambda e: setattr(e.tc, "exit_code", status))
    with pytest.raises(error, match=says) as info:
        build_plan(ImageSet.open(str(images)))
    assert "core-40801.img" in str(info.value)


@pytest.mark.parametrize("status", [signal.SIGKILL, signal.SIGTERM, 34, 0, 255 << 8])
def test_plan_accepts_exit_status(tmp_path, status):
    images = _tampered(tmp_path, ZOMBIE, lambda e: setattr(e.tc, "exit_code", status))
    plan = build_plan(ImageSet.open(str(images)))
    assert plan.tasks[1].exit_status == status


def test_plan_stopped_by_sigtstp_is_stopped_by_sigstop_with_a_note(tmp_path):
    images = _tampered(tmp_path, STOPPED, lambda e: setattr(e.tc, "stop_signo", signal.SIGTSTP))
    plan = build_plan(ImageSet.open(str(images)))
    assert plan.tasks[2].stop_signo == signal.SIGSTOP
    assert len(plan.notes) == 1 and "core-40802.img: stopped by SIGTSTP" in plan.notes[0]


def test_plan_refuses_a_stop_signo_that_stops_nothing(tmp_path):
    images = _tampered(tmp_path, STOPPED, lambda e: setattr(e.tc, "stop_signo", signal.SIGKILL))
    with pytest.raises(InconsistentImages, match="core-40802.img.*tc.stop_signo = 9: not a stop signal"):
        build_plan(ImageSet.open(str(images)))


def test_plan_refuses_a_task_state_it_does_not_know(tmp_path):
    images = _tampered(tmp_path, RUNNING, lambda e: setattr(e.tc, "task_state", 6))
    with pytest.raises(UnsupportedFeature, match="core-40803.img.*tc.task_state = 6"):
        build_plan(ImageSet.open(str(images)))


def test_plan_refuses_a_child_of_a_zombie(tmp_path):
    images = tmp_path / "zombie"
    shutil.copytree(IMAGES, images)
    pstree = load_image(images / "pstree.img")
    next(e for e in pstree.entries if e.pid == RUNNING).ppid = ZOMBIE
    (images / "pstree.img").write_bytes(dump_image(pstree))
    with pytest.raises(InconsistentImages, match="task 40803: its parent 40801 is a zombie"):
        build_plan(ImageSet.open(str(images)))


def test_info_shows_the_zombie():
    from pycriu_restore.summary import render
    text = render(ImageSet.open(str(IMAGES)))
    assert "task 40801 (zombie): a zombie, wait status 0x700" in text
    assert "\n40801\n" not in render(ImageSet.open(str(IMAGES)), "mems")  # no memory: left out, as crit cannot


# -- restores (root) -----------------------------------------------------------------------

@pytest.fixture
def _pid_max():
    with pid_max_at_least(65536):
        yield
    for pid in (PARENT, ZOMBIE, STOPPED, RUNNING):  # an orphaned zombie waits for init to reap it
        assert wait_gone(pid), f"pid {pid} is still in use after the test"


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on (proc(5): split after the last ')')."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def inner_pid(pid: int) -> int:
    """The pid in the innermost pid namespace (NSpid's last field)."""
    return int(proc_status(pid)["NSpid"].split()[-1])


def kill_tree(root: int, init: int | None) -> None:
    """SIGKILL every task by pid, children first, and wait until each /proc/PID is gone.

    The stopped child dies of SIGKILL like any task; the zombie, already dead, goes only
    when its parent is gone and its new parent (init) reaps it.
    """
    pids = children(root) if os.path.exists(f"/proc/{root}") else []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kill_and_wait(root)
    if init is not None:
        kill_and_wait(init)
    for pid in pids:
        assert wait_gone(pid), f"pid {pid} is still there"


@pytest.mark.parametrize("pid_ns", [False, True], ids=["host-pids", "pid-ns"])
def test_restore_and_verify(_pid_max, pid_ns, tmp_path):
    MORE.install("zombie")
    pidfile = tmp_path / "pid"
    result = restore_cli(IMAGES, pidfile, *(["--pid-ns"] if pid_ns else []))
    assert result.returncode == 0, result.stderr
    root = int(pidfile.read_text())
    init = int(result.stderr.split("init ")[1].split(")")[0]) if pid_ns else None
    try:
        check = MORE.verify("zombie", pid_for_ns=root if pid_ns else None)
        assert check.returncode == 0 and check.stdout.startswith("PASS zombie"), check.stdout + check.stderr
        ours = {inner_pid(pid): pid for pid in children(root)}
        assert sorted(ours) == [ZOMBIE, STOPPED, RUNNING]
        if not pid_ns:
            assert root == PARENT and all(inner == outer for inner, outer in ours.items())
        zombie, stopped = proc_stat(ours[ZOMBIE]), proc_stat(ours[STOPPED])
        assert (zombie[0], int(zombie[49])) == ("Z", 7 << 8)
        assert stopped[0] == "T"
        assert proc_stat(ours[RUNNING])[0] in "SR" and proc_stat(root)[0] in "SR"
        # The zombie's exit left no SIGCHLD behind in its parent (restore/zombie.py).
        status = proc_status(root)
        assert not (int(status["ShdPnd"], 16) | int(status["SigPnd"], 16)) & SIGCHLD_BIT, status
    finally:
        kill_tree(root, init)


@pytest.mark.parametrize("status, parent_sees", [(5 << 8, "A=Z5"), (signal.SIGPIPE, "A=Z-1")],
                         ids=["exit-5", "killed-by-sigpipe"])
def test_tampered_exit_status_is_applied(_pid_max, tmp_path, status, parent_sees):
    """The zombie shows the image's status in /proc, and its parent logs it (verify.py fails)."""
    images = _tampered(tmp_path, ZOMBIE, lambda e: setattr(e.tc, "exit_code", status))
    MORE.install("zombie")
    pidfile = tmp_path / "pid"
    result = restore_cli(images, pidfile)
    assert result.returncode == 0, result.stderr
    root = int(pidfile.read_text())
    try:
        zombie = proc_stat(ZOMBIE)
        assert (zombie[0], int(zombie[49])) == ("Z", status)
        check = MORE.verify("zombie")
        assert check.returncode == 1 and check.stdout.startswith("FAIL zombie"), check.stdout + check.stderr
        assert parent_sees in check.stdout, check.stdout
    finally:
        kill_tree(root, None)


# -- a checkpoint of our own, by upstream CRIU ------------------------------------------------

SIGCHLD_PROGRAM = REPO / "tests" / "c" / "zombie_sigchld.c"
SIGCHLD_PARENT = 47800  # free of the fixture packs and of test_real_programs.py


def _ticks(workdir: Path) -> list[str]:
    return (workdir / "stdout").read_text().splitlines()


def test_criu_dumped_zombie_killed_by_a_signal(tmp_path):
    """CRIU records the signal as the wait status (SIGUSR1 = 10); after the restore the
    parent's waitid still sees CLD_KILLED with SIGUSR1, and its SIGCHLD handler, which ran
    once before the dump, does not run again (restore/zombie.py consumes the new exit's
    SIGCHLD before the parent's handler is back)."""
    binary = tmp_path / "zombie_sigchld"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SIGCHLD_PROGRAM)], check=True)
    with dumped_program("zombie-sigchld", SIGCHLD_PARENT, [str(binary)],
                        ready=lambda w: len(_ticks(w)) >= 5) as dumped:
        child = dumped.pids[1]
        core = load_image(dumped.images / f"core-{child}.img").entries[0]
        assert (core.tc.task_state, core.tc.exit_code) == (TaskState.DEAD, signal.SIGUSR1)
        before = _ticks(dumped.workdir)
        assert before.count("SIGCHLD") == 1, before
        with restored(dumped) as result:
            assert result.returncode == 0, result.stderr
            wait_for("new ticks", lambda: len(_ticks(dumped.workdir)) >= len(before) + 10)
            stat = proc_stat(child)
            assert (stat[0], int(stat[1]), int(stat[49])) == ("Z", SIGCHLD_PARENT, signal.SIGUSR1)
            after = _ticks(dumped.workdir)
            assert after.count("SIGCHLD") == 1, after
            # CLD_KILLED (2) by SIGUSR1, on every line after the restore too.
            new = after[len(before):]
            assert all(re.fullmatch(rf"tick \d+ code=2 status={int(signal.SIGUSR1)}", line) for line in new), new
