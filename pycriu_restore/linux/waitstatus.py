"""Waiting for one tracee and naming what waitpid reported (the stop kinds of ptrace(2)).

A seized task reports, through ``waitpid``, one of:

==================  ========================================  ==========================
kind                 how it looks in the status                 what it means
==================  ========================================  ==========================
SYSCALL             stopped, sig == SIGTRAP | 0x80            syscall entry or exit
                                                               (needs PTRACE_O_TRACESYSGOOD)
EVENT_STOP          stopped, event PTRACE_EVENT_STOP, SIGTRAP  PTRACE_INTERRUPT / LISTEN
GROUP               stopped, event PTRACE_EVENT_STOP,          group stop (SIGSTOP, ...),
                    a stopping signal                           seized tasks only
EVENT               stopped, another event (status >> 16)      fork, clone, exec, exit...
SIGNAL              stopped, no event                          signal-delivery stop (also
                                                               the SIGTRAP after a step)
EXITED / KILLED     WIFEXITED / WIFSIGNALED                    the task is gone
==================  ========================================  ==========================

Waits name one pid and pass ``__WALL``: never ``waitpid(-1)``, because pyroute2 and other
libraries fork helper children of their own that we must not reap (spike §6).
"""

from __future__ import annotations

import enum
import os
import signal
from dataclasses import dataclass

from pycriu_restore.linux.errors import TaskGone, from_os_error
from pycriu_restore.linux.ptrace import PTRACE_EVENT_STOP

# <linux/wait.h>: wait for any child, clone or not (needed for threads and seized tasks).
WALL = 0x40000000

# The stop signal of a syscall-stop when PTRACE_O_TRACESYSGOOD is set.
SYSCALL_STOP_SIG = signal.SIGTRAP | 0x80

# Signals whose default action is to stop the task (signal(7)).
STOPPING_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


class StopKind(enum.Enum):
    """What a waitpid status says happened to the tracee (see the module table)."""

    SYSCALL = "syscall stop"
    EVENT_STOP = "PTRACE_EVENT_STOP"
    GROUP = "group stop"
    EVENT = "ptrace event stop"
    SIGNAL = "signal-delivery stop"
    EXITED = "exit"
    KILLED = "death by signal"


def _signame(sig: int) -> str:
    """``SIGSEGV`` for 11; ``signal 99`` for numbers Python does not name."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


@dataclass(frozen=True)
class Stop:
    """One waitpid report about a tracee.

    ``signal``: the stop signal (SIGTRAP for steps and EVENT_STOP, the stopping signal for a
    group stop, the pending signal for a signal-delivery stop) or the killing signal;
    ``event``: PTRACE_EVENT_* for EVENT/EVENT_STOP/GROUP; ``exit_code`` for EXITED.
    """

    kind: StopKind
    status: int
    signal: int = 0
    event: int = 0
    exit_code: int | None = None

    @property
    def alive(self) -> bool:
        """False once the task exited or was killed (nothing more can be asked of it)."""
        return self.kind not in (StopKind.EXITED, StopKind.KILLED)

    def describe(self) -> str:
        """Say what happened in words: ``signal-delivery stop (SIGSEGV)``, ``exit (code 3)``."""
        if self.kind is StopKind.EXITED:
            return f"exit (code {self.exit_code})"
        if self.kind is StopKind.SYSCALL:
            return "syscall stop"
        if self.kind is StopKind.EVENT:
            return f"ptrace event stop (event {self.event})"
        return f"{self.kind.value} ({_signame(self.signal)})"


def decode(status: int) -> Stop:
    """Turn a raw waitpid status into a :class:`Stop` (the table in the module docstring)."""
    if os.WIFEXITED(status):
        return Stop(StopKind.EXITED, status, exit_code=os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        return Stop(StopKind.KILLED, status, signal=os.WTERMSIG(status))
    if not os.WIFSTOPPED(status):
        # WIFCONTINUED needs WCONTINUED, which we never pass.
        raise AssertionError(f"decode: waitpid status {status:#x} is no exit, kill or stop")
    sig = os.WSTOPSIG(status)
    event = (status >> 16) & 0xFF
    if sig == SYSCALL_STOP_SIG:
        return Stop(StopKind.SYSCALL, status, signal=signal.SIGTRAP)
    if event == PTRACE_EVENT_STOP:
        kind = StopKind.GROUP if sig in STOPPING_SIGNALS else StopKind.EVENT_STOP
        return Stop(kind, status, signal=sig, event=event)
    if event:
        return Stop(StopKind.EVENT, status, signal=sig, event=event)
    return Stop(StopKind.SIGNAL, status, signal=sig)


def wait_for(pid: int, *, nohang: bool = False) -> Stop | None:
    """Wait for the next report about ``pid`` (a tracee or child of ours) and decode it.

    Returns ``None`` only with ``nohang`` when nothing is pending. Raises ``TaskGone`` if
    ``pid`` is not ours to wait for (ECHILD: already reaped, or never our tracee).
    """
    options = WALL | (os.WNOHANG if nohang else 0)
    try:
        got, status = os.waitpid(pid, options)   # EINTR is retried by Python (PEP 475)
    except ChildProcessError as err:
        raise TaskGone(pid, "waitpid", "ECHILD (already reaped, or not our tracee)") from err
    except OSError as err:
        raise from_os_error(err, "waitpid", pid) from err
    if got == 0:
        return None
    return decode(status)
