"""Restore real CRIU 4.2 checkpoints that hold inet sockets (criu-4.2-more: tcpecho, memcached).

tcpecho has a listening socket on 127.0.0.1:41100 and one ESTABLISHED connection whose two
ends are two restored processes (server 40500, client 40501): it needs --tcp-established,
and its verify.py checks that ping/pong goes on over the restored connection and that a
fresh connection is answered. memcached (40900, 8 threads) has a listening socket on
127.0.0.1:41300 with backlog 1024. Every test kills what it restored, by pid, waits until
the pids are gone, and checks that the ports are free and no nft lock is left behind.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURES_MORE, kill_and_wait, needs_fixtures_more, pid_max_at_least, wait_gone
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import UnsupportedFeature
from packs import MORE, pycrestore

pytestmark = needs_fixtures_more

IMAGES = FIXTURES_MORE / "images"
TCPECHO_PIDS = (40500, 40501)
MEMCACHED_PID = 40900
PORTS = (41100, 44862, 41300)  # tcpecho's listener and client end, memcached's listener


@pytest.fixture(autouse=True)
def _pid_max():
    with pid_max_at_least(65536):
        yield


def live_tcp_sockets(port: int) -> list[str]:
    """Lines of ``ss`` for sockets on ``port`` that are not in TIME-WAIT (a closed connection's
    leftover, which does not hold the port for a new restore: see test_back_to_back)."""
    out = subprocess.run(["ss", "-Htan", f"( sport = :{port} or dport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line and not line.startswith("TIME-WAIT")]


def our_nft_tables() -> list[str]:
    if shutil.which("nft") is None:
        return []
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "pycrestore-" in line]


def assert_clean() -> None:
    for port in PORTS:
        assert live_tcp_sockets(port) == [], f"port {port} still in use"
    assert our_nft_tables() == [], "a network lock was left behind"


@pytest.fixture
def free_ports():
    """The pids and ports the workloads need are free before, and again after, the test."""
    for pid in (*TCPECHO_PIDS, MEMCACHED_PID):
        assert wait_gone(pid), f"pid {pid} is in use"
    assert_clean()
    yield
    assert_clean()


def kill_tcpecho(pids=TCPECHO_PIDS) -> None:
    for pid in pids:  # the parent first: a child killed under a live parent stays a zombie
        kill_and_wait(pid)


def test_tcpecho_restores_its_connection(free_ports, tmp_path: Path) -> None:
    MORE.install("tcpecho")
    pidfile = tmp_path / "pid"
    result = pycrestore("-v", "restore", "-D", str(IMAGES / "tcpecho"), "-d", "--tcp-established",
                        "--pidfile", str(pidfile))
    try:
        assert result.returncode == 0, result.stderr
        assert int(pidfile.read_text()) == TCPECHO_PIDS[0]
        check = MORE.verify("tcpecho")
        assert check.returncode == 0 and check.stdout.startswith("PASS tcpecho"), check.stdout + check.stderr
        # The connection is the dumped one (same ports), established, in both processes.
        established = [line for line in live_tcp_sockets(44862) if line.startswith("ESTAB")]
        assert len(established) == 2, established
        assert our_nft_tables() == [], "the lock must be gone once the tasks run"
    finally:
        kill_tcpecho()


def test_tcpecho_back_to_back(free_ports) -> None:
    """A second restore right after the first was killed: the connection's old 4-tuple may
    still be in TIME-WAIT, which a repaired connect() may reuse (it has timestamps)."""
    for _ in range(2):
        MORE.install("tcpecho")
        result = pycrestore("restore", "-D", str(IMAGES / "tcpecho"), "-d", "--tcp-established")
        try:
            assert result.returncode == 0, result.stderr
            check = MORE.verify("tcpecho")
            assert check.returncode == 0, check.stdout + check.stderr
        finally:
            kill_tcpecho()


def test_tcpecho_in_new_pid_namespace(free_ports, tmp_path: Path) -> None:
    """--pid-ns: new pids, but the host's network namespace: the same ports, reachable."""
    MORE.install("tcpecho")
    pidfile = tmp_path / "pid"
    result = pycrestore("-v", "restore", "-D", str(IMAGES / "tcpecho"), "-d", "--pid-ns", "--tcp-established",
                        "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr
    outer = int(pidfile.read_text())
    init = int(result.stderr.split("init ")[1].split(")")[0])
    try:
        client = int(Path(f"/proc/{outer}/task/{outer}/children").read_text().split()[0])
        check = MORE.verify("tcpecho", pid_for_ns=outer)
        assert check.returncode == 0 and check.stdout.startswith("PASS tcpecho"), check.stdout + check.stderr
    finally:
        kill_tcpecho((outer, client))
    assert wait_gone(init)  # the namespace's init leaves with the restored tree


def test_tcpecho_refused_without_tcp_established(free_ports) -> None:
    MORE.install("tcpecho")
    result = pycrestore("restore", "-D", str(IMAGES / "tcpecho"), "-d")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pid 40500 fd 8: TCP socket 127.0.0.1:41100 -> 127.0.0.1:44862 in state ESTABLISHED" in lines[0]
    assert "--tcp-established" in lines[0] and "1 more" in lines[0]
    for pid in TCPECHO_PIDS:  # refused before anything was forked
        assert wait_gone(pid, timeout_s=0.1)


def test_memcached_listening_socket(free_ports) -> None:
    """A listening socket only (no connection, so no --tcp-established), beside pipes, eventfds
    and epoll in an 8-thread process."""
    if not Path("/usr/bin/memcached").exists():
        pytest.fail("memcached's images refer to Debian's /usr/bin/memcached 1.6.18: apt-get install memcached")
    MORE.install("memcached")
    result = pycrestore("restore", "-D", str(IMAGES / "memcached"), "-d")
    try:
        assert result.returncode == 0, result.stderr
        listening = subprocess.run(["ss", "-Htln", "( sport = :41300 )"], capture_output=True, text=True,
                                   check=True).stdout.split()
        assert listening[:5] == ["LISTEN", "0", "1024", "127.0.0.1:41300", "0.0.0.0:*"], listening
        check = MORE.verify("memcached")
        assert check.returncode == 0 and check.stdout.startswith("PASS memcached"), check.stdout + check.stderr
    finally:
        kill_and_wait(MEMCACHED_PID)


def test_memcached_in_new_pid_namespace(free_ports, tmp_path: Path) -> None:
    """memcached (8 threads: epoll, eventfds, pipes, a listener) under --pid-ns."""
    MORE.install("memcached")
    pidfile = tmp_path / "pid"
    result = pycrestore("-v", "restore", "-D", str(IMAGES / "memcached"), "-d", "--pid-ns",
                        "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr
    outer = int(pidfile.read_text())
    init = int(result.stderr.split("init ")[1].split(")")[0])
    try:
        assert len(list(Path(f"/proc/{outer}/task").iterdir())) == 8
        check = MORE.verify("memcached", pid_for_ns=outer)
        assert check.returncode == 0 and check.stdout.startswith("PASS memcached"), check.stdout + check.stderr
    finally:
        kill_and_wait(outer)
    assert wait_gone(init)


def _tcpecho_with(tmp_path: Path, change) -> Path:
    """A copy of tcpecho's images whose files.img INETSK entries went through ``change``."""
    copy = tmp_path / "tcpecho"
    shutil.copytree(IMAGES / "tcpecho", copy)
    image = load_image(copy / "files.img")
    for entry in image.entries:
        if entry.HasField("isk"):
            change(entry.isk)
    (copy / "files.img").write_bytes(dump_image(image))
    return copy


def test_other_tcp_states_are_refused_naming_task_fd_and_socket(tmp_path: Path) -> None:
    def syn_sent(isk) -> None:
        if isk.dst_port == 41100:  # the client's end
            isk.state = 2

    with pytest.raises(UnsupportedFeature) as caught:
        build_plan(ImageSet.open(_tcpecho_with(tmp_path, syn_sent)))
    assert ("pid 40501 fd 7: TCP socket 127.0.0.1:44862 -> 127.0.0.1:41100 in state SYN_SENT: not restored"
            in str(caught.value)), str(caught.value)


def test_raw_sockets_are_refused(tmp_path: Path) -> None:
    def raw(isk) -> None:
        if isk.state == 10:
            isk.type, isk.proto = 3, 255

    with pytest.raises(UnsupportedFeature) as caught:
        build_plan(ImageSet.open(_tcpecho_with(tmp_path, raw)))
    assert "pid 40500 fd 3: inet socket of type 3, protocol 255" in str(caught.value), str(caught.value)


SERVER = '''
import os, socket
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
u.bind(("::1", 41400))
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("::1", 41401))
t.listen(7)
os.write(os.open("log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), b"up\\n")
while True:
    data, peer = u.recvfrom(100)
    u.sendto(b"echo " + data, peer)
    c, _ = t.accept()
    c.sendall(b"hello " + data)
    c.close()
'''


def test_own_checkpoint_ipv6_udp_and_listener(tmp_path: Path) -> None:
    """A UDP socket and a TCP listener on ::1, dumped by upstream CRIU, restored and answering."""
    import socket
    import time

    from conftest import ensure_criu

    criu = ensure_criu()
    for port in (41400, 41401):
        assert live_tcp_sockets(port) == []
    (tmp_path / "srv.py").write_text(SERVER)
    with open(tmp_path / "out", "w") as out:
        proc = subprocess.Popen(["/usr/bin/python3", "srv.py"], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "log").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        dump = subprocess.run([str(criu), "dump", "-t", str(proc.pid), "-D", str(tmp_path), "-o", "dump.log", "-v4"],
                              capture_output=True, text=True, timeout=120)
        assert dump.returncode == 0, (tmp_path / "dump.log").read_text()[-2000:]
    finally:
        kill_and_wait(proc.pid)  # gone already: criu dump kills it; this reaps it
    result = pycrestore("restore", "-D", str(tmp_path), "-d")
    try:
        assert result.returncode == 0, result.stderr
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"x1", ("::1", 41400))
            assert u.recvfrom(100)[0] == b"echo x1"
        with socket.create_connection(("::1", 41401), timeout=5) as c:
            assert c.recv(100) == b"hello x1"
        listening = subprocess.run(["ss", "-Htln", "( sport = :41401 )"], capture_output=True, text=True,
                                   check=True).stdout.split()
        assert listening[:4] == ["LISTEN", "0", "7", "[::1]:41401"], listening
    finally:
        kill_and_wait(proc.pid)  # restored with its dumped pid
    for port in (41400, 41401):
        assert live_tcp_sockets(port) == []
