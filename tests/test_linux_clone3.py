"""clone3 with set_tid from Python: exact pids, collisions, a child that is pid 1 of a new
pid namespace. Needs root (CAP_CHECKPOINT_RESTORE / CAP_SYS_ADMIN)."""

from __future__ import annotations

import os
import random
import signal
import struct
from collections.abc import Callable, Iterator

import pytest

from pycriu_restore.errors import EXIT_ENVIRONMENT
from pycriu_restore.linux.clone3 import CLONE_VM, clone3
from pycriu_restore.linux.errors import PidInUse, PidNotAvailable
from pycriu_restore.linux.namespaces import CLONE_NEWPID


PID_MAX = int(open("/proc/sys/kernel/pid_max").read())


def free_pid() -> int:
    """A pid that no task holds right now (others may take it; callers retry)."""
    while True:
        pid = random.randrange(PID_MAX // 2, PID_MAX - 1)
        if not os.path.exists(f"/proc/{pid}"):
            return pid


class Children:
    """The children a test made: each is reaped by the test or killed and reaped here."""

    def __init__(self) -> None:
        self.live: set[int] = set()

    def reap(self, pid: int) -> int:
        """Wait for ``pid`` to exit; return its exit code."""
        got, status = os.waitpid(pid, 0)
        self.live.discard(pid)
        return os.waitstatus_to_exitcode(status)

    def cleanup(self) -> None:
        for pid in sorted(self.live):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for pid in self.live:
            assert not os.path.exists(f"/proc/{pid}"), f"child {pid} left behind"


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.cleanup()


def spawn(children: Children, flags: int, set_tid: list[int],
          body: Callable[[], bytes]) -> tuple[int, bytes, int]:
    """clone3 a child that sends ``body()`` to us and then waits until we close its pipe.

    Returns (pid, what the child sent, write end of the hold pipe: close it to let it go).
    """
    report_r, report_w = os.pipe()
    hold_r, hold_w = os.pipe()
    try:
        pid = clone3(flags, set_tid)
    except BaseException:
        for fd in (report_r, report_w, hold_r, hold_w):
            os.close(fd)
        raise
    if pid == 0:
        code = 0
        try:
            os.close(hold_w)
            msg = body()
            os.write(report_w, struct.pack("<I", len(msg)) + msg)
            os.read(hold_r, 1)   # returns at EOF, when the parent closes hold_w
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    children.live.add(pid)
    os.close(report_w)
    os.close(hold_r)
    (size,) = struct.unpack("<I", os.read(report_r, 4))
    msg = os.read(report_r, size)
    os.close(report_r)
    return pid, msg, hold_w


def test_set_tid_gives_the_exact_pid_and_reuse_is_pid_in_use(children: Children) -> None:
    for _attempt in range(5):
        wanted = free_pid()
        try:
            pid, msg, hold = spawn(children, 0, [wanted], lambda: str(os.getpid()).encode())
            break
        except PidInUse:
            continue   # someone took it between our look and the clone
    else:
        pytest.fail("no free pid found in 5 attempts")
    try:
        assert pid == wanted
        assert int(msg) == wanted                     # the child sees the same pid
        with pytest.raises(PidInUse) as info:         # it lives: the pid is taken
            clone3(0, [wanted])
        assert info.value.pid == wanted and info.value.set_tid == [wanted]
        assert info.value.exit_code == EXIT_ENVIRONMENT
        assert f"pid {wanted} is already in use" in str(info.value)
    finally:
        os.close(hold)
    assert children.reap(pid) == 0


def test_new_pid_namespace_child_is_pid_1_inside(children: Children) -> None:
    def inside() -> bytes:
        return f"{os.getpid()} {os.getppid()}".encode()

    for _attempt in range(5):
        host_pid = free_pid()
        try:
            pid, msg, hold = spawn(children, CLONE_NEWPID, [1, host_pid], inside)
            break
        except PidInUse:
            continue
    else:
        pytest.fail("no free pid found in 5 attempts")
    try:
        assert pid == host_pid
        inner_pid, inner_ppid = map(int, msg.split())
        assert inner_pid == 1
        assert inner_ppid == 0      # its parent (us) is outside its namespace
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
        assert nspid == [str(host_pid), "1"]
    finally:
        os.close(hold)
    assert children.reap(pid) == 0


def test_pid_above_pid_max_is_not_available() -> None:
    with pytest.raises(PidNotAvailable, match=rf"pid {PID_MAX + 5} is not below pid_max"):
        clone3(0, [PID_MAX + 5])


def test_first_task_of_new_pid_ns_must_be_1() -> None:
    with pytest.raises(PidNotAvailable, match="must be pid 1, not 5") as info:
        clone3(CLONE_NEWPID, [5, free_pid()])
    assert info.value.exit_code == EXIT_ENVIRONMENT


def test_sharing_memory_is_refused_before_any_syscall() -> None:
    with pytest.raises(AssertionError, match="clone3: flags"):
        clone3(CLONE_VM, [])


def test_empty_set_tid_is_a_plain_fork(children: Children) -> None:
    pid, msg, hold = spawn(children, 0, [], lambda: str(os.getpid()).encode())
    os.close(hold)
    assert int(msg) == pid
    assert children.reap(pid) == 0
