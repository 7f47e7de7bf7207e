"""--inherit-fd: a caller's fd in place of a restored file (files/inherited.py).

What a container runtime does for a container without a terminal: the container's stdout
was a pipe to the runtime; at restore the runtime makes a new pipe and passes its write
end with ``--inherit-fd fd[N]:pipe:[INO]``, so the restored program's output reaches the
runtime again. Here a shell loop (pid 48300) prints ``tick N`` into a pipe we read, and
appends to a log file at fd 3; CRIU 4.2 dumps it. Restored with both inherited (a new pipe,
another log file), it must go on with ``tick N+1`` into our pipe and write to the new log,
not the old one. Without --inherit-fd the pipe is re-created with no reader, and the loop
dies of SIGPIPE on its next tick: the difference the option makes.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ensure_criu, kill_session, pid_max_at_least, wait_gone

PID = 48300
LOOP = 'i=0; exec 3>>"$LOG"; while :; do i=$((i+1)); echo "tick $i"; echo "log $i" >&3; sleep 0.05; done'
ROOT = Path(__file__).resolve().parent.parent


def _read_lines(fd: int, want: int, timeout_s: float = 10.0) -> list[str]:
    """At least ``want`` complete lines from ``fd`` (or what came before the timeout)."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while data.count(b"\n") < want and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode().splitlines()


def _pipe_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """The loop, dumped by CRIU; yields (images, old log path, last tick before the dump)."""
    if os.geteuid() != 0:
        pytest.fail("restores need root")
    criu = ensure_criu()
    work = tmp_path_factory.mktemp("inherit")
    log = work / "app.log"
    with pid_max_at_least(65536):
        r, w = os.pipe()
        try:
            for _ in range(5):
                Path("/proc/sys/kernel/ns_last_pid").write_text(str(PID - 1))
                proc = subprocess.Popen(["/bin/sh", "-c", LOOP], stdin=subprocess.DEVNULL, stdout=w,
                                        stderr=subprocess.DEVNULL, env={"LOG": str(log), "PATH": "/usr/bin:/bin"},
                                        start_new_session=True)
                if proc.pid == PID:
                    break
                kill_session(proc.pid)
            else:
                pytest.fail(f"could not start the loop at pid {PID}")
            os.close(w)
            before = _read_lines(r, 5)
            assert len(before) >= 5, before
            images = work / "images"
            images.mkdir()
            subprocess.run([str(criu), "dump", "-t", str(PID), "-D", str(images), "-o", "/dev/null"], check=True)
            proc.wait()
            kill_session(PID)
            # Everything the loop printed before the dump, to its end (the last writer is gone).
            tail = b""
            while chunk := os.read(r, 65536):
                tail += chunk
            lines = before + tail.decode().splitlines()
            last = int(lines[-1].split()[1]) if lines else None
            ino = _pipe_inode(r)
        finally:
            os.close(r)
        assert last is not None, "the loop printed nothing before the dump"
        yield images, log, last, ino


def _restore(images: Path, pidfile: Path, *extra: str, pass_fds=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-d", "-D", str(images),
                           "--pidfile", str(pidfile), *extra], capture_output=True, text=True, cwd=ROOT,
                          pass_fds=pass_fds, timeout=120)


def _end(pid: int) -> None:
    kill_session(pid)
    assert wait_gone(pid), f"task {pid} still there"


def test_inherited_pipe_and_log_take_the_files_place(dumped, tmp_path):
    images, old_log, last, ino = dumped
    new_log = tmp_path / "new.log"
    r, w = os.pipe()
    log_fd = os.open(new_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old_size = old_log.stat().st_size
    with pid_max_at_least(65536):
        try:
            res = _restore(images, tmp_path / "pid", f"--inherit-fd=fd[{w}]:pipe:[{ino}]",
                           f"--inherit-fd=fd[{log_fd}]:{str(old_log)[1:]}", pass_fds=(w, log_fd))
            os.close(w)
            os.close(log_fd)
            assert res.returncode == 0, res.stderr
            lines = _read_lines(r, 5)
            assert lines[:5] == [f"tick {n}" for n in range(last + 1, last + 6)], (last, lines)
            # fd 1 of the restored task is our pipe, fd 3 our new log; the old log got nothing more.
            assert os.readlink(f"/proc/{PID}/fd/1") == f"pipe:[{os.fstat(r).st_ino}]"
            assert os.readlink(f"/proc/{PID}/fd/3") == str(new_log)
            logged = new_log.read_text().splitlines()
            assert logged and logged[0] == f"log {last + 1}", logged[:3]
            assert old_log.stat().st_size == old_size
        finally:
            os.close(r)
            _end(PID)


def test_inherited_pipe_in_a_pid_namespace_and_through_the_api(dumped, tmp_path):
    """The same hand-over with --pid-ns (the root is cloned into a new namespace), from the
    Python API (pycriu_restore.restore with InheritFd)."""
    images, _, last, ino = dumped
    r, w = os.pipe()
    probe = ("import sys, pycriu_restore\n"
             "from pycriu_restore.api import InheritFd\n"
             f"res = pycriu_restore.restore({str(images)!r}, pid_ns=True, inherit_fd=[InheritFd({w}, 'pipe:[{ino}]')])\n"
             "print(res.init_pid)\n")
    with pid_max_at_least(65536):
        init = None
        try:
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, pass_fds=(w,),
                                 cwd=ROOT, timeout=120)
            os.close(w)
            assert out.returncode == 0, out.stderr
            init = int(out.stdout.split()[-1])
            lines = _read_lines(r, 3)
            assert lines[:3] == [f"tick {n}" for n in range(last + 1, last + 4)], (last, lines)
        finally:
            os.close(r)
            if init is not None:
                os.kill(init, signal.SIGKILL)  # the namespace's init: its end ends every task in it
                assert wait_gone(init)


def test_without_inherit_fd_the_pipe_has_no_reader(dumped, tmp_path):
    """The counterfactual: the same restore without the option succeeds, and the loop dies of
    SIGPIPE on its next write (its pipe's read end was outside the checkpoint)."""
    images, *_ = dumped
    with pid_max_at_least(65536):
        res = _restore(images, tmp_path / "pid")
        try:
            assert res.returncode == 0, res.stderr
            assert wait_gone(PID, 5.0), "the loop kept running without a reader"
        finally:
            _end(PID)


def test_unmatched_resource_is_named_and_fd_unused(dumped, tmp_path):
    images, *_ = dumped
    r, w = os.pipe()
    with pid_max_at_least(65536):
        try:
            res = _restore(images, tmp_path / "pid", f"--inherit-fd=fd[{w}]:pipe:[1]", pass_fds=(w,))
            assert res.returncode == 0, res.stderr
            assert "--inherit-fd fd[" in res.stderr and "pipe:[1]: no fd of the checkpoint has that file" in res.stderr
        finally:
            os.close(r)
            os.close(w)
            _end(PID)


def test_closed_fd_is_refused_before_anything(dumped, tmp_path):
    images, *_ = dumped
    res = _restore(images, tmp_path / "pid", "--inherit-fd=fd[987]:pipe:[1]")
    assert res.returncode == 4, res.stderr
    assert res.stderr.strip().splitlines() == [
        "pycrestore: error: --inherit-fd fd[987]:pipe:[1]: fd 987 is not open in this process "
        "(Bad file descriptor): the caller must pass it open"], res.stderr
    assert not os.path.exists(f"/proc/{PID}")


def _as_external(images: Path, dst: Path, path: str, key: str) -> Path:
    """A copy of ``images`` whose regular file ``path`` is external, as ``criu dump --external
    file[MNT:INODE]`` writes it: ext set, the key as its name."""
    import shutil

    from pycriu_restore.images import dump_image, load_image

    shutil.copytree(images, dst)
    files = load_image(dst / "files.img")
    hits = [e for e in files.entries if e.HasField("reg") and e.reg.name == path]
    assert hits, f"{path} is not in files.img"
    for entry in hits:
        entry.reg.ext = True
        entry.reg.name = key
    (dst / "files.img").write_bytes(dump_image(files))
    return dst


def test_external_file_is_taken_from_the_caller_or_refused(dumped, tmp_path):
    images, old_log, last, ino = dumped
    key = "file[2a:1f00]"
    external = _as_external(images, tmp_path / "ext", str(old_log), key)
    refused = _restore(external, tmp_path / "pid")
    assert refused.returncode == 3, refused.stderr
    assert f"external file {key} (dumped with --external): pass an fd for it with --inherit-fd fd[N]:{key}" \
        in refused.stderr
    assert not os.path.exists(f"/proc/{PID}")
    new_log = tmp_path / "ext.log"
    log_fd = os.open(new_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    r, w = os.pipe()  # its stdout needs a reader too, or the loop dies of SIGPIPE
    with pid_max_at_least(65536):
        try:
            res = _restore(external, tmp_path / "pid", f"--inherit-fd=fd[{log_fd}]:{key}",
                           f"--inherit-fd=fd[{w}]:pipe:[{ino}]", pass_fds=(log_fd, w))
            os.close(log_fd)
            os.close(w)
            assert res.returncode == 0, res.stderr
            assert os.readlink(f"/proc/{PID}/fd/3") == str(new_log)
            deadline = time.monotonic() + 10
            while not new_log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert new_log.read_text().splitlines()[0] == f"log {last + 1}"
        finally:
            os.close(r)
            _end(PID)


# --- a unix socket connected to a server outside the checkpoint --------------------------

SOCK_PID = 48310
_CLIENT = """
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(sys.argv[1])
i = 0
while True:
    i += 1
    s.sendall(b"tick %d\\n" % i)
    time.sleep(0.05)
"""


def test_inherited_unix_socket_replaces_a_connection_outside(tmp_path):
    """A datagram client connected to our server (outside its tree; CRIU dumps only datagram
    sockets with an outside peer, with --ext-unix-sk and --external unix[INO] for the
    server's socket); restored with --inherit-fd fd[N]:socket:[INO] for its own socket, it
    goes on sending into the socketpair we hand it."""
    if os.geteuid() != 0:
        pytest.fail("restores need root")
    import socket as socketmod

    criu = ensure_criu()
    path = str(tmp_path / "server.sock")
    server = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_DGRAM)
    server.bind(path)
    images = tmp_path / "images"
    images.mkdir()
    with pid_max_at_least(65536):
        for _ in range(5):
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(SOCK_PID - 1))
            proc = subprocess.Popen([sys.executable, "-c", _CLIENT, path], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            if proc.pid == SOCK_PID:
                break
            kill_session(proc.pid)
        else:
            pytest.fail(f"could not start the client at pid {SOCK_PID}")
        conn = server
        try:
            before = _read_lines(conn.fileno(), 3)
            assert before[:3] == ["tick 1", "tick 2", "tick 3"], before
            client_ino = next(int(os.readlink(f"/proc/{SOCK_PID}/fd/{fd}")[8:-1]) for fd in os.listdir(f"/proc/{SOCK_PID}/fd")
                              if os.readlink(f"/proc/{SOCK_PID}/fd/{fd}").startswith("socket:["))
            subprocess.run([str(criu), "dump", "-t", str(SOCK_PID), "-D", str(images), "-o", "dump.log",
                            "--ext-unix-sk", f"--external=unix[{os.fstat(conn.fileno()).st_ino}]"], check=True)
            proc.wait()
            kill_session(SOCK_PID)
            tail = b""
            conn.setblocking(False)
            while True:  # every datagram sent before the dump
                try:
                    tail += conn.recv(65536)
                except BlockingIOError:
                    break
            last = int((before + tail.decode().splitlines())[-1].split()[1])
        finally:
            server.close()
            kill_session(SOCK_PID)
        refused = _restore(images, tmp_path / "pid")
        assert refused.returncode == 3, refused.stderr
        assert f"outside the restored tree (dumped with --ext-unix-sk): pass an fd for it with --inherit-fd fd[N]:socket:[{client_ino}]" in refused.stderr
        ours, theirs = socketmod.socketpair(socketmod.AF_UNIX, socketmod.SOCK_DGRAM)
        try:
            res = _restore(images, tmp_path / "pid", f"--inherit-fd=fd[{theirs.fileno()}]:socket:[{client_ino}]",
                           pass_fds=(theirs.fileno(),))
            theirs.close()
            assert res.returncode == 0, res.stderr
            after = _read_lines(ours.fileno(), 3)
            assert after[:3] == [f"tick {n}" for n in range(last + 1, last + 4)], (last, after)
        finally:
            ours.close()
            _end(SOCK_PID)
