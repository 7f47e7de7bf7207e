"""The in-task preparation (restore/task.py) in a real forked child, before any blob runs.

The child installs the counter fixture's fds at their numbers, with their positions and
FD_CLOEXEC, opens the service files, enters a time namespace with the dump's clocks, becomes
a session leader and stops itself. The test reads all of that from /proc, then kills the
child by pid and checks it is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from conftest import FIXTURES, needs_fixtures
from pycriu_restore.images import ImageSet
from pycriu_restore.plan.build import build_plan
import dataclasses

from pycriu_restore.linux.clone3 import clone3
from pycriu_restore.restore.shared import SharedFds
from pycriu_restore.restore.task import READY, ServiceFds, TaskLink, TreeSetup, run_child

pytestmark = needs_fixtures


def _install(name: str) -> None:
    subprocess.run([str(FIXTURES / "install.sh"), name], check=True, capture_output=True)


def _wait_stopped(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.01)
    raise AssertionError(f"child {pid} did not stop (state {state})")


def _start(plan, task):
    """Fork ``task`` as the root of a one-task tree; returns (pid, go write end, status read end)."""
    service = ServiceFds.for_task(task)
    go_r, go_w = os.pipe()
    status_r, status_w = os.pipe()
    tree = TreeSetup(plan=plan, links={task.pid: TaskLink(go_r, status_w, service)}, parked=SharedFds.layout(plan))
    pid = clone3(0, [task.pid])  # its checkpointed pid, as in a restore: setsid must give that sid
    if pid == 0:  # the child never returns from run_child
        os.close(go_w)
        os.close(status_r)
        run_child(task, tree)
    os.close(go_r)
    os.close(status_w)
    return pid, go_w, status_r, service


def test_child_prepares_fds_fs_session_and_time_namespace():
    _install("pipes")
    full = build_plan(ImageSet.open(FIXTURES / "images" / "pipes"))
    plan = dataclasses.replace(full, tasks=(full.root,))  # the parent alone: its child is not forked
    task = plan.tasks[0]
    pid, go_w, status_r, service = _start(plan, task)
    try:
        os.write(go_w, b"g")
        assert os.read(status_r, 4096) == READY
        _wait_stopped(pid)
        fd_dir = f"/proc/{pid}/fd"
        for f in task.files:
            link = os.readlink(f"{fd_dir}/{f.fd}")
            with open(f"/proc/{pid}/fdinfo/{f.fd}") as info:
                fields = dict(line.split(":", 1) for line in info.read().splitlines() if ":" in line)
            flags = int(fields["flags"].strip(), 8)
            assert bool(flags & os.O_CLOEXEC) == f.cloexec, (f.fd, flags)
            if hasattr(f, "path"):
                assert link == f.path
                if not f.flags & os.O_APPEND:
                    assert int(fields["pos"]) == f.pos, f.fd
            else:
                assert link.startswith("pipe:")
        # data.txt was dumped at position 1056 (see the fixture README).
        data_fd = next(f.fd for f in task.files if getattr(f, "path", "").endswith("data.txt"))
        with open(f"/proc/{pid}/fdinfo/{data_fd}") as info:
            assert "pos:\t1056" in info.read()
        assert os.readlink(f"{fd_dir}/{service.pages}") == os.path.realpath(task.pages_path)
        assert os.readlink(f"{fd_dir}/{service.exe}") == task.mm.exe.path
        opened = set(int(x) for x in os.listdir(fd_dir))
        assert opened == {f.fd for f in task.files} | set(service.all), opened
        assert os.readlink(f"/proc/{pid}/cwd") == task.cwd
        with open(f"/proc/{pid}/stat") as f:
            sid = int(f.read().rsplit(")", 1)[1].split()[3])  # proc(5): state ppid pgrp session
        assert sid == pid  # setsid: the task leads its own session
        assert os.readlink(f"/proc/{pid}/ns/time") != os.readlink("/proc/self/ns/time")
        with open(f"/proc/{pid}/timens_offsets") as f:
            offsets = {line.split()[0]: int(line.split()[1]) for line in f}
        # The namespace's monotonic clock continues from the dump's value (timens-0.img).
        now = time.clock_gettime(time.CLOCK_MONOTONIC)
        assert abs(now + offsets["monotonic"] - plan.timens.monotonic_sec) < 5
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(go_w)
        os.close(status_r)
    assert not os.path.exists(f"/proc/{pid}")


def test_child_reports_a_missing_file_and_exits(tmp_path):
    _install("counter")
    plan = build_plan(ImageSet.open(FIXTURES / "images" / "counter"))
    task = plan.tasks[0]
    os.unlink("/var/tmp/pycrestore-fixtures/counter/log")
    pid, go_w, status_r, _ = _start(plan, task)
    os.write(go_w, b"g")
    report = os.read(status_r, 4096)
    _, status = os.waitpid(pid, 0)
    os.close(go_w)
    os.close(status_r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 111
    assert b'"step": "open fd 3 (/var/tmp/pycrestore-fixtures/counter/log)"' in report
    assert b"No such file" in report
    _install("counter")
