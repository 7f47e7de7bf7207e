"""files/inet.py against the kernel, without any image: real connections, read, dropped, rebuilt.

Each test runs in a forked child inside a fresh network namespace (its own loopback, so no
port of the host is touched and nothing leaks). A connection is made and given unread data
both ways, plus a send queue that the peer's closed window holds back; its state is read
with TCP repair exactly as CRIU's dump does (libsoccr_save: TCP_INFO, TCP_MAXSEG,
TCP_TIMESTAMP, TCP_REPAIR_WINDOW, each queue's TCP_QUEUE_SEQ and MSG_PEEK contents); both
ends are closed in repair mode (no FIN, no RST), rebuilt with ``inet.create_socket`` and released
with ``inet.finish_socket``; then the queued bytes must arrive first, in order, and new data
must flow both ways.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import time
import traceback
from typing import Callable

import pytest

from pycriu_restore.files import inet
from pycriu_restore.linux import namespaces, tcp_repair
from pycriu_restore.linux.tcp_repair import TCP_RECV_QUEUE, TCP_SEND_QUEUE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and TCP repair")

# <linux/sockios.h>, <net/if.h>: bring the namespace's loopback up.
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _in_new_netns(body: Callable[[], None]) -> None:
    """Run ``body`` in a forked child in a new network namespace; fail with its traceback."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(read_fd)
        code = 0
        try:
            namespaces.unshare(namespaces.CLONE_NEWNET)
            _loopback_up()
            body()
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            os.write(write_fd, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as report:
        text = report.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child failed:\n{text}"


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0))
        flags = struct.unpack("16sh", ifr[:18])[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def capture(sock: socket.socket) -> inet.InetSocket:
    """Read a connected TCP socket as CRIU's dump does; leaves it in repair mode."""
    fd = sock.fileno()
    sol = socket.SOL_SOCKET
    # Options first: repair mode forces SO_REUSEADDR on (CRIU's dump reads them before too).
    options = inet.SocketOptions(sndbuf_bytes=sock.getsockopt(sol, socket.SO_SNDBUF),
                                 rcvbuf_bytes=sock.getsockopt(sol, socket.SO_RCVBUF),
                                 reuseaddr=bool(sock.getsockopt(sol, socket.SO_REUSEADDR)))
    tcp_repair.repair_on(fd)
    head = tcp_repair.info_head(fd)
    outq_len = tcp_repair.queue_bytes(fd, tcp_repair.SIOCOUTQ)
    unsent = tcp_repair.queue_bytes(fd, tcp_repair.SIOCOUTQNSD)
    inq_len = tcp_repair.queue_bytes(fd, tcp_repair.SIOCINQ)
    stream = inet.TcpStream(
        inq_seq=tcp_repair.get_queue_seq(fd, TCP_RECV_QUEUE),
        inq=tcp_repair.peek_queue(fd, TCP_RECV_QUEUE, inq_len),
        outq_seq=tcp_repair.get_queue_seq(fd, TCP_SEND_QUEUE),
        outq=tcp_repair.peek_queue(fd, TCP_SEND_QUEUE, outq_len),
        unsent_bytes=unsent,
        mss_clamp=tcp_repair.get_mss(fd),
        opt_mask=head.tcpi_options,
        snd_wscale=head.tcpi_snd_wscale,
        rcv_wscale=head.tcpi_rcv_wscale,
        timestamp=tcp_repair.get_timestamp(fd),
        window=tcp_repair.get_window(fd),
    )
    tcp_repair.select_queue(fd, tcp_repair.TCP_NO_QUEUE)
    src, dst = sock.getsockname(), sock.getpeername()
    return inet.InetSocket(
        ino=os.fstat(fd).st_ino, family=sock.family, sock_type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
        state=head.tcpi_state, src_addr=src[0], src_port=src[1], dst_addr=dst[0], dst_port=dst[1],
        flags=fcntl.fcntl(fd, fcntl.F_GETFL),
        options=options,
        tcp=inet.TcpOptions(nodelay=bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))),
        stream=stream,
    )


def _recv_exactly(sock: socket.socket, size: int, timeout_s: float = 10.0) -> bytes:
    sock.settimeout(timeout_s)
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(min(1 << 20, size - len(out)))
        assert chunk, f"connection closed after {len(out)} of {size} bytes"
        out += chunk
    return bytes(out)


def _pattern(tag: bytes, size: int) -> bytes:
    """Bytes whose order is checkable: a tag and a counter, repeated."""
    out = bytearray()
    n = 0
    while len(out) < size:
        out += b"%s%08d;" % (tag, n)
        n += 1
    return bytes(out[:size])


def _connection_round_trip(family: int, host: str) -> None:
    port = 41234
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(8)
    client = socket.create_connection((host, port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # small: its window closes sooner

    # Unread bytes both ways, then more from the client than the server's window takes:
    # the rest stays in the client's send queue, never sent.
    to_client = _pattern(b"s2c", 3000)
    server.sendall(to_client)
    to_server = bytearray()
    client.setblocking(False)
    chunk = _pattern(b"c2s", 1 << 22)
    while True:
        try:
            sent = client.send(chunk[len(to_server):len(to_server) + 65536])
        except BlockingIOError:
            break
        to_server += chunk[len(to_server):len(to_server) + sent]
    time.sleep(0.3)  # loopback delivery and ACKs settle

    got_server = capture(server)
    got_client = capture(client)
    assert got_server.state == got_client.state == tcp_repair.TCP_ESTABLISHED
    cs, ss = got_client.stream, got_server.stream
    assert len(cs.inq) == len(to_client) and cs.inq == to_client
    assert len(ss.inq) > 0 and cs.unsent_bytes > 0, (len(ss.inq), cs.unsent_bytes)
    assert ss.inq + cs.outq == bytes(to_server), "the captured queues hold every byte sent, once, in order"
    assert cs.outq_seq - len(cs.outq) == ss.inq_seq  # the client's queue starts where the server's ends
    server.close()  # in repair mode: silently gone
    client.close()

    # Rebuilt beside the still-listening listener (as tcpecho's accepted socket is).
    new_server_fd = inet.create_socket(got_server)
    new_client_fd = inet.create_socket(got_client)
    inet.finish_socket(new_server_fd, got_server)
    inet.finish_socket(new_client_fd, got_client)
    new_server = socket.socket(fileno=new_server_fd)
    new_client = socket.socket(fileno=new_client_fd)
    new_client.setblocking(True)

    assert _recv_exactly(new_client, len(to_client)) == to_client, "the client's queued bytes come first"
    assert _recv_exactly(new_server, len(to_server)) == bytes(to_server), "the server gets every byte, in order"
    new_client.sendall(b"ping after restore\n")
    assert _recv_exactly(new_server, 19) == b"ping after restore\n"
    new_server.sendall(b"pong after restore\n")
    assert _recv_exactly(new_client, 19) == b"pong after restore\n"
    # An accepted socket inherits the listener's SO_REUSEADDR; the client never had it.
    assert got_server.options.reuseaddr and not got_client.options.reuseaddr
    assert new_server.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert new_client.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
    assert new_client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert new_server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == got_server.options.rcvbuf_bytes

    # The listener still accepts.
    with socket.create_connection((host, port), timeout=5) as fresh:
        conn, _ = listener.accept()
        fresh.sendall(b"x")
        assert conn.recv(1) == b"x"
        conn.close()
    new_client.close()
    new_server.close()
    listener.close()


def test_ipv4_connection_rebuilt_with_its_queues() -> None:
    _in_new_netns(lambda: _connection_round_trip(socket.AF_INET, "127.0.0.1"))


def test_ipv6_connection_rebuilt_with_its_queues() -> None:
    _in_new_netns(lambda: _connection_round_trip(socket.AF_INET6, "::1"))


def _listen_and_udp() -> None:
    opts = inet.SocketOptions(sndbuf_bytes=16384, rcvbuf_bytes=131072, reuseaddr=True)
    listen = inet.InetSocket(ino=1, family=socket.AF_INET, sock_type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                             state=tcp_repair.TCP_LISTEN, src_addr="127.0.0.1", src_port=41100, dst_addr="0.0.0.0",
                             dst_port=0, backlog=100, flags=os.O_RDWR | os.O_NONBLOCK, options=opts,
                             ip=inet.IpOptions(ttl=64), tcp=inet.TcpOptions(keepcnt=9, keepidle_s=7200, keepintvl_s=75))
    fd = inet.create_socket(listen)
    inet.finish_socket(fd, listen)
    lsock = socket.socket(fileno=fd)
    assert lsock.getsockname() == ("127.0.0.1", 41100)
    assert lsock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert lsock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert lsock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    assert lsock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 131072
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    with open("/proc/net/tcp") as table:  # the backlog shows as the listener's tx_queue
        assert any(":A08C " in line.split("00000000:0000")[0] for line in table)
    with socket.create_connection(("127.0.0.1", 41100), timeout=5) as c:
        lsock.setblocking(True)
        conn, _ = lsock.accept()
        c.sendall(b"hello")
        assert conn.recv(5) == b"hello"
        conn.close()
    lsock.close()

    # UDP: one bound socket, one bound and connected to it (IPv6, v6only).
    udp_opts = inet.SocketOptions(sndbuf_bytes=212992, rcvbuf_bytes=212992)
    server = inet.InetSocket(ino=2, family=socket.AF_INET6, sock_type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP,
                             state=tcp_repair.TCP_CLOSE, src_addr="::1", src_port=5353, dst_addr="::", dst_port=0,
                             options=udp_opts, v6only=True)
    client = inet.InetSocket(ino=3, family=socket.AF_INET6, sock_type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP,
                             state=tcp_repair.TCP_ESTABLISHED, src_addr="::1", src_port=40000, dst_addr="::1",
                             dst_port=5353, options=udp_opts)
    sfd, cfd = inet.create_socket(server), inet.create_socket(client)
    for fd, sk in ((sfd, server), (cfd, client)):
        inet.finish_socket(fd, sk)
    s, c = socket.socket(fileno=sfd), socket.socket(fileno=cfd)
    assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    c.send(b"datagram")
    s.settimeout(5)
    data, peer = s.recvfrom(100)
    assert data == b"datagram" and peer[:2] == ("::1", 40000)
    s.close()
    c.close()


def test_listening_and_udp_sockets() -> None:
    _in_new_netns(_listen_and_udp)


# --- the network lock (files/inet_lock.py) -------------------------------------------------

def _connection(src: tuple[str, int], dst: tuple[str, int], file_id: int) -> inet.InetSocketFd:
    stream = inet.TcpStream(inq_seq=0, outq_seq=0, inq=b"", outq=b"", unsent_bytes=0, mss_clamp=65495,
                            opt_mask=0, snd_wscale=0, rcv_wscale=0, timestamp=0, window=None)
    sk = inet.InetSocket(ino=file_id, family=socket.AF_INET, sock_type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                         state=tcp_repair.TCP_ESTABLISHED, src_addr=src[0], src_port=src[1], dst_addr=dst[0],
                         dst_port=dst[1], stream=stream)
    return inet.InetSocketFd(fd=3, cloexec=False, file_id=file_id, sock=sk)


def _plan_of(*specs: inet.InetSocketFd):
    from types import SimpleNamespace

    from pycriu_restore.images.schemas import inventory_pb2

    plan = SimpleNamespace(tasks=[SimpleNamespace(pid=100 + i, files=(s,)) for i, s in enumerate(specs)])
    return plan, SimpleNamespace(inventory=inventory_pb2.InventoryEntry(img_version=2))


def test_connections_need_tcp_established() -> None:
    from pycriu_restore.files.inet_lock import ConnectionLock
    from pycriu_restore.plan.errors import UnsupportedFeature

    plan, images = _plan_of(_connection(("10.0.0.1", 80), ("10.0.0.2", 5000), 1))
    with pytest.raises(UnsupportedFeature) as caught:
        ConnectionLock.for_plan(plan, images, tcp_established=False)
    assert "pid 100 fd 3: TCP socket 10.0.0.1:80 -> 10.0.0.2:5000 in state ESTABLISHED: restored only with " \
           "--tcp-established" in str(caught.value)
    assert caught.value.exit_code == 3


def test_outside_peer_needs_nft(monkeypatch) -> None:
    """Both ends in the tree: no lock needed. A peer outside: refused (exit 4) without nft."""
    from pycriu_restore.files import inet_lock

    monkeypatch.setattr(inet_lock.shutil, "which", lambda name: None)
    pair = _plan_of(_connection(("127.0.0.1", 80), ("127.0.0.1", 5000), 1),
                    _connection(("127.0.0.1", 5000), ("127.0.0.1", 80), 2))
    lock = inet_lock.ConnectionLock.for_plan(*pair, tcp_established=True)
    assert len(lock.connections) == 2 and lock.outside_peer == []
    lock.lock()  # no nft, nothing outside: a no-op
    lone = _plan_of(_connection(("127.0.0.1", 80), ("10.0.0.2", 5000), 1))
    with pytest.raises(inet_lock.NetworkLockUnavailable) as caught:
        inet_lock.ConnectionLock.for_plan(*lone, tcp_established=True)
    assert "pid 100 fd 3: TCP socket 127.0.0.1:80 -> 10.0.0.2:5000" in str(caught.value)
    assert "nftables" in str(caught.value) and caught.value.exit_code == 4


def _lock_drops_until_unlocked() -> None:
    import subprocess

    from pycriu_restore.files.inet_lock import ConnectionLock, HeldSocket

    listener = socket.create_server(("127.0.0.1", 41234))
    client = socket.create_connection(("127.0.0.1", 41234))
    server, _ = listener.accept()
    here, there = client.getsockname(), client.getpeername()
    spec = _connection(here, there, 1)
    lock = ConnectionLock([HeldSocket(100, spec)], [HeldSocket(100, spec)], shutil.which("nft"), 2, "")
    lock.lock()
    table = subprocess.run(["nft", "list", "table", "inet", lock.table], capture_output=True, text=True,
                           check=True).stdout
    # Both directions, in both hooks (nft prints the matches in its own order).
    for sport, dport in ((here[1], 41234), (41234, here[1])):
        rule = f"ip saddr 127.0.0.1 tcp sport {sport} tcp dport {dport} ip daddr 127.0.0.1 drop"
        assert table.count(rule) == 2, table
    client.send(b"held")
    server.settimeout(0.5)
    with pytest.raises(TimeoutError):
        server.recv(4)  # dropped on its way out
    lock.unlock()
    assert subprocess.run(["nft", "list", "table", "inet", lock.table], capture_output=True).returncode != 0
    server.settimeout(10)
    assert server.recv(4) == b"held"  # retransmitted once the lock is gone
    lock.unlock()  # twice is harmless
    for s in (client, server, listener):
        s.close()


def test_network_lock_drops_the_connection_until_unlocked() -> None:
    if shutil.which("nft") is None:
        pytest.skip("nft not installed (Debian package nftables): the network lock needs it")
    _in_new_netns(_lock_drops_until_unlocked)  # nftables tables are per network namespace
