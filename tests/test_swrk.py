"""``pycrestore swrk FD``: CRIU's RPC, driven by clients nobody on this project wrote.

- go-criu (Debian's golang-github-checkpoint-restore-go-criu-dev, built here with Debian's
  golang-go, offline): VERSION, then RESTORE of criu-4.2-more's posixtimer with notify_scripts
  and rst_sibling; the notifications must arrive in CRIU's order.
- pycriu (Debian's criu package, run by Debian's python3): CHECK, then RESTORE.
- a raw client (our schema): refusals come back in the response, never as a dropped socket.

Both real clients insist on starting a binary: they get ``criu``, a two-line shim that execs
``python -m pycriu_restore`` (the clients add ``swrk FD``). Each restore's task is the client's child (rst_sibling);
the test kills it by pid and checks it is gone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES_MORE, REPO, pid_max_at_least, skip_module_without_fixtures, wait_gone

skip_module_without_fixtures(FIXTURES_MORE)

from packs import MORE  # noqa: E402

from pycriu_restore.images.proto import rpc_pb2  # noqa: E402

WORKLOAD = "posixtimer"  # one task, pid 40400 (criu-4.2-more README)
ROOT_PID = 40400
GO_CRIU_SRC = Path("/usr/share/gocode/src/github.com/checkpoint-restore/go-criu")
PYCRIU = Path("/usr/lib/python3/dist-packages/pycriu/criu.py")
DEBIAN_PYTHON = "/usr/bin/python3"
CLIENTS = Path(__file__).parent / "swrk_clients"
RESTORE_NOTIFICATIONS = ["pre-restore", f"setup-namespaces {ROOT_PID}", "post-setup-namespaces",
                         f"post-restore {ROOT_PID}", "post-resume"]  # go-criu has no PreResume hook


@pytest.fixture
def criu_shim(tmp_path: Path) -> Path:
    """An executable named criu that runs pycrestore's swrk (what docs/embedding.md shows)."""
    shim = tmp_path / "bin" / "criu"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m pycriu_restore \"$@\"\n")
    shim.chmod(0o755)
    return shim


@pytest.fixture
def posixtimer():
    with pid_max_at_least(65536):
        MORE.install(WORKLOAD)
        yield MORE.images / WORKLOAD
        _kill_root()


def _kill_root() -> None:
    try:
        os.kill(ROOT_PID, 9)
    except ProcessLookupError:
        return
    try:
        os.waitpid(ROOT_PID, 0)  # our child only if we were the RPC client (not through go/pycriu)
    except ChildProcessError:
        pass
    assert wait_gone(ROOT_PID), f"pid {ROOT_PID} still exists after SIGKILL"


def _go_client(tmp_path: Path) -> Path:
    """Build tests/swrk_clients/gocriu_restore.go offline against Debian's go-criu."""
    if shutil.which("go") is None or not GO_CRIU_SRC.is_dir():
        pytest.fail("go-criu test needs Debian's golang-go and golang-github-checkpoint-restore-go-criu-dev "
                    "(the README's apt-get line installs them)")
    src = tmp_path / "gosrc"
    src.mkdir()
    for name in ("gocriu_restore.go", "go.mod"):
        shutil.copy(CLIENTS / name, src / name)
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOCACHE": str(tmp_path / "gocache"),
           "GOPATH": str(tmp_path / "gopath"), "CGO_ENABLED": "0"}
    out = tmp_path / "gocriu_restore"
    build = subprocess.run(["go", "build", "-o", str(out), "."], cwd=src, env=env, capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr
    return out


def test_gocriu_restores_with_notifications_in_order(tmp_path, criu_shim, posixtimer):
    client = _go_client(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run([str(client), str(criu_shim), str(posixtimer), str(work)], capture_output=True, text=True,
                         timeout=120)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr + _log(work)
    assert lines[0] == "version 40200"  # VERSION answered 4.2 (go-criu: major*10000 + minor*100)
    assert [ln.removeprefix("notify ") for ln in lines[1:-1]] == RESTORE_NOTIFICATIONS
    assert lines[-1] == f"restored {ROOT_PID}"
    assert "INFO" in (work / "restore.log").read_text()  # log_file in work_dir_fd, log_level 4
    assert (work / "stats-restore").exists()  # written into the work dir, as CRIU does
    verify = MORE.verify(WORKLOAD)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_pycriu_restores(tmp_path, criu_shim, posixtimer):
    if not (PYCRIU.exists() and Path(DEBIAN_PYTHON).exists()):
        pytest.fail("pycriu test needs Debian's criu package (pycriu) and python3 (the README's apt-get line)")
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run([DEBIAN_PYTHON, str(CLIENTS / "pycriu_restore_client.py"), str(criu_shim), str(posixtimer),
                          str(work)], capture_output=True, text=True, timeout=120, env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stdout + run.stderr + _log(work)
    assert run.stdout.splitlines()[-2:] == ["check ok", f"restored {ROOT_PID}"]
    verify = MORE.verify(WORKLOAD)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_pycriu_restores_with_notifications_in_order(tmp_path, criu_shim, posixtimer):
    """pycriu's own transport and schema (CRIU's rpc.proto), answering each NOTIFY."""
    if not (PYCRIU.exists() and Path(DEBIAN_PYTHON).exists()):
        pytest.fail("pycriu test needs Debian's criu package (pycriu) and python3 (the README's apt-get line)")
    run = subprocess.run([DEBIAN_PYTHON, str(CLIENTS / "pycriu_restore_client.py"), "--notify", str(criu_shim),
                          str(posixtimer)], capture_output=True, text=True, timeout=120,
                         env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "check ok" or lines[1] == "check ok", lines
    notes = [ln.removeprefix("notify ") for ln in lines if ln.startswith("notify ")]
    # All of CRIU's restore-side points, pre-resume included (pycriu answers every one).
    assert notes == ["pre-restore", f"setup-namespaces {ROOT_PID}", "post-setup-namespaces",
                     f"post-restore {ROOT_PID}", "pre-resume", "post-resume"], lines
    assert lines[-1] == f"restored {ROOT_PID}"
    verify = MORE.verify(WORKLOAD)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _log(work: Path) -> str:
    log = work / "restore.log"
    return "\n--- restore.log:\n" + log.read_text()[-3000:] if log.exists() else ""


class RawClient:
    """Our own client over the project's schema, for what the real clients do not exercise."""

    def __init__(self) -> None:
        self.sk, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, "-m", "pycriu_restore", "swrk", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], cwd=REPO, stderr=subprocess.DEVNULL)
        theirs.close()

    def call(self, req: rpc_pb2.CriuReq) -> rpc_pb2.CriuResp:
        self.sk.send(req.SerializeToString())
        resp = rpc_pb2.CriuResp()
        resp.ParseFromString(self.sk.recv(1 << 16))
        return resp

    def close(self) -> int:
        self.sk.close()
        return self.proc.wait(timeout=30)


def test_version_feature_check_and_unsupported_requests_are_answered():
    client = RawClient()
    try:
        version = client.call(rpc_pb2.CriuReq(type=rpc_pb2.VERSION, keep_open=True))
        assert version.success and (version.version.major_number, version.version.minor_number) == (4, 2)
        req = rpc_pb2.CriuReq(type=rpc_pb2.FEATURE_CHECK, keep_open=True)
        req.features.lazy_pages = True
        features = client.call(req)
        assert features.success and features.features.lazy_pages is False
        dump = client.call(rpc_pb2.CriuReq(type=rpc_pb2.DUMP, keep_open=True))
        assert (dump.type, dump.success) == (rpc_pb2.DUMP, False)
        assert "restores only" in dump.cr_errmsg and dump.cr_errno != 0
    finally:
        assert client.close() == 1  # the refused request ends the session, after its answer


def test_restore_options_that_do_not_apply_are_refused_in_the_response(tmp_path):
    client = RawClient()
    try:
        req = rpc_pb2.CriuReq(type=rpc_pb2.RESTORE)
        req.opts.images_dir_fd = -1  # required in criu_opts; -1: use images_dir
        req.opts.images_dir = str(tmp_path)
        req.opts.exec_cmd.append("/bin/true")
        resp = client.call(req)
        assert (resp.type, resp.success, resp.restore.pid) == (rpc_pb2.RESTORE, False, -1)
        assert "exec_cmd" in resp.cr_errmsg
    finally:
        client.close()
    client = RawClient()
    try:
        req = rpc_pb2.CriuReq(type=rpc_pb2.RESTORE)
        req.opts.images_dir_fd = -1  # required in criu_opts; -1: use images_dir
        req.opts.images_dir = str(tmp_path)
        req.opts.orphan_pts_master = True
        resp = client.call(req)
        assert not resp.success and "--orphan-pts-master" in resp.cr_errmsg
        assert "exit code 3" in resp.cr_errmsg
    finally:
        client.close()
    client = RawClient()
    try:  # inherit_fd is served; its fd must be one of the swrk process's own (runc: ExtraFiles)
        req = rpc_pb2.CriuReq(type=rpc_pb2.RESTORE)
        req.opts.images_dir_fd = -1
        req.opts.images_dir = str(tmp_path)
        req.opts.inherit_fd.add(key="pipe:[1234]", fd=987)
        resp = client.call(req)
        assert not resp.success and "--inherit-fd fd[987]:pipe:[1234]: fd 987 is not open" in resp.cr_errmsg
        assert "exit code 4" in resp.cr_errmsg
    finally:
        client.close()


def test_notify_answer_failure_aborts_and_leaves_nothing(posixtimer):
    client = RawClient()
    try:
        req = rpc_pb2.CriuReq(type=rpc_pb2.RESTORE)
        req.opts.images_dir_fd = os.open(posixtimer, os.O_DIRECTORY)
        req.opts.notify_scripts = True
        req.opts.rst_sibling = True
        seen = []
        client.sk.send(req.SerializeToString())
        while True:
            resp = rpc_pb2.CriuResp()
            resp.ParseFromString(client.sk.recv(1 << 16))
            if resp.type != rpc_pb2.NOTIFY:
                break
            seen.append(resp.notify.script)
            ok = resp.notify.script != "post-restore"  # the client's script "fails" here
            client.sk.send(rpc_pb2.CriuReq(type=rpc_pb2.NOTIFY, notify_success=ok).SerializeToString())
        assert seen == ["pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore"]
        assert (resp.type, resp.success) == (rpc_pb2.RESTORE, False)
        assert "post-restore" in resp.cr_errmsg
    finally:
        client.close()
    _reap_child(ROOT_PID)  # rst_sibling: the killed root was our child
    assert wait_gone(ROOT_PID)


def _reap_child(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
