"""ptyjob (criu-4.2-more) and --shell-job: pty pairs, controlling terminals, sessions.

ptyjob's root holds a pty master, its child leads a session whose controlling terminal is
the slave (fds 0-2), in raw mode with a 33x101 window. The plan reads the pair (files/tty.py),
the restore recreates pty index 0 (in our devpts, or under --pid-ns in a devpts of the
namespace's own, even while ours holds index 0) and verify.py checks that the child still
sees its terminal and the parent reads what it writes. A tampered window size must make
verify.py fail; a pty index in use must be refused, naming it.

--shell-job: a real program (mawk) run as a job of a shell on a pty this test holds is
dumped by upstream CRIU with --shell-job; without --shell-job the restore is refused (exit
3, naming the fd), with it the program gets the caller's session and terminal and goes on
counting the lines it reads there. Every test kills what it restored, by pid, and checks
that nothing is left.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES_MORE, kill_and_wait, needs_fixtures_more, pid_max_at_least
from pycriu_restore.files.tty import PtyFd, PtyPair
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.linux import tty as kt
from pycriu_restore.plan.build import build_plan
from packs import MORE, restore_cli
from realprogs import Dumped, dumped_program, require_program, restored

NAME = "ptyjob"
ROOT, CHILD = 40700, 40701
IMAGES = FIXTURES_MORE / "images" / NAME
SLAVE_0 = os.makedev(kt.UNIX98_PTY_SLAVE_MAJOR, 0)  # /dev/pts/0 as /proc/PID/stat's tty_nr


@pytest.fixture()
def pid_range():
    with pid_max_at_least(65536):
        yield
    for pid in (ROOT, CHILD):
        assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} is still in use after the test"


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # [0] is the state (proc(5))


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _kill_tree(root: int) -> None:
    pids = [root, *_children(root)] if os.path.exists(f"/proc/{root}") else []
    for pid in pids:  # all at once: a child killed alone would wait for its parent to reap it
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for pid in pids:
        kill_and_wait(pid)


# --- plan -----------------------------------------------------------------------------------

@needs_fixtures_more
def test_plan_reads_the_pair_and_its_session():
    plan = build_plan(ImageSet.open(IMAGES))
    root, child = plan.tasks
    assert [f for f in root.files if isinstance(f, PtyFd)] == [
        PtyFd(fd=3, cloexec=False, file_id=7, index=0, master=True, flags=0o100002, path="/dev/ptmx")]
    assert [f.fd for f in child.files if isinstance(f, PtyFd) and not f.master and f.path == "/dev/pts/0"] == [0, 1, 2]
    (pair,) = plan.shared_of("TTY")
    assert isinstance(pair, PtyPair)
    assert (pair.index, pair.session, pair.foreground, pair.locked, pair.packet_mode) == (0, CHILD, CHILD, False, False)
    slave = pair.slaves[0].params
    assert slave.winsize == (33, 101, 0, 0)
    assert (slave.termios.iflag, slave.termios.oflag, slave.termios.cflag, slave.termios.lflag) == (0, 4, 0xBF, 0xA30)
    # CRIU's c_cc words hold four bytes each: ^C ^\ DEL ^U ^D, VTIME 0, VMIN 1 (cfmakeraw) ...
    assert slave.termios.cc[:8] == bytes([3, 0x1C, 0x7F, 0x15, 4, 0, 1, 0])
    # ... and the master's entry has heap leftovers after the eighth word, which are not read.
    assert pair.master_params.termios.cc == slave.termios.cc


# --- restore --------------------------------------------------------------------------------

@needs_fixtures_more
@pytest.mark.parametrize("pid_ns", [False, True], ids=["host-pids", "pid-ns"])
def test_restore_and_verify(pid_ns, tmp_path, pid_range):
    # Under --pid-ns the pty gets index 0 in the namespace's own devpts, so ours may hold
    # it meanwhile: hold the lowest free one of ours (index 0 where nothing else has it).
    held = os.openpty() if pid_ns else ()
    try:
        MORE.install(NAME)
        pidfile = tmp_path / "pid"
        result = restore_cli(IMAGES, pidfile, *(["--pid-ns"] if pid_ns else []))
        assert result.returncode == 0, result.stderr
        root = int(pidfile.read_text())
        try:
            (child,) = _children(root)
            if not pid_ns:
                assert (root, child) == (ROOT, CHILD)
            check = MORE.verify(NAME, pid_for_ns=root if pid_ns else None)
            assert check.returncode == 0 and check.stdout.startswith(f"PASS {NAME}"), check.stdout + check.stderr
            # The child leads its session, whose terminal is pts/0 with the child's group in front.
            stat = _stat(child)
            assert (int(stat[2]), int(stat[3]), int(stat[4]), int(stat[5])) == (child, child, SLAVE_0, child)
            assert os.readlink(f"/proc/{root}/fd/3") == "/dev/ptmx"
            assert os.readlink(f"/proc/{child}/fd/0") == "/dev/pts/0"
        finally:
            _kill_tree(root)
    finally:
        for fd in held:
            os.close(fd)


@needs_fixtures_more
def test_tampered_winsize_fails_verify(tmp_path, pid_range):
    """The window size is applied: 34 rows in the image are 34 rows for the child."""
    d = tmp_path / NAME
    shutil.copytree(IMAGES, d)
    info = load_image(d / "tty-info.img")
    for entry in info.entries:
        entry.winsize.ws_row = 34
    (d / "tty-info.img").write_bytes(dump_image(info))
    MORE.install(NAME)
    pidfile = tmp_path / "pid"
    result = restore_cli(d, pidfile)
    assert result.returncode == 0, result.stderr
    try:
        check = MORE.verify(NAME)
        assert check.returncode == 1 and "BAD:winsize" in check.stdout, check.stdout + check.stderr
    finally:
        _kill_tree(int(pidfile.read_text()))


@needs_fixtures_more
def test_pty_index_in_use_is_refused(tmp_path, pid_range):
    """pts/0 held here: without --pid-ns the pair cannot get its index; exit 4, naming it."""
    master, slave = os.openpty()
    try:
        if os.ttyname(slave) != "/dev/pts/0":
            pytest.fail(f"this test needs /dev/pts/0 free to hold it itself; {os.ttyname(slave)} was given")
        MORE.install(NAME)
        result = restore_cli(IMAGES, tmp_path / "pid")
        assert result.returncode == 4, result.stderr
        assert "/dev/pts/0 exists: pty index 0 is in use" in result.stderr and "--pid-ns" in result.stderr
        assert not (tmp_path / "pid").exists()
    finally:
        os.close(master)
        os.close(slave)


# --- --shell-job: a real program on a terminal outside its tree --------------------------

AWK_PID = 46600


def _read_until(master: int, wanted: bytes, timeout_s: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout_s
    while wanted not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([master], [], [], left)[0]:
            raise AssertionError(f"no {wanted!r} on the terminal within {timeout_s} s; read {got!r}")
        got += os.read(master, 4096)
    return got


@pytest.fixture(scope="module")
def awk_job():
    """mawk counting the lines typed on a pty this test holds, run as a shell job; two
    lines are typed before the dump; then dumped by CRIU with --shell-job."""
    require_program("/usr/bin/mawk")
    master, slave = os.openpty()

    def prepare(_workdir: Path) -> None:
        os.write(master, b"one\ntwo\n")
        _read_until(master, b"2: two")

    try:
        with dumped_program("awkjob", AWK_PID, ["/usr/bin/mawk", "-W", "interactive", '{ print NR ": " $0 }'],
                            ready=lambda _w: True, prepare=prepare, terminal=slave) as dumped:
            yield dumped
    finally:
        os.close(master)
        os.close(slave)


def test_outside_terminal_is_refused_without_shell_job(awk_job: Dumped):
    result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(awk_job.images), "-d"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert f"pid {AWK_PID} fd 0: terminal /dev/pts/" in result.stderr and "--shell-job" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not os.path.exists(f"/proc/{AWK_PID}")


def test_shell_job_takes_the_callers_terminal(awk_job: Dumped):
    master, slave = os.openpty()
    try:
        with restored(awk_job, "--shell-job", terminal=slave) as result:
            assert result.returncode == 0, result.stderr
            # Same terminal on 0-2: the caller's (our second pty), in the caller's session,
            # its own group in the foreground, as CRIU's --shell-job leaves it.
            ours = os.ttyname(slave)
            assert [os.readlink(f"/proc/{AWK_PID}/fd/{fd}") for fd in (0, 1, 2)] == [ours] * 3
            stat = _stat(AWK_PID)
            assert int(stat[2]) == AWK_PID and int(stat[3]) != AWK_PID  # its own group, the caller's session
            assert int(stat[5]) == AWK_PID  # the terminal's foreground group (tpgid)
            assert os.tcgetpgrp(master) == AWK_PID
            # The line counter (mawk's NR) goes on from the two lines read before the dump.
            os.write(master, b"three\n")
            _read_until(master, b"3: three")
    finally:
        os.close(master)
        os.close(slave)
