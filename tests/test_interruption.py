"""SIGINT, SIGTERM, SIGHUP and SIGKILL at random moments of a real restore (pycriu_restore/interruption.py).

Each trial restores our own two-task checkpoint (test_fault_injection.py makes it: pids
47000-47001) and sends the signal after a random delay covering the whole command, from
interpreter start to exit. Every trial must end in one of:

- exit 0: the signal came after pycrestore finished; the tree runs, and we end it;
- exit 128 + signo, "... after the restore: task N keeps running": the signal came after
  the last task was detached (the restore is committed); the tree runs, and we end it;
- exit 128 + signo with exactly one line on stderr ("pycrestore: interrupted by SIGINT"),
  and every task gone (the rollback);
- killed by the signal itself, with no traceback: in the launcher's first instructions,
  before it blocks the stop signals, or as CPython finalizes after the restore.

The command is the ``pycrestore`` launcher (launcher/launcher.c), as a user runs it: it
holds the signals while Python starts, so CPython's KeyboardInterrupt traceback is never
an allowed ending. ``python -m pycriu_restore`` keeps that start-up window (docs/reliability.md).

and in every case nothing of the run may be left: not the checkpoint's pids, and no process
carrying the run's marker in its environment. SIGKILL must leave nothing either
(PTRACE_O_EXITKILL for seized tasks; a task not yet seized sees its go pipe end).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import pid_max_at_least  # noqa: E402
from test_fault_injection import TREE_PIDS, _make_tree, _marked, _wait_gone  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The installed command (pip puts scripts beside the interpreter's own).
PYCRESTORE = Path(sysconfig.get_path("scripts")) / "pycrestore"
STARTUP_S = 0.15         # launcher + CPython init + site + the package's imports, loaded machine
MAX_DELAY_S = 0.7        # a restore of the tree takes ~0.45 s from exec to exit here
TRIALS = int(os.environ.get("PYCRESTORE_INTERRUPT_TRIALS", "8"))


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _restored_and_free(pid: int) -> bool:
    """The task runs the checkpointed program (sleep), traced by nobody: its restore completed."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return fields.get("Name") == "sleep" and fields.get("TracerPid") == "0" and not fields.get("State", "").startswith("Z")


@pytest.fixture(scope="module", autouse=True)
def launcher_installed():
    if not PYCRESTORE.is_file() or PYCRESTORE.read_bytes()[:4] != b"\x7fELF":
        pytest.fail(f"{PYCRESTORE} is not the pycrestore launcher: pip install -e . (README) installs it")


@pytest.fixture(scope="module")
def tree_images(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("interruption trials restore real processes: run as root")
    with pid_max_at_least(65536):
        images = tmp_path_factory.mktemp("interrupt") / "tree"
        _make_tree(images)
        yield images


def trial(images: Path, signo: int, delay_s: float, detached: bool = True, preexec=None) -> tuple[str, str]:
    """One restore signalled after ``delay_s``; returns (kind of ending, stderr). Asserts nothing is left."""
    token = uuid.uuid4().hex
    env = {**os.environ, "PYCRESTORE_FAULT_RUN": token}  # only a marker: no fault is armed
    cmd = [str(PYCRESTORE), "restore", "-D", str(images)] + (["-d"] if detached else [])
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=preexec)
    time.sleep(delay_s)
    try:
        proc.send_signal(signo)
    except ProcessLookupError:
        pass
    _, err = proc.communicate(timeout=60)
    try:
        return _judge(proc.returncode, err, signo, delay_s, detached, token)
    finally:  # whatever the verdict, the next trial starts from a clean machine
        _kill(TREE_PIDS)
        _wait_gone(TREE_PIDS)


def _judge(rc: int, err: str, signo: int, delay_s: float, detached: bool, token: str) -> tuple[str, str]:
    if rc == 0:
        kind = "finished"
        _kill(TREE_PIDS)
    elif rc == 128 + signo and len(err.splitlines()) == 1 and err.rstrip().endswith("keeps running"):
        kind = "after the restore"  # committed: the signal came once every task was detached
        assert all(_restored_and_free(pid) for pid in TREE_PIDS), err
        _kill(TREE_PIDS)
    elif rc == 128 + signo:
        kind = "interrupted"
        assert err.splitlines() == [f"pycrestore: interrupted by {signal.Signals(signo).name}"], err
    elif rc == -signo and "Traceback" not in err and not err.strip():
        # Before the handlers exist (CPython's start-up), or after pycrestore is done (CPython
        # resets the handlers as it finalizes): then the tree is restored, detached, and runs.
        kind = "killed by the signal"
        if all(_restored_and_free(pid) for pid in TREE_PIDS):
            kind = "killed by the signal after the restore"
            _kill(TREE_PIDS)
    else:
        raise AssertionError(f"{signal.Signals(signo).name} after {delay_s * 1000:.0f} ms: exit {rc}: {err}")
    left = _wait_gone(TREE_PIDS)
    marked = _marked(token)
    for pid in marked:
        os.kill(pid, signal.SIGKILL)
    assert not left and not marked, f"{signal.Signals(signo).name} after {delay_s * 1000:.0f} ms left {left} {marked}"
    return kind, err


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_at_random_moments(tree_images, signo):
    rng = random.Random(signo)
    kinds: dict[str, int] = {}
    for _ in range(TRIALS):
        kind, _ = trial(tree_images, signo, rng.uniform(0.0, MAX_DELAY_S))
        kinds[kind] = kinds.get(kind, 0) + 1
    print(signal.Signals(signo).name, kinds)


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
def test_signal_during_start_up(tree_images, signo):
    """Densely over the start-up (launcher, CPython, imports): one line or a silent death, never
    a traceback. Before the launcher, CPython's SIGINT window printed KeyboardInterrupt here."""
    kinds: dict[str, int] = {}
    for i in range(TRIALS * 2):
        kind, err = trial(tree_images, signo, STARTUP_S * i / (TRIALS * 2))
        assert "Traceback" not in err and "Fatal Python error" not in err, err
        kinds[kind] = kinds.get(kind, 0) + 1
    print(signal.Signals(signo).name, kinds)
    assert kinds.get("interrupted", 0) >= TRIALS, kinds  # most land where the handlers act


def test_launcher_hands_over_the_callers_mask():
    """The launcher's held signals are unblocked once the handlers exist, and the variable that
    names them does not reach the command's children: they start with the caller's mask."""
    probe = ("import os, signal\n"
             "from pycriu_restore import interruption\n"
             "os.environ['PYCRESTORE_HELD_SIGNALS'] = '2,15,1,9,x'\n"
             "signal.pthread_sigmask(signal.SIG_BLOCK, {2, 15, 1, 10})\n"
             "interruption.install()\n"
             "print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),"
             " 'PYCRESTORE_HELD_SIGNALS' in os.environ, interruption.launched())\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[10]", "False", "True"], out  # SIGUSR1 was the caller's; 9 and x ignored


def test_signal_during_the_restore_rolls_back(tree_images):
    """A SIGINT well inside the restore (after start-up, before the end) is a rollback, exit 130."""
    kind, err = trial(tree_images, signal.SIGINT, 0.25)
    assert kind in ("interrupted", "finished"), err


def test_inherited_ignored_sigint_stays_ignored(tree_images):
    """nohup / a background job: SIGINT ignored at start stays ignored; the restore completes."""
    kind, err = trial(tree_images, signal.SIGINT, 0.2, preexec=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert kind == "finished", err


def test_sigint_while_waiting_for_the_tree(tree_images):
    """Without -d, pycrestore waits for the root; a SIGINT then ends pycrestore, not the restored tree."""
    assert not _wait_gone(TREE_PIDS)
    token = uuid.uuid4().hex
    proc = subprocess.Popen([str(PYCRESTORE), "restore", "-D", str(tree_images)],
                            env={**os.environ, "PYCRESTORE_FAULT_RUN": token}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (Path(f"/proc/{TREE_PIDS[1]}/comm").exists()
                                                   and Path(f"/proc/{TREE_PIDS[1]}/comm").read_text().strip() == "sleep"):
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert err.splitlines() == [f"pycrestore: interrupted by SIGINT while waiting for task {TREE_PIDS[0]}, "
                                    "which keeps running"], err
        assert all(Path(f"/proc/{pid}").exists() for pid in TREE_PIDS)
    finally:
        for pid in TREE_PIDS:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()
    assert not _wait_gone(TREE_PIDS)
