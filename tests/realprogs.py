"""Real programs from Debian packages, checkpointed by upstream CRIU 4.2 during the test run.

Programs nobody on this project wrote are the best test of a restore: they hold what real
servers hold (epoll sets, listening and established TCP sockets, eventfds, named unix
sockets, ptys, thread pools), in the combinations their authors chose. A test here

 1. starts the program at a fixed pid, in its own session, from its own directory under
    /var/tmp (not pytest's tmp_path: the images name files by path, and pytest prunes old
    base directories when another session starts),
 2. gives it state through its own protocol (a key, a request),
 3. dumps it with upstream CRIU (``criu dump``, which kills it),
 4. restores it with pycrestore, talks to it again and checks the state survived,
 5. kills every process of the tree by pid and checks nothing is left.

The pids are fixed (written to /proc/sys/kernel/ns_last_pid before the fork, as
../shared/fixtures/criu-4.2/src/mkpack.py does), above 32768 so that they do not collide
with the fixture packs; pid_max is raised for the duration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ensure_criu, kill_and_wait, kill_session, pid_max_at_least, wait_gone

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
PID_MAX_WANTED = 65536


@dataclass(frozen=True)
class Dumped:
    """A program dumped by CRIU: its images, its working directory and its process tree."""

    name: str
    images: Path
    workdir: Path
    pids: tuple[int, ...]  # every process of the tree, root first
    notes: dict[str, int] = dataclasses.field(default_factory=dict)  # what a test noted at dump


# A shell job on a terminal, in a few lines of Python: a session leader whose controlling
# terminal is its stdin (a pty slave the test holds) starts the program as a job in a
# process group of its own, in the foreground, at the pid asked for, and waits for it.
# argv: PID PROGRAM ARGS...; exit 3 if another process took the pid.
_SHELL = """
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
pid = int(sys.argv[1])
open("/proc/sys/kernel/ns_last_pid", "w").write(str(pid - 1))
child = os.fork()
if child == 0:
    os.setpgid(0, 0)
    os.execv(sys.argv[2], sys.argv[2:])
os.setpgid(child, child)
os.tcsetpgrp(0, child)
if child != pid:
    os.kill(child, 9)
    os.waitpid(child, 0)
    sys.exit(3)
os.waitpid(child, 0)
"""

# The caller of a --shell-job restore, as a user's shell would run it: a session leader
# whose controlling terminal is its stdin runs pycrestore (argv: RCFILE ARGS...) on that
# terminal, writes its exit status to RCFILE, and stays: the session and the terminal
# live on while the restored job runs in it (its leader's exit would hang the terminal up).
_CALLER = """
import fcntl, os, signal, subprocess, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
rc = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1] + ".out", "w"), stderr=open(sys.argv[1] + ".err", "w")).returncode
open(sys.argv[1], "w").write(str(rc))
while True:
    signal.pause()
"""


def require_program(*paths: str) -> None:
    """Skip, saying which, when the Debian package of a program is not installed here (the
    README's test command installs them; a user's bare machine may not have them)."""
    for path in paths:
        if shutil.which(path) is None and not Path(path).exists():
            pytest.skip(f"{path} is not installed (apt-get install the package that has it)")


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant, from /proc (proc(5): task/TID/children)."""
    out, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        out.append(pid)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    queue.extend(int(x) for x in f.read().split())
    return out


def kill_all(pids: Sequence[int]) -> None:
    """SIGKILL every pid at once (a child killed alone would stay a zombie), then wait."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        kill_and_wait(pid)


def launch_at(pid: int, argv: Sequence[str], workdir: Path, env: dict[str, str] | None = None,
              terminal: int | None = None) -> subprocess.Popen:
    """Start ``argv`` as process ``pid`` (a new session leader, stdin /dev/null, output to
    files in ``workdir``), or fail after a few tries if another process takes the pid.

    With ``terminal`` (a pty slave fd) the program is instead a job of a shell on that
    terminal (``_SHELL``): stdin, stdout and stderr are the terminal, its session and
    terminal are outside its tree, so CRIU dumps it with ``--shell-job``. The Popen is the
    shell's then; the program is its child ``pid``.
    """
    env = env or {"PATH": "/usr/sbin:/usr/bin:/bin", "LC_ALL": "C"}
    for _attempt in range(5):
        if os.path.exists(f"/proc/{pid}"):
            raise AssertionError(f"pid {pid} is in use: cannot start {argv[0]} there")
        if terminal is not None:
            proc = subprocess.Popen([sys.executable, "-c", _SHELL, str(pid), shutil.which(argv[0]) or argv[0],
                                     *argv[1:]], cwd=workdir, env=env, stdin=terminal, stdout=terminal,
                                    stderr=terminal, close_fds=True, start_new_session=True)
            with contextlib.suppress(AssertionError):
                wait_for(f"{argv[0]} as pid {pid}", lambda: proc.poll() is not None or _child_of(pid, proc.pid))
            if proc.poll() is None:
                return proc
            proc.wait()
            continue
        with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
            NS_LAST_PID.write_text(str(pid - 1))
            proc = subprocess.Popen(list(argv), cwd=workdir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    close_fds=True, start_new_session=True)
        if proc.pid == pid:
            return proc
        kill_session(proc.pid)
        proc.wait()
    raise AssertionError(f"could not start {argv[0]} as pid {pid} in 5 tries")


def _child_of(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == parent
    except (OSError, IndexError, ValueError):
        return False


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def dumped_program(name: str, pid: int, argv: Sequence[str], ready: Callable[[Path], bool],
                   prepare: Callable[[Path], None] | None = None, setup: Callable[[Path], None] | None = None,
                   dump_options: Sequence[str] = (), env: dict[str, str] | None = None,
                   terminal: int | None = None) -> Iterator[Dumped]:
    """Run ``argv`` as ``pid``, wait until ``ready(workdir)``, let ``prepare(workdir)`` give it state,
    dump it with CRIU; yield the images; remove everything afterwards.

    ``setup(workdir)`` writes config files before the start. ``terminal`` (a pty slave fd)
    runs the program as a shell job on that terminal (launch_at) and dumps it with
    ``--shell-job``. Needs root and upstream CRIU.
    """
    if terminal is not None:
        dump_options = (*dump_options, "--shell-job")
    if os.geteuid() != 0:
        pytest.skip("needs root (fixed pids, criu dump)")
    criu = ensure_criu()
    root = Path(tempfile.mkdtemp(prefix=f"pycrestore-{name}-", dir="/var/tmp"))
    workdir, images = root / "run", root / "images"
    workdir.mkdir()
    images.mkdir()
    with pid_max_at_least(PID_MAX_WANTED):
        try:
            if setup is not None:
                setup(workdir)
            proc = launch_at(pid, argv, workdir, env, terminal=terminal)
            try:
                wait_for(f"{name} to be ready", lambda: proc.poll() is None and ready(workdir))
                if prepare is not None:
                    prepare(workdir)
                pids = tuple(tree_pids(pid))
                dump = subprocess.run([str(criu), "dump", "-t", str(pid), "-D", str(images), "-v4",
                                       "-o", str(root / "dump.log"), *dump_options],
                                      capture_output=True, text=True, timeout=120)
                assert dump.returncode == 0, f"criu dump of {name} failed, see {root / 'dump.log'}: {dump.stderr}"
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    kill_all(tree_pids(pid))
                    proc.wait()
                # What the dump did not take: a child's child reparented to init keeps the
                # session id, so pid ``pid`` stays in use and cannot be restored.
                kill_session(pid)
            for p in pids:
                assert wait_gone(p), f"pid {p} still exists after the dump"
            yield Dumped(name=name, images=images, workdir=workdir, pids=pids)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _any_task_with(pids: Sequence[int]) -> list[str]:
    """Every task (thread included, in any pid namespace) whose pid or tid is one of ``pids``."""
    found = []
    for status in Path("/proc").glob("[0-9]*/task/[0-9]*/status"):
        with contextlib.suppress(OSError):
            text = status.read_text()
            nspid = [int(x) for x in next(l for l in text.splitlines() if l.startswith("NSpid:")).split()[1:]]
            if set(nspid) & set(pids):
                found.append(f"{status.parent} NSpid {nspid} {text.splitlines()[0]}")
    return found


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError as err:
        return f"gone ({err.strerror})"
    return f"{cmdline.strip()!r} state {stat.rsplit(')', 1)[1].split()[0]} ppid {stat.rsplit(')', 1)[1].split()[1]}"


@contextlib.contextmanager
def restored(dumped: Dumped, *options: str, terminal: int | None = None) -> Iterator[subprocess.CompletedProcess]:
    """Restore ``dumped`` with pycrestore (``-d``); yield the result; kill the tree after.

    With ``terminal`` (a pty slave fd) pycrestore runs as a user's shell would run it for
    ``--shell-job``: on that terminal, in a session it is the controlling terminal of
    (``_CALLER``, which stays until the test ends and is killed with the tree).
    """
    command = [sys.executable, "-m", "pycriu_restore", "-v", "restore", "-D", str(dumped.images), "-d", *options]
    caller = None
    with pid_max_at_least(PID_MAX_WANTED):
        try:
            if terminal is None:
                result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            else:
                rcfile = Path(tempfile.mkdtemp(prefix="pycrestore-caller-", dir="/var/tmp")) / "rc"
                caller = subprocess.Popen([sys.executable, "-c", _CALLER, str(rcfile), *command], cwd="/",
                                          stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True,
                                          start_new_session=True)
                wait_for("pycrestore on the caller's terminal", lambda: rcfile.exists() and rcfile.read_text() != "",
                         timeout_s=120)
                result = subprocess.CompletedProcess(command, int(rcfile.read_text()),
                                                     Path(f"{rcfile}.out").read_text(), Path(f"{rcfile}.err").read_text())
                shutil.rmtree(rcfile.parent, ignore_errors=True)
            yield result
        finally:
            kill_all(sorted(set(tree_pids(dumped.pids[0]))) if os.path.exists(f"/proc/{dumped.pids[0]}") else [])
            kill_session(dumped.pids[0])
            if caller is not None:
                kill_all([caller.pid])
                caller.wait()
            for pid in dumped.pids:
                assert wait_gone(pid), f"pid {pid} of {dumped.name} still exists after the test"


def link_exists(name: str) -> bool:
    """Whether a network link of that name exists in our network namespace."""
    return Path(f"/sys/class/net/{name}").exists()


def wait_link_gone(name: str, timeout_s: float = 10.0) -> None:
    """Wait until the link ``name`` is gone (a veth goes with its namespace, which the kernel
    tears down asynchronously after its last task and fd)."""
    wait_for(f"link {name} to disappear", lambda: not link_exists(name), timeout_s)
