"""Decoding waitpid statuses into ptrace stop kinds (the table of ptrace(2))."""

from __future__ import annotations

import os
import signal

import pytest

from pycriu_restore.linux.errors import TaskGone
from pycriu_restore.linux.ptrace import PTRACE_EVENT_CLONE, PTRACE_EVENT_STOP
from pycriu_restore.linux.waitstatus import StopKind, decode, wait_for


def stopped(sig: int, event: int = 0) -> int:
    """The status word the kernel builds for a stop: (event << 16) | (sig << 8) | 0x7f."""
    return (event << 16) | (sig << 8) | 0x7F


@pytest.mark.parametrize("status, kind, sig, event", [
    (stopped(signal.SIGTRAP | 0x80), StopKind.SYSCALL, signal.SIGTRAP, 0),
    (stopped(signal.SIGTRAP, PTRACE_EVENT_STOP), StopKind.EVENT_STOP, signal.SIGTRAP,
     PTRACE_EVENT_STOP),
    (stopped(signal.SIGSTOP, PTRACE_EVENT_STOP), StopKind.GROUP, signal.SIGSTOP,
     PTRACE_EVENT_STOP),
    (stopped(signal.SIGTTIN, PTRACE_EVENT_STOP), StopKind.GROUP, signal.SIGTTIN,
     PTRACE_EVENT_STOP),
    (stopped(signal.SIGTRAP, PTRACE_EVENT_CLONE), StopKind.EVENT, signal.SIGTRAP,
     PTRACE_EVENT_CLONE),
    (stopped(signal.SIGSEGV), StopKind.SIGNAL, signal.SIGSEGV, 0),
    (stopped(signal.SIGTRAP), StopKind.SIGNAL, signal.SIGTRAP, 0),
])
def test_stop_kinds(status: int, kind: StopKind, sig: int, event: int) -> None:
    stop = decode(status)
    assert (stop.kind, stop.signal, stop.event) == (kind, sig, event)
    assert stop.alive


def test_exit_and_kill() -> None:
    exited = decode(3 << 8)
    assert exited.kind is StopKind.EXITED and exited.exit_code == 3 and not exited.alive
    assert exited.describe() == "exit (code 3)"
    killed = decode(signal.SIGKILL)
    assert killed.kind is StopKind.KILLED and killed.signal == signal.SIGKILL
    assert killed.describe() == "death by signal (SIGKILL)"
    assert decode(stopped(signal.SIGSEGV)).describe() == "signal-delivery stop (SIGSEGV)"


def test_wait_for_real_child_exit_then_echild() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    stop = wait_for(pid)
    assert stop is not None and stop.kind is StopKind.EXITED and stop.exit_code == 7
    with pytest.raises(TaskGone, match=rf"task {pid} is gone: ECHILD"):
        wait_for(pid)


def test_wait_for_nohang_returns_none_while_running() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.read(r, 1)
        finally:
            os._exit(0)
    try:
        assert wait_for(pid, nohang=True) is None
    finally:
        os.write(w, b"x")
        os.close(w)
        os.close(r)
        stop = wait_for(pid)
    assert stop is not None and stop.kind is StopKind.EXITED and stop.exit_code == 0
