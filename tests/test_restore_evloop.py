"""evloop (criu-4.2-more): an epoll set over a timerfd, an eventfd, a signalfd and an inotify watch.

The plan reads each kind through its module (files/registry.py); the restore recreates each
object at its fd number and verify.py checks they all still work (timer ticks continue, the
eventfd counter and the pending SIGUSR1 are exact, the inotify watch fires), in our pid
namespace and in a new one. A tampered eventfd counter must make verify.py fail; an fd far
above the range pycrestore used to reserve for itself (5000) must restore. Every test kills
what it restored by pid and waits until /proc/PID is gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES_MORE, kill_and_wait, needs_fixtures_more, pid_max_at_least
from pycriu_restore.files.epoll import EpollFd, EpollWatch
from pycriu_restore.files.eventfd import EventfdFd
from pycriu_restore.files.inotify import InotifyFd, InotifyWatch
from pycriu_restore.files.signalfd import SignalfdFd
from pycriu_restore.files.timerfd import TimerfdFd
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import UnsupportedFeature
from packs import MORE, restore_cli

pytestmark = needs_fixtures_more

NAME = "evloop"
PID = 40300
IMAGES = FIXTURES_MORE / "images" / NAME
WATCHED = "/var/tmp/pycrestore-fixtures/evloop/watched.txt"
O_NONBLOCK_RDWR = os.O_RDWR | os.O_NONBLOCK


@pytest.fixture()
def pid_range():
    with pid_max_at_least(65536):
        yield
    assert not os.path.exists(f"/proc/{PID}"), f"pid {PID} is still in use after the test"


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / NAME
    shutil.copytree(IMAGES, out)
    return out


# --- plan: each kind read by its module ------------------------------------------------

def test_plan_reads_every_evloop_kind():
    files = {f.fd: f for f in build_plan(ImageSet.open(IMAGES)).root.files}
    assert files[4] == EpollFd(fd=4, cloexec=True, file_id=8, flags=os.O_RDWR, watches=tuple(
        EpollWatch(target_fd=fd, events=0x19, data=data) for fd, data in ((8, 0x7104), (7, 0x7103), (6, 0x7102), (5, 0x7101))))
    timer = files[5]
    assert isinstance(timer, TimerfdFd)
    assert (timer.clockid, timer.interval, timer.value, timer.ticks, timer.settime_flags) == (1, (0, 50_000_000), (0, 43977731), 0, 0)
    assert files[6] == EventfdFd(fd=6, cloexec=True, file_id=10, counter=0, flags=O_NONBLOCK_RDWR)
    assert files[7] == SignalfdFd(fd=7, cloexec=True, file_id=11, sigmask=1 << (10 - 1), flags=O_NONBLOCK_RDWR)
    assert files[8] == InotifyFd(fd=8, cloexec=True, file_id=12, flags=os.O_NONBLOCK,
                                 watches=(InotifyWatch(wd=1, path=WATCHED, mask=0xA),))


def test_every_unsupported_fd_is_listed_at_once(tmp_path):
    """Two fds of kinds no module owns: one error, naming task and fd of each, the first in full."""
    d = _copy(tmp_path)
    files = load_image(d / "files.img")
    for entry in files.entries:
        if entry.id in (9, 11):  # the timerfd (fd 5) and the signalfd (fd 7)
            entry.type = 3  # FIFO
    (d / "files.img").write_bytes(dump_image(files))
    with pytest.raises(UnsupportedFeature) as caught:
        build_plan(ImageSet.open(d))
    message = str(caught.value)
    assert message.startswith("files.img: unsupported: pid 40300 fd 5: FIFO (file type FIFO, file id 9): not restored"), message
    assert "pid 40300 fd 7: FIFO (file type FIFO, file id 11): not restored" in message
    assert "\n" not in message


def test_epoll_target_missing_is_refused(tmp_path):
    d = _copy(tmp_path)
    files = load_image(d / "files.img")
    next(e for e in files.entries if e.id == 8).epfd.tfd[0].tfd = 77
    (d / "files.img").write_bytes(dump_image(files))
    with pytest.raises(UnsupportedFeature, match="pid 40300 fd 4: epoll set watching fd 77, which the task no longer holds"):
        build_plan(ImageSet.open(d))


# --- restore ------------------------------------------------------------------------------

@pytest.mark.parametrize("pid_ns", [False, True], ids=["host-pids", "pid-ns"])
def test_restore_and_verify(pid_ns, tmp_path, pid_range):
    MORE.install(NAME)
    pidfile = tmp_path / "pid"
    result = restore_cli(IMAGES, pidfile, *(["--pid-ns"] if pid_ns else []))
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        if not pid_ns:
            assert pid == PID
        check = MORE.verify(NAME, pid_for_ns=pid if pid_ns else None)
        assert check.returncode == 0 and check.stdout.startswith(f"PASS {NAME}"), check.stdout + check.stderr
        links = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (4, 5, 6, 7, 8)}
        assert links == {4: "anon_inode:[eventpoll]", 5: "anon_inode:[timerfd]", 6: "anon_inode:[eventfd]",
                         7: "anon_inode:[signalfd]", 8: "anon_inode:inotify"}
    finally:
        kill_and_wait(pid)


def test_tampered_eventfd_counter_fails_verify(tmp_path, pid_range):
    """The counter is applied: 5 more in the image is 5 more in the workload's sum."""
    d = _copy(tmp_path)
    files = load_image(d / "files.img")
    next(e for e in files.entries if e.id == 10).efd.counter = 5
    (d / "files.img").write_bytes(dump_image(files))
    MORE.install(NAME)
    pidfile = tmp_path / "pid"
    result = restore_cli(d, pidfile)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        check = MORE.verify(NAME)
        assert check.returncode == 1 and check.stdout.startswith(f"FAIL {NAME}"), check.stdout + check.stderr
        assert "efd" in check.stdout, check.stdout
    finally:
        kill_and_wait(pid)


def test_fd_far_above_the_old_reserved_range_restores(tmp_path, pid_range):
    """An extra fd 5000 (a dup of fd 0's /dev/null): service, parked and temporary fds move
    above it, RLIMIT_NOFILE is raised for the restore, and the task still passes verify."""
    d = _copy(tmp_path)
    fdinfo = load_image(d / "fdinfo-2.img")
    first = fdinfo.entries[0]
    fdinfo.entries.append(type(first)(id=4, flags=0, type=first.type, fd=5000))
    fdinfo.extras.append(None)
    (d / "fdinfo-2.img").write_bytes(dump_image(fdinfo))
    MORE.install(NAME)
    pidfile = tmp_path / "pid"
    result = restore_cli(d, pidfile)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        assert os.readlink(f"/proc/{pid}/fd/5000") == "/dev/null"
        fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
        assert fds == [0, 1, 2, 3, 4, 5, 6, 7, 8, 5000], fds  # no service or parked fd left behind
        check = MORE.verify(NAME)
        assert check.returncode == 0 and check.stdout.startswith(f"PASS {NAME}"), check.stdout + check.stderr
    finally:
        kill_and_wait(pid)
