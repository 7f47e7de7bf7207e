"""Unix sockets (files/unix_socket.py, files/unix_build.py): unixsrv of criu-4.2-more, and
the cases it does not hold, made in this process.

unixsrv's server (40600) holds a listener bound to srv.sock, the server end of the client's
connection (accepted from that listener) and a datagram socket bound to an abstract name; its
client (40601) holds the other end of the connection and a datagram socket bound to another
abstract name, connect()ed to the server's. sk-queues.img holds messages unread in both
directions. The restore must pass verify.py in both pid modes, the queues must matter (one
dropped: verify fails), and after the kill nothing is left but the socket file.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from conftest import FIXTURES_MORE, kill_and_wait, needs_fixtures_more, pid_max_at_least, wait_gone
from pycriu_restore.files.unix_build import UnixSocketFailed, build
from pycriu_restore.files.unix_socket import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    TCP_CLOSE,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    UNIX_PATH_MAX,
    Making,
    UnixSockets,
    plan_sockets,
)
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.images.schemas import sk_unix_pb2
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature
from packs import MORE, restore_cli

NAME = "unixsrv"
PIDS = (40600, 40601)
IMAGES = FIXTURES_MORE / "images" / NAME
RUN_DIR = Path("/var/tmp/pycrestore-fixtures") / NAME
SRV_SOCK = RUN_DIR / "srv.sock"
LISTENER, DGRAM_S, SERVER_END, CLIENT_END, DGRAM_C = 222754, 222755, 222843, 223365, 223366


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / NAME
    shutil.copytree(IMAGES, out)
    return out


def _kill_tree(pid: int, pid_ns: bool) -> None:
    """Kill every restored pid, by pid (in a new pid namespace its init takes them along)."""
    for p in ([pid] if pid_ns else list(PIDS)):
        kill_and_wait(p)
    for p in PIDS:
        assert wait_gone(p), f"pid {p} still exists"


def _entry(**fields) -> sk_unix_pb2.UnixSkEntry:
    """A UnixSkEntry with the required fields a test does not care about filled in."""
    base = dict(id=fields.get("ino", 1), type=SOCK_STREAM, state=TCP_ESTABLISHED, flags=2, uflags=0, backlog=0,
                peer=0, fown={"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
                opts={"so_sndbuf": 212992, "so_rcvbuf": 212992, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
                      "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0}, name=b"")
    base.update(fields)
    return sk_unix_pb2.UnixSkEntry(**base)


class _Packet:
    def __init__(self, id_for: int) -> None:
        self.id_for = id_for


def _unix_names() -> dict[int, str]:
    """Socket inode -> bound name, from /proc/net/unix ('@' starts an abstract name)."""
    out = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        out[int(cols[6])] = cols[7] if len(cols) > 7 else ""
    return out


def _inode(pid: int, fd: int) -> int:
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    assert link.startswith("socket:["), link
    return int(link[8:-1])


# --- plan ---------------------------------------------------------------------------------

@needs_fixtures_more
def test_plan_of_unixsrv_names_states_peers_and_queues():
    (unix,) = build_plan(ImageSet.open(IMAGES)).unix_sockets
    by = {sk.socket_id: sk for sk in unix.sockets}
    srv = bytes(SRV_SOCK)
    assert (by[LISTENER].making, by[LISTENER].name, by[LISTENER].bind, by[LISTENER].backlog,
            by[LISTENER].file_perms) == (Making.ALONE, srv, True, 8, (0o140755, 0, 0))
    # The server end carries the listener's name: it is made by accept() from it, unbound.
    assert (by[SERVER_END].making, by[SERVER_END].via, by[SERVER_END].bind) == (Making.ACCEPTED, LISTENER, False)
    assert (by[CLIENT_END].making, by[CLIENT_END].via, by[CLIENT_END].name) == (Making.CONNECTS, LISTENER, b"")
    assert (by[DGRAM_S].making, by[DGRAM_S].name, by[DGRAM_S].peer) == (Making.ALONE, b"\0pycrestore-unixsrv-s", 0)
    assert (by[DGRAM_C].making, by[DGRAM_C].via, by[DGRAM_C].name) == (Making.CONNECTS, DGRAM_S,
                                                                         b"\0pycrestore-unixsrv-c")
    # Queues: what each socket had not read, with its sender; one entry per datagram.
    assert by[SERVER_END].queued == (b"ping 65\n",) and by[SERVER_END].sender == CLIENT_END
    assert b"".join(by[CLIENT_END].queued) == b"".join(b"pong %d\n" % n for n in range(57, 65))
    assert by[CLIENT_END].sender == SERVER_END
    assert by[DGRAM_S].queued == (b"cdg 65",) and by[DGRAM_S].sender == DGRAM_C
    assert by[DGRAM_C].queued == tuple(b"sdg %d" % n for n in range(57, 65)) and by[DGRAM_C].sender == 0


def _tamper_files(tmp_path: Path, ino: int, **fields) -> Path:
    d = _copy(tmp_path)
    files = load_image(d / "files.img")
    usk = next(e.usk for e in files.entries if e.HasField("usk") and e.usk.ino == ino)
    for key, value in fields.items():
        setattr(usk, key, value)
    (d / "files.img").write_bytes(dump_image(files))
    return d


@needs_fixtures_more
def test_peer_outside_the_tree_is_refused_naming_the_socket(tmp_path):
    d = _tamper_files(tmp_path, DGRAM_C, peer=999999)
    with pytest.raises(UnsupportedFeature) as caught:
        build_plan(ImageSet.open(d))
    assert ("pid 40601 fd 5: unix datagram socket 223366 (@pycrestore-unixsrv-c) connected to unix socket 999999 "
            "outside the restored tree (CRIU restores it only with --ext-unix-sk): not restored") in str(caught.value)


@needs_fixtures_more
def test_other_states_and_relative_names_without_a_directory_are_refused(tmp_path):
    d = _tamper_files(tmp_path, LISTENER, state=2)  # TCP_SYN_SENT
    with pytest.raises(UnsupportedFeature, match=r"pid 40600 fd 3: unix stream socket 222754 "
                                                 r"\(/var/tmp/pycrestore-fixtures/unixsrv/srv.sock\) in state 2"):
        build_plan(ImageSet.open(d))
    d = _tamper_files(tmp_path / "2", DGRAM_S, name=b"rel.sock")
    with pytest.raises(UnsupportedFeature, match="unix datagram socket 222755 \\(rel.sock\\): relative name without"):
        build_plan(ImageSet.open(d))


@needs_fixtures_more
def test_queue_for_a_socket_nobody_holds_is_inconsistent(tmp_path):
    d = _copy(tmp_path)
    queues = load_image(d / "sk-queues.img")
    queues.entries[0].id_for = 4242
    (d / "sk-queues.img").write_bytes(dump_image(queues))
    with pytest.raises(InconsistentImages, match="sk-queues.img.*file id 4242"):
        build_plan(ImageSet.open(d))


def test_plan_sockets_pairs_pending_clients_and_widowed_ends():
    entries = [
        _entry(ino=10, state=TCP_LISTEN, name=b"\0lst", backlog=3),
        _entry(ino=11, peer=10, name=b"/tmp/client.sock"),  # still in the listener's backlog
        _entry(ino=12, type=SOCK_SEQPACKET, peer=13, name=b"\0seq"),  # a named seqpacket pair
        _entry(ino=13, type=SOCK_SEQPACKET, peer=12),
        _entry(ino=14),  # a stream socket whose peer closed
        _entry(ino=15, type=SOCK_DGRAM, state=TCP_CLOSE, name=b"x.sock\0", name_dir="/run/d"),
    ]
    unix = plan_sockets(entries, [(_Packet(11), b"a"), (_Packet(14), b"bye"), (_Packet(12), b"m1"),
                                  (_Packet(12), b"m2"), (_Packet(10), b"early")])
    by = {sk.socket_id: sk for sk in unix.sockets}
    assert (by[11].making, by[11].via, by[11].bind) == (Making.CONNECTS, 10, True)
    assert by[10].sender == 11 and by[10].queued == (b"early",)  # data a pending client wrote
    # Neither end of the seqpacket pair is named like a listener: a socketpair, left unbound.
    assert (by[12].making, by[13].making, by[12].bind) == (Making.PAIR, Making.PAIR, False)
    assert by[12].queued == (b"m1", b"m2") and by[12].sender == 13
    assert (by[14].making, by[14].sender, by[14].queued) == (Making.ALONE, 0, (b"bye",))
    assert (by[15].name, by[15].name_dir, by[15].bind) == (b"x.sock", "/run/d", True)


def test_unix_path_max_is_the_size_of_sun_path():
    """<linux/un.h> UNIX_PATH_MAX, against the kernel: an abstract name fills sun_path exactly."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(b"\0" + b"p" * (UNIX_PATH_MAX - 1))
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError):
        sock.bind(b"\0" + b"p" * UNIX_PATH_MAX)


# --- making sockets (in this process) -------------------------------------------------------

def _fds(unix: UnixSockets) -> dict[int, socket.socket]:
    return {sk.socket_id: socket.socket(fileno=fd) for sk, fd in zip(unix.sockets, build(unix))}


def test_build_keeps_boundaries_pending_clients_widowed_ends_and_relative_names(tmp_path):
    entries = [
        _entry(ino=20, state=TCP_LISTEN, name=b"lst.sock", name_dir=str(tmp_path), backlog=2,
               file_perms={"mode": 0o140600, "uid": 0, "gid": 0}),
        _entry(ino=21, peer=20),  # waiting in the listener's backlog
        _entry(ino=22, type=SOCK_SEQPACKET, peer=23),
        _entry(ino=23, type=SOCK_SEQPACKET, peer=22),
        _entry(ino=24),  # its peer closed
        _entry(ino=25, type=SOCK_DGRAM, state=TCP_CLOSE, name=b"\0pycrestore-test-dg-%d" % os.getpid()),
        _entry(ino=26, type=SOCK_DGRAM, state=TCP_CLOSE, name=str(tmp_path / "gone.sock").encode(), deleted=True),
    ]
    (tmp_path / "lst.sock").write_bytes(b"")  # not a socket: must stay, and make bind fail
    with pytest.raises(UnixSocketFailed, match=r"unix stream socket 20 \(lst.sock\): bind: Address already in use"):
        build(plan_sockets(entries, []))
    (tmp_path / "lst.sock").unlink()
    socket.socket(socket.AF_UNIX).bind(str(tmp_path / "lst.sock"))  # a stale socket file: removed
    unix = plan_sockets(entries, [(_Packet(22), b"one"), (_Packet(22), b"two"), (_Packet(24), b"last words"),
                                  (_Packet(25), b"d1"), (_Packet(25), b"d2")])
    socks = _fds(unix)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "lst.sock").st_mode) == 0o600
        conn, _ = socks[20].accept()  # the pending client is in the listener's backlog
        conn.sendall(b"hi")
        assert socks[21].recv(10) == b"hi"
        conn.close()
        assert [socks[22].recv(100), socks[22].recv(100)] == [b"one", b"two"]  # boundaries kept
        assert socks[24].recv(100) == b"last words" and socks[24].recv(100) == b""  # then EOF
        assert [socks[25].recv(100), socks[25].recv(100)] == [b"d1", b"d2"]
        assert socks[25].getsockname() == b"\0pycrestore-test-dg-%d" % os.getpid()
        assert socks[26].getsockname() == str(tmp_path / "gone.sock")  # bound, its file unlinked
        assert not (tmp_path / "gone.sock").exists()
    finally:
        for s in socks.values():
            s.close()


# --- unixsrv restored -----------------------------------------------------------------------

@needs_fixtures_more
@pytest.mark.parametrize("pid_ns", [False, True], ids=["host-pids", "pid-ns"])
def test_unixsrv_restores_and_verifies(pid_ns, tmp_path):
    pidfile = tmp_path / "pid"
    with pid_max_at_least(65536):
        MORE.install(NAME)
        result = restore_cli(IMAGES, pidfile, *(["--pid-ns"] if pid_ns else []))
        assert result.returncode == 0, result.stderr
        pid = int(pidfile.read_text())
        try:
            if not pid_ns:
                assert pid == PIDS[0]
            check = MORE.verify(NAME, pid_for_ns=pid if pid_ns else None)
            assert check.returncode == 0 and check.stdout.startswith(f"PASS {NAME}"), check.stdout + check.stderr
            st = SRV_SOCK.stat()
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755, oct(st.st_mode)
            # The server end (fd 6) carries the listener's name, as after the original accept();
            # the client's end (its fd 4) has none. /proc/net/unix: "... Inode Path".
            names = _unix_names()
            assert names[_inode(pid, 3)] == names[_inode(pid, 6)] == str(SRV_SOCK)
            assert names[_inode(pid, 4)] == "@pycrestore-unixsrv-s"
        finally:
            _kill_tree(pid, pid_ns)
    # Nothing listens any more; the file stays, as after the original program was killed.
    assert SRV_SOCK.is_socket()
    with socket.socket(socket.AF_UNIX) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(str(SRV_SOCK))


@needs_fixtures_more
def test_dropped_server_queue_makes_verify_fail(tmp_path):
    """Without the ping the server had not read, it never answers pong 65: a gap."""
    d = _copy(tmp_path)
    queues = load_image(d / "sk-queues.img")
    keep = [(e, x) for e, x in zip(queues.entries, queues.extras) if e.id_for != 10]  # the server end's id
    assert len(keep) == len(queues.entries) - 1
    del queues.entries[:]
    queues.entries.extend(e for e, _ in keep)
    queues.extras[:] = [x for _, x in keep]
    (d / "sk-queues.img").write_bytes(dump_image(queues))
    pidfile = tmp_path / "pid"
    with pid_max_at_least(65536):
        MORE.install(NAME)
        result = restore_cli(d, pidfile)
        assert result.returncode == 0, result.stderr
        try:
            check = MORE.verify(NAME)
            assert check.returncode == 1 and check.stdout.startswith(f"FAIL {NAME}"), check.stdout + check.stderr
            assert "ping sequence" in check.stdout or "pong sequence" in check.stdout, check.stdout
        finally:
            _kill_tree(PIDS[0], False)
