"""Shared test set-up: where the real CRIU fixture pack lives.

The pack is ../shared/fixtures/criu-4.2 beside the repository (CI lays shared/ there too);
PYCRESTORE_FIXTURES overrides it. A missing pack fails the tests that need it: never a skip.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("PYCRESTORE_FIXTURES", REPO.parent / "shared" / "fixtures" / "criu-4.2"))


@contextlib.contextmanager
def seized_fork() -> Iterator[int]:
    """A forked copy of this process, seized and interrupted (in a ptrace-stop) while the
    block runs; killed and reaped by pid afterwards."""
    from pycriu_restore.linux import ptrace

    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)
    try:
        os.waitpid(pid, os.WUNTRACED)
        ptrace.seize(pid)
        ptrace.interrupt(pid)
        os.waitpid(pid, 0)
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
