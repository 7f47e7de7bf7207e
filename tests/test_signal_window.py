"""Signals that arrive during the last steps of a restore must not break it (issue 8).

After the blob's rt_sigreturn the application's signal mask is live, while pycrestore still
steps the task through the munmap of the bootstrap region. tests/c/sigwindow.c keeps
signals in flight all the time: a 1 ms ITIMER_REAL with its handler on an alternate stack,
blocked signals pending in the shared queue, in the main thread's and in a second thread's
own queue. One checkpoint made with upstream CRIU 4.2 is restored 50 times in a row; every
restore must succeed, the task must go on (alarms and the thread's ticks grow, no handler
ran too early or off its stack), and its pending signals must come out exactly once, with
their values, when it drains them. Each restored task is killed by pid and must be gone.

The checkpoint is made once per session, as ../shared/fixtures/criu-4.2/src/mkpack.py makes
the fixture packs: fixed pid (ns_last_pid), new session, stdin /dev/null, stdout/stderr to
files, no other fds. Needs root, gcc and CRIU 4.2 (installed from ../shared/tools/criu-4.2
when missing; skipped with the reason when ../shared is absent).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CRIU, REPO, ensure_criu, kill_and_wait, wait_gone
from pycriu_restore.errors import PycrestoreError
from pycriu_restore.restore.orchestrator import restore

SOURCE = REPO / "tests" / "c" / "sigwindow.c"

# The leader's pid and its thread's tid: beside the criu-4.2 pack's 31100-31800, below the
# default pid_max (32768), so no sysctl is needed.
PID = 31950
TIDS = (PID, PID + 1)
RESTORES = 50

# glibc on an AVX-512 machine would pick AVX-512 string functions at start (and keep them in
# the process's state); masked as the fixture packs were (../shared/fixtures/criu-4.2-more/
# README.md, "CPU portability"). The workload is static as well: all of its code, libc
# included, lies between __executable_start and etext, which its SIGALRM handler uses to
# tell a signal delivered while the restorer's code still ran.
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C",
       "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,"
                         "-AVX512ER,-AVX512PF,-XSAVEC"}

SIGRTMIN = signal.SIGRTMIN  # 34 with glibc
# What the workload queued before the checkpoint, per signal, in queue order (sigwindow.c).
EXPECTED_DRAIN = {signal.SIGUSR2: [0x5EED], SIGRTMIN + 1: [1, 2, 3], SIGRTMIN + 2: [11, 12]}
EXPECTED_PENDING_MASK = sum(1 << (sig - 1) for sig in EXPECTED_DRAIN)
STATUS = re.compile(r"S alarms=(\d+) bad=(\d+) ticks=(\d+) pend=([0-9a-f]+)")


@dataclass(frozen=True)
class Checkpoint:
    images: Path
    log: Path
    alarms: int  # the last count the workload logged before the dump


def _tids(pid: int) -> tuple[int, ...]:
    try:
        return tuple(sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")))
    except FileNotFoundError:
        return ()


def _launch(workdir: Path) -> subprocess.Popen:
    """Start the workload as pid PID with its thread as PID+1 (mkpack.py's way), or fail."""
    for attempt in range(5):
        for tid in TIDS:
            assert wait_gone(tid, 5.0), f"pid {tid}, which the workload needs, is in use"
        out, err = open(workdir / "stdout", "wb"), open(workdir / "stderr", "wb")
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(PID - 1))
        proc = subprocess.Popen([str(workdir / "sigwindow"), str(workdir / "log")], cwd=workdir, env=ENV,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                                start_new_session=True)
        out.close()
        err.close()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _tids(proc.pid) != TIDS and proc.poll() is None:
            time.sleep(0.01)
        if _tids(proc.pid) == TIDS:
            return proc
        # another process took one of the pids between ns_last_pid and our fork: again
        proc.kill()
        proc.wait()
    raise AssertionError(f"could not start the workload as pids {TIDS} in 5 tries")


def _status_lines(log: Path, offset: int) -> list[tuple[int, int, int, int]]:
    text = log.read_bytes()[offset:].decode()
    return [tuple(int(g, 16) if i == 3 else int(g) for i, g in enumerate(m.groups()))
            for m in STATUS.finditer(text)]


@pytest.fixture(scope="session")
def checkpoint() -> Iterator[Checkpoint]:
    """Build tests/c/sigwindow.c, run it as pid PID for a moment, dump it with CRIU 4.2.

    In a directory of its own, not pytest's tmp_path: the images name the binary and the
    log by path, and pytest prunes old base directories when other sessions start.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root (fixed pids, criu dump, ptrace)")
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build tests/c/sigwindow.c")
    ensure_criu()
    root = Path(tempfile.mkdtemp(prefix="pycrestore-sigwindow-", dir="/var/tmp"))
    try:
        yield _dump(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _dump(root: Path) -> Checkpoint:
    workdir, images = root / "run", root / "images"
    workdir.mkdir()
    images.mkdir()
    subprocess.run(["gcc", "-O2", "-Wall", "-static", "-mgeneral-regs-only", "-pthread",
                    "-o", str(workdir / "sigwindow"), str(SOURCE)], check=True, capture_output=True)
    proc = _launch(workdir)
    try:
        time.sleep(0.5)
        dump = subprocess.run([str(CRIU), "dump", "-t", str(PID), "-D", str(images), "-v4",
                               "-o", str(root / "dump.log")], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0, f"criu dump failed, see {root / 'dump.log'}: {dump.stderr}"
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for tid in TIDS:
        assert wait_gone(tid), f"pid {tid} still exists after the dump"
    before = _status_lines(workdir / "log", 0)
    assert before and before[-1][1] == 0, f"the workload misbehaved before the dump: {before[-1:]}"
    return Checkpoint(images=images, log=workdir / "log", alarms=before[-1][0])


def _check_restored(cp: Checkpoint, pid: int, offset: int) -> None:
    """The restored task goes on, then drains exactly the signals it had pending."""
    assert pid == PID, f"restored as pid {pid}, dumped as {PID}"
    assert _tids(pid) == TIDS, f"threads {_tids(pid)}, dumped {TIDS}"
    deadline = time.monotonic() + 5.0
    while len(lines := _status_lines(cp.log, offset)) < 2:
        assert time.monotonic() < deadline, f"the task logged {lines} within 5 s of its restore"
        time.sleep(0.02)
    (a1, bad1, t1, pend1), (a2, bad2, t2, pend2) = lines[:2]
    assert cp.alarms < a1 < a2, f"alarms did not go on from {cp.alarms}: {a1}, {a2}"
    assert bad1 == bad2 == 0, f"{bad2} SIGALRMs ran off the alternate stack or interrupted foreign code"
    assert t1 < t2, f"the second thread stopped ticking ({t1}, {t2})"
    assert pend1 & EXPECTED_PENDING_MASK == EXPECTED_PENDING_MASK, f"pending {pend1:#x}, expected {EXPECTED_PENDING_MASK:#x}"

    drain_from = cp.log.stat().st_size
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 5.0
    while not re.search(r"^E$", text := cp.log.read_bytes()[drain_from:].decode(), re.M):
        assert time.monotonic() < deadline, f"no drain report within 5 s of SIGHUP: {text!r}"
        time.sleep(0.02)
    drained: dict[int, list[int]] = {}
    for sig, val in re.findall(r"^D sig=(\d+) val=(\d+)$", text, re.M):
        drained.setdefault(int(sig), []).append(int(val))
    assert drained == EXPECTED_DRAIN, f"drained {drained}, expected {EXPECTED_DRAIN}"
    assert "W n=1 val=21" in text, f"the second thread's pending signal: {text!r}"


def test_restore_with_signals_in_flight_50_times(checkpoint: Checkpoint) -> None:
    failures: list[str] = []
    for i in range(RESTORES):
        offset = checkpoint.log.stat().st_size
        try:
            restored = restore(str(checkpoint.images))
        except PycrestoreError as err:
            failures.append(f"restore {i}: {err}")
            continue
        try:
            _check_restored(checkpoint, restored.root_pid, offset)
        except AssertionError as err:
            failures.append(f"restore {i}: check: {err}")
        finally:
            kill_and_wait(restored.root_pid)
        for tid in TIDS:
            assert wait_gone(tid), f"pid {tid} still exists after restore {i}"
    assert not failures, f"{len(failures)} of {RESTORES} restores failed:\n" + "\n".join(failures)
