"""SIGINT, SIGTERM and SIGHUP: how the pycrestore command ends when it is asked to stop.

The command (``cli.py``, ``python -m pycriu_restore``) calls :func:`handlers` first thing;
from then on one of these signals raises :class:`Interrupted` in the main thread (Python
runs signal handlers there, whichever thread the kernel picked). ``Interrupted`` is a
``BaseException``, so it passes every ``except Exception`` and reaches the orchestrator's
rollback (restore/orchestrator.py: every task killed and reaped, the network lock and the
plugins released), and then the CLI, which prints one line and exits with 128 + the
signal's number (130, 143, 129), as a shell reports a command killed by that signal.

Three rules make that hold wherever the signal lands:

- **Only the first signal raises.** Later ones (a second Ctrl-C while the rollback runs)
  are noted and dropped, so the rollback is never cut short; SIGKILL is the way to be
  quicker, and leaves nothing either (tasks are seized with PTRACE_O_EXITKILL; a task not
  yet seized sees its go pipe end, restore/task.py).
- **Cleanup runs deferred.** Inside :func:`deferred` a signal is only noted; it is raised
  when the outermost deferred block ends. Rollback and release code uses it.
- **A committed restore is not undone.** Once the orchestrator has detached the last
  task (:func:`commit`), a signal is only noted: the tree runs, and the command says so
  and exits with 128 + signo. Before that point the signal rolls everything back.
- **An ignored signal stays ignored.** A signal whose disposition is SIG_IGN when the
  command starts (``nohup``, a shell's background job for SIGINT) is left alone: that was
  the caller's choice. CPython leaves an inherited ignored SIGINT alone too.

A library caller (``pycriu_restore.restore()``) keeps its own signal handling: nothing here
is installed unless the command line asks for it. ``deferred`` is harmless without it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

# The signals that stop the command, and how it then exits (128 + signo, as sh(1) reports).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_code(signo: int) -> int:
    """The command's exit status after ``signo``: 130 for SIGINT, 143 SIGTERM, 129 SIGHUP."""
    return 128 + signo


class Interrupted(BaseException):
    """A stop signal arrived; raised once, in the main thread, where the work was."""

    def __init__(self, signo: int) -> None:
        self.signo = signo
        super().__init__(f"interrupted by {signal.Signals(signo).name}")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signo)


# main thread only (signal handlers run there):
_received: int = 0       # the first stop signal seen; 0: none
_raised = False          # Interrupted was raised for it
_deferring = 0           # depth of deferred() blocks
_committed = False       # the restore is done: signals are noted, never raised


def _on_signal(signo: int, _frame: FrameType | None) -> None:
    global _received, _raised
    if _received:
        return  # the first one is being handled: let the rollback finish
    _received = signo
    if not _deferring and not _committed:
        _raised = True
        raise Interrupted(signo)


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """Install the handler for each stop signal not ignored at start; put the old ones back after.

    Call as early as the program can (before its heavy imports). Nested use is fine: the
    inner one finds our handler and keeps it.
    """
    global _committed
    _committed = False
    old_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable
    old = {}
    for signo in SIGNALS:
        current = signal.getsignal(signo)
        if current is signal.SIG_IGN:
            continue  # the caller's choice (nohup, a background job)
        old[signo] = current
        signal.signal(signo, _on_signal)
    try:
        yield
    finally:
        for signo, handler in old.items():
            signal.signal(signo, handler)
        sys.unraisablehook = old_hook


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """Python runs a handler between any two bytecodes, also in a weakref callback or a
    ``__del__``, where an exception cannot propagate and is only printed. Ours is not lost:
    it is sent again, and raised at the next point where it can propagate."""
    global _received, _raised
    if isinstance(unraisable.exc_value, Interrupted):
        signo = unraisable.exc_value.signo
        _received, _raised = 0, False
        try:
            os.kill(os.getpid(), signo)
        except Interrupted:
            # Python ran the handler before this hook returned, where it cannot propagate
            # either: it stays noted (_received), not raised, and the command acts on it at
            # its next check (the end of a deferred block, or the commit).
            _raised = False
        return
    sys.__unraisablehook__(unraisable)


# Set by the ``pycrestore`` launcher (launcher/launcher.c): the stop signals it blocked
# so that none could arrive before the handlers above exist, e.g. "2,15,1".
HELD_ENV = "PYCRESTORE_HELD_SIGNALS"
_launched = False  # install() found HELD_ENV: started as the ``pycrestore`` command
_installed: contextlib.AbstractContextManager[None] | None = None  # install()'s handlers()


def install() -> None:
    """:func:`handlers` for the rest of the process (``python -m pycriu_restore``), then
    unblock the signals the launcher held: one that arrived during start-up raises
    :class:`Interrupted` here, at the caller's first line."""
    global _launched, _installed
    # Keep the context manager: a generator-based one dropped here would be closed by the
    # garbage collector, and its ``finally`` would put the old handlers straight back.
    _installed = handlers()
    _installed.__enter__()
    _launched = HELD_ENV in os.environ
    held = _held_by_launcher()
    if held:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def launched() -> bool:
    """Whether this process was started by the ``pycrestore`` launcher (known after install())."""
    return _launched


def _held_by_launcher() -> set[int]:
    """The signal numbers in HELD_ENV (removed from the environment: the command's own
    children, such as criu in ``pycrestore demo``, start with the caller's mask and
    must not read it). Only stop signals are accepted; anything else is ignored."""
    text = os.environ.pop(HELD_ENV, "")
    held = set()
    for part in text.split(","):
        if part.isdigit() and int(part) in SIGNALS:
            held.add(int(part))
    return held


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Note a stop signal that arrives inside the block; raise it when the outermost block ends.

    For code that must run to its end once begun: the rollback, releasing a lock. If the
    block itself raises, that exception goes on (the signal stays noted, not raised).
    """
    global _deferring, _raised
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _received and not _raised and not _committed:
        _raised = True
        raise Interrupted(_received)


def commit() -> None:
    """The restore is done (every task detached): from now on a stop signal is only noted."""
    global _committed
    _committed = True


def reopen() -> None:
    """After :func:`commit`: let a stop signal raise again (the CLI waiting for the tree);
    raises at once for one noted meanwhile."""
    global _committed, _raised
    _committed = False
    if _received and not _raised:
        _raised = True
        raise Interrupted(_received)


def received() -> int:
    """The stop signal seen so far (raised or not), or 0."""
    return _received
