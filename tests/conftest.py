"""Shared test set-up: where the real CRIU fixture packs live, and the kernel's pid_max.

The packs are ../shared/fixtures/criu-4.2 (AMD-dumped) and ../shared/fixtures/criu-4.2-more
(Intel-dumped, pids 40100-40907) beside the repository (CI lays shared/ there too);
PYCRESTORE_FIXTURES and PYCRESTORE_FIXTURES_MORE override them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = Path(os.environ.get("PYCRESTORE_FIXTURES", SHARED / "fixtures" / "criu-4.2"))
FIXTURES_MORE = Path(os.environ.get("PYCRESTORE_FIXTURES_MORE", SHARED / "fixtures" / "criu-4.2-more"))
PID_MAX = Path("/proc/sys/kernel/pid_max")

# A fresh clone has no ../shared beside it: tests that read a pack are skipped, saying so.
FIXTURES_REASON = f"{FIXTURES} not found: the criu-4.2 fixture pack is not beside the repository (PYCRESTORE_FIXTURES)"
FIXTURES_MORE_REASON = (f"{FIXTURES_MORE} not found: the criu-4.2-more fixture pack is not beside the "
                        "repository (PYCRESTORE_FIXTURES_MORE)")
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=FIXTURES_REASON)
needs_fixtures_more = pytest.mark.skipif(not FIXTURES_MORE.is_dir(), reason=FIXTURES_MORE_REASON)


def skip_module_without_fixtures(*packs: Path) -> None:
    """Skip the calling test module, with the reason, when a pack it reads is absent.

    For modules that read a pack while being imported (parametrize lists, module constants):
    call it right after importing from conftest, before those reads. Other modules use
    ``pytestmark = needs_fixtures``.
    """
    for pack in packs or (FIXTURES,):
        if not pack.is_dir():
            pytest.skip(FIXTURES_MORE_REASON if pack is FIXTURES_MORE else FIXTURES_REASON,
                        allow_module_level=True)

# The XSAVE features of the CPU that dumped criu-4.2 (an AMD EPYC: x87, SSE, AVX, PKRU; its
# README). On a CPU with AVX-512 the default CPU policy refuses these checkpoints (glibc's
# lazy-binding save area was sized without AVX-512: restore/cpucap.py), and on one without
# PKU it refuses fpu (which set PKRU itself). test_restore_fixtures.py checks those refusals;
# tests about something else restore the pack with PACK_CPU_CAP.
AMD_PACK_XFEATURES = 0x207
AVX512_XFEATURES = 0b111 << 5


def _pack_cpu_cap() -> str:
    from pycriu_restore.blob.kernel_frame import fresh_task_frame

    return "none" if fresh_task_frame().xfeatures & AVX512_XFEATURES & ~AMD_PACK_XFEATURES else "fpu"


PACK_CPU_CAP = _pack_cpu_cap()


@contextlib.contextmanager
def pid_max_at_least(wanted: int) -> Iterator[None]:
    """Raise kernel.pid_max to ``wanted`` for the block if it is lower (criu-4.2-more's pids
    are above the default 32768), and put the old value back after."""
    old = int(PID_MAX.read_text())
    if old < wanted:
        PID_MAX.write_text(str(wanted))
    try:
        yield
    finally:
        if old < wanted:
            PID_MAX.write_text(str(old))


# Upstream CRIU 4.2, installed from ../shared/tools by its install.sh when a test needs it.
CRIU = Path("/usr/local/sbin/criu")
CRIU_INSTALL = SHARED / "tools" / "criu-4.2" / "install.sh"


def ensure_criu() -> Path:
    """Path of upstream CRIU, installing it from ../shared/tools first if needed; skips the
    calling test, with that reason, where neither exists (a bare clone on a user's machine)."""
    if not CRIU.exists():
        if not CRIU_INSTALL.exists():
            pytest.skip(f"upstream CRIU is not installed ({CRIU}) and {CRIU_INSTALL} is absent")
        subprocess.run([str(CRIU_INSTALL)], check=True, capture_output=True, timeout=600)
    return CRIU


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    """Wait until /proc/PID is gone; False if it is still there after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def session_members(sid: int) -> list[int]:
    """Every process whose session id is ``sid`` (proc(5): field 6 of /proc/PID/stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            found.append(int(stat.parent.name))
    return found


def kill_session(sid: int, timeout_s: float = 10.0) -> None:
    """Kill every process of session ``sid``, by pid, and wait until each is gone.

    A program started in a session of its own can leave processes that a kill of its tree
    misses (a child reparented to init, a job put in the background): they keep the session
    id, and so the session leader's pid number, in use (clone3 with that pid then fails with
    EEXIST although /proc/PID is gone). Tests that start programs at fixed pids end with this."""
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in session_members(sid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    # Until reaped, not only dead: a zombie still holds its session id (init reaps orphans,
    # which takes up to a second or two here).
    deadline = time.monotonic() + timeout_s
    while (left := session_members(sid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"processes {left} of session {sid} are still there"


def kill_and_wait(pid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL ``pid`` (never by name), reap it if it is our child, and check /proc/PID is
    gone (reaped by us, or by its new parent)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    assert wait_gone(pid, timeout_s), f"pid {pid} still exists after SIGKILL"


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
