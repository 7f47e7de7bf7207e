"""Inet sockets (INETSK entries in files.img, tcp-stream-<ino>.img): TCP and UDP over IPv4/IPv6.

Three kinds of socket come back three ways (CRIU: criu/sk-inet.c ``open_inet_sk``):

  listening TCP   socket, bind to the dumped address and port, listen(backlog)
  UDP             socket, bind (if it was bound), connect (if it had a peer)
  ESTABLISHED TCP the *same* connection, rebuilt without a packet: TCP repair mode
                  (linux/tcp_repair.py), in the order of CRIU's libsoccr
                  (soccr/soccr.c ``libsoccr_restore``):

      repair on ─► bind(src) ─► queue seqs (rcv_nxt - inq, write_seq - outq) ─► connect(dst)
      (no SYN: straight to ESTABLISHED) ─► negotiated options (SACK, window scale,
      timestamps, MSS) ─► timestamp clock ─► receive queue ─► sent-but-unacked send queue
      ─► window ─► ... left in repair mode

A repaired socket stays in repair mode, silent, until every socket of the tree exists:
turned off earlier, it would send a window probe (and any unsent data) to a peer that may
not exist yet, and the peer's host answers with a reset. ``finish_socket`` then turns repair off,
sends the part of the send queue that had never been sent, and puts SO_REUSEADDR back.
That is CRIU's order too: its restorer turns repair off (``rst_tcp_socks_all``) only once
every task is restored and the network is unlocked.

SO_REUSEADDR and SO_REUSEPORT are forced on while the sockets are made, because several
of them may share one address (a listener and a connection it accepted, UDP sockets that
allowed it); ``finish_socket`` sets the dumped values once all are bound (CRIU: ``post_open_inet_sk``).

The plan side (``InetSocket``, ``TcpStream``) holds plain values, read from the images by
``read`` (pure: no root, no side effect); ``create_socket`` runs in the task that owns the
socket (or in the root, for a socket several tasks share), before it is seized, and
``finish_socket`` in the orchestrator once all tasks are restored (files/inet_lock.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from dataclasses import dataclass, replace

from pycriu_restore.files import park
from pycriu_restore.linux import sockopt, tcp_repair
from pycriu_restore.linux.tcp_repair import Window

ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR

# images/proto/sk_opts.proto ``sk_shutdown`` (NONE 0, READ 1, WRITE 2, BOTH 3) is
# shutdown(2)'s SHUT_* plus one (CRIU: sk_decode_shutdown).
SK_SHUTDOWN_NONE = 0


@dataclass(frozen=True)
class SocketOptions:
    """The SOL_SOCKET options of one socket, as dumped (images/proto/sk_opts.proto)."""

    sndbuf_bytes: int  # the kernel's value, which is twice what setsockopt was given
    rcvbuf_bytes: int
    snd_timeout_us: int = 0  # SO_SNDTIMEO; 0 = never
    rcv_timeout_us: int = 0
    reuseaddr: bool = False
    reuseport: bool = False
    priority: int | None = None
    rcvlowat: int | None = None
    mark: int | None = None
    keepalive: bool = False
    broadcast: bool = False
    dontroute: bool = False
    no_check: bool = False
    oobinline: bool = False
    passcred: bool = False
    passsec: bool = False
    linger_s: int | None = None  # SO_LINGER on, with this many seconds
    buf_lock: int | None = None  # SO_BUF_LOCK: which of the two sizes were fixed by the user
    bound_dev: str | None = None  # SO_BINDTODEVICE


@dataclass(frozen=True)
class IpOptions:
    """IP-level options (images/proto/sk_inet.proto IpOptsEntry); None = not in the image."""

    ttl: int | None = None
    tos: int | None = None
    freebind: bool | None = None
    pktinfo: bool | None = None


@dataclass(frozen=True)
class TcpOptions:
    """TCP-level options (TcpOptsEntry); None = not in the image (the kernel default stays)."""

    nodelay: bool | None = None
    cork: bool | None = None
    keepcnt: int | None = None
    keepidle_s: int | None = None
    keepintvl_s: int | None = None


@dataclass(frozen=True)
class TcpStream:
    """The state of one TCP connection (tcp-stream-<ino>.img), what TCP repair reads and writes.

    ``inq_seq`` is rcv_nxt and ``outq_seq`` is write_seq at dump (linux/tcp_repair.py draws
    them); ``inq`` are bytes received but not read by the application, ``outq`` bytes it
    wrote that the peer had not acknowledged, of which the last ``unsent_bytes`` were never
    sent at all.
    """

    inq_seq: int
    outq_seq: int
    inq: bytes
    outq: bytes
    unsent_bytes: int
    mss_clamp: int
    opt_mask: int  # TCPI_OPT_* bits: what the handshake negotiated
    snd_wscale: int
    rcv_wscale: int
    timestamp: int  # the TCP timestamp clock's value at dump (TCPI_OPT_TIMESTAMPS only)
    window: Window | None  # None: images from a kernel without TCP_REPAIR_WINDOW


@dataclass(frozen=True)
class InetSocket:
    """One inet socket as dumped: what it is, its addresses, options and, for a TCP
    connection, its stream."""

    ino: int  # the dumped socket's inode: names its tcp-stream image
    family: int  # AF_INET, AF_INET6
    sock_type: int  # SOCK_STREAM, SOCK_DGRAM
    proto: int  # IPPROTO_TCP, IPPROTO_UDP
    state: int  # TCP_* state (linux/tcp_repair.py); UDP: ESTABLISHED if connected, else CLOSE
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    backlog: int = 0
    flags: int = os.O_RDWR  # open file status flags (O_NONBLOCK)
    options: SocketOptions = SocketOptions(0, 0)
    ip: IpOptions = IpOptions()
    tcp: TcpOptions = TcpOptions()
    v6only: bool = False
    ifname: str | None = None  # IPv6: the interface a link-local address is scoped to
    shutdown: int = SK_SHUTDOWN_NONE
    stream: TcpStream | None = None  # TCP connections only

    @property
    def is_connection(self) -> bool:
        """A TCP socket with a peer: rebuilt through repair mode (CRIU's ``tcp_connection``)."""
        return self.proto == socket.IPPROTO_TCP and self.dst_port != 0

    def describe(self) -> str:
        """``TCP socket 127.0.0.1:41100`` / ``UDP socket [::1]:53 -> [::1]:5353``, for messages."""
        kind = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP"}.get(self.proto, f"proto {self.proto}")
        text = f"{kind} socket {format_endpoint(self.family, self.src_addr, self.src_port)}"
        if self.dst_port:
            text += f" -> {format_endpoint(self.family, self.dst_addr, self.dst_port)}"
        return text


def format_endpoint(family: int, addr: str, port: int) -> str:
    """``127.0.0.1:80`` or ``[::1]:80``."""
    return f"[{addr}]:{port}" if family == socket.AF_INET6 else f"{addr}:{port}"


# --- creating ---------------------------------------------------------------------------


def create_socket(sk: InetSocket) -> int:
    """Make the socket ``sk`` describes; the fd is returned parked high, close-on-exec.

    A TCP connection is left in repair mode: call ``finish_socket`` once every socket of the tree
    exists. Needs CAP_NET_ADMIN for a connection (repair mode, forced buffer sizes) and the
    network namespace the socket lived in.
    """
    sock = socket.socket(sk.family, sk.sock_type, sk.proto)
    try:
        if sk.v6only:  # before bind: it decides whether the port is taken on IPv4 too
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Sizes before the queues are refilled: the receive queue must fit the buffer.
        _set_buffers(sock, sk.options)
        if sk.is_connection:
            _repair_connection(sock, sk)
        else:
            if sk.src_port:
                _bind(sock, sk)
            if sk.state == tcp_repair.TCP_LISTEN:
                sock.listen(sk.backlog)
            if sk.dst_port:  # a connected UDP socket
                sock.connect(_sockaddr(sk.family, sk.dst_addr, sk.dst_port))
        _set_ip_options(sock, sk)
        _set_socket_options(sock, sk.options)
        if sk.proto == socket.IPPROTO_TCP:
            _set_tcp_options(sock, sk.tcp)
        if sk.shutdown != SK_SHUTDOWN_NONE:
            sock.shutdown(sk.shutdown - 1)
        # Status flags last: with O_NONBLOCK set earlier, nothing above would change, but
        # a blocking socket is what every step above assumes.
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, sk.flags & ~ACCESS_MODE)
        return park(sock.detach())
    except BaseException:
        sock.close()  # a socket in repair mode goes without a FIN or RST
        raise


def finish_socket(fd: int, sk: InetSocket) -> None:
    """Once every socket of the tree exists: leave repair mode, send what had never been
    sent, and put the dumped SO_REUSEADDR/SO_REUSEPORT back.

    Precondition: ``fd`` is the socket ``create_socket(sk)`` made (or a dup of it).
    """
    sock = socket.socket(fileno=fd)
    try:
        if sk.is_connection:
            tcp_repair.repair_off(fd)  # one window probe: the peer answers with its window
            stream = sk.stream
            assert stream is not None, f"finish_socket: {sk.describe()} is a connection without a stream"
            if stream.unsent_bytes:
                _send_all_now(sock, stream.outq[len(stream.outq) - stream.unsent_bytes:], sk)
        # Repair mode's end also reset SO_REUSEADDR in the kernel (sk_reuse = SK_NO_REUSE).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(sk.options.reuseaddr))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(sk.options.reuseport))
    finally:
        sock.detach()


def _repair_connection(sock: socket.socket, sk: InetSocket) -> None:
    """Rebuild an ESTABLISHED connection in repair mode (libsoccr_set_sk_data_noq, then
    libsoccr_restore without the unsent tail). Leaves the socket in repair mode."""
    stream = sk.stream
    assert stream is not None, f"_repair_connection: {sk.describe()} has no stream"
    fd = sock.fileno()
    tcp_repair.repair_on(fd)  # first: nothing may be sent, and bind must ignore the listener
    _bind(sock, sk)
    # The kernel advances each sequence number by every byte written into its queue
    # below, so each starts where its queue's first byte was.
    tcp_repair.set_queue_seq(fd, tcp_repair.TCP_RECV_QUEUE, stream.inq_seq - len(stream.inq))
    tcp_repair.set_queue_seq(fd, tcp_repair.TCP_SEND_QUEUE, stream.outq_seq - len(stream.outq))
    tcp_repair.select_queue(fd, tcp_repair.TCP_NO_QUEUE)
    sock.connect(_sockaddr(sk.family, sk.dst_addr, sk.dst_port))  # repair: no SYN, ESTABLISHED
    tcp_repair.set_options(fd, negotiated_options(stream))
    if stream.opt_mask & tcp_repair.TCPI_OPT_TIMESTAMPS:
        # The peer drops segments whose timestamp went back (PAWS): continue the clock.
        tcp_repair.set_timestamp(fd, stream.timestamp)
    tcp_repair.fill_queue(fd, tcp_repair.TCP_RECV_QUEUE, stream.inq)
    sent = len(stream.outq) - stream.unsent_bytes
    # Sent but unacknowledged: the stack must know these were sent (an ACK may come for
    # them, or they are retransmitted). The unsent tail waits for finish_socket().
    tcp_repair.fill_queue(fd, tcp_repair.TCP_SEND_QUEUE, stream.outq[:sent])
    tcp_repair.select_queue(fd, tcp_repair.TCP_NO_QUEUE)
    if stream.window is not None:
        # After the queues: the kernel checks the window against rcv_nxt, which the
        # receive-queue refill has just moved to inq_seq.
        tcp_repair.set_window(fd, stream.window)


def negotiated_options(stream: TcpStream) -> list[tuple[int, int]]:
    """The TCP_REPAIR_OPTIONS list for ``stream``, in libsoccr's order."""
    options = []
    if stream.opt_mask & tcp_repair.TCPI_OPT_SACK:
        options.append((tcp_repair.TCPOPT_SACK_PERMITTED, 0))
    if stream.opt_mask & tcp_repair.TCPI_OPT_WSCALE:
        options.append((tcp_repair.TCPOPT_WINDOW, stream.snd_wscale | stream.rcv_wscale << 16))
    if stream.opt_mask & tcp_repair.TCPI_OPT_TIMESTAMPS:
        options.append((tcp_repair.TCPOPT_TIMESTAMP, 0))
    options.append((tcp_repair.TCPOPT_MAXSEG, stream.mss_clamp))
    return options


def _send_all_now(sock: socket.socket, data: bytes, sk: InetSocket) -> None:
    """Write the never-sent tail of the send queue. It fitted the send buffer at dump and
    the buffer has its dumped size, so it fits now: never wait (O_NONBLOCK or not)."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view, socket.MSG_DONTWAIT):]
        except BlockingIOError:
            raise OSError(errno.EAGAIN, f"{sk.describe()}: {len(view)} unsent bytes of the send "
                                        f"queue do not fit the send buffer") from None


def _sockaddr(family: int, addr: str, port: int, scope_id: int = 0) -> tuple:
    if family == socket.AF_INET6:
        return (addr, port, 0, scope_id)
    return (addr, port)


def _bind(sock: socket.socket, sk: InetSocket) -> None:
    """bind() to the dumped source address (CRIU: inet_bind).

    An IPv6 address is "tentative" for a while after it appears and bind() refuses it;
    IP_FREEBIND allows it, and is put back off unless the image had it on.
    """
    scope_id = socket.if_nametoindex(sk.ifname) if sk.ifname else 0
    freebind_for_bind = sk.family == socket.AF_INET6 and not sk.ip.freebind
    if freebind_for_bind:
        sock.setsockopt(socket.IPPROTO_IP, sockopt.IP_FREEBIND, 1)
    sock.bind(_sockaddr(sk.family, sk.src_addr, sk.src_port, scope_id))
    if freebind_for_bind:
        sock.setsockopt(socket.IPPROTO_IP, sockopt.IP_FREEBIND, 0)


def _set_buffers(sock: socket.socket, o: SocketOptions) -> None:
    """SO_SNDBUF/SO_RCVBUF as dumped. The dumped values are the kernel's doubled ones
    (socket(7)), so half of each is passed; the FORCE variants pass net.core.*mem_max
    (CRIU: sk_setbufs_ns). Both sizes end locked; SO_BUF_LOCK (later) says what stays so."""
    if o.sndbuf_bytes:
        sock.setsockopt(socket.SOL_SOCKET, sockopt.SO_SNDBUFFORCE, o.sndbuf_bytes // 2)
    if o.rcvbuf_bytes:
        sock.setsockopt(socket.SOL_SOCKET, sockopt.SO_RCVBUFFORCE, o.rcvbuf_bytes // 2)


def _set_socket_options(sock: socket.socket, o: SocketOptions) -> None:
    """The rest of the SOL_SOCKET options, in CRIU's order (criu/sockets.c restore_socket_opts)."""
    sol = socket.SOL_SOCKET
    if o.buf_lock is not None:
        sock.setsockopt(sol, sockopt.SO_BUF_LOCK, o.buf_lock)
    if o.priority is not None:
        sock.setsockopt(sol, socket.SO_PRIORITY, o.priority)
    if o.rcvlowat is not None:
        sock.setsockopt(sol, socket.SO_RCVLOWAT, o.rcvlowat)
    if o.mark is not None:
        sock.setsockopt(sol, socket.SO_MARK, o.mark)
    for enabled, option in ((o.passcred, socket.SO_PASSCRED), (o.passsec, socket.SO_PASSSEC),
                            (o.dontroute, socket.SO_DONTROUTE), (o.no_check, sockopt.SO_NO_CHECK),
                            (o.broadcast, socket.SO_BROADCAST), (o.oobinline, socket.SO_OOBINLINE),
                            (o.keepalive, socket.SO_KEEPALIVE)):
        if enabled:
            sock.setsockopt(sol, option, 1)
    if o.linger_s is not None:
        sock.setsockopt(sol, socket.SO_LINGER, bytes(sockopt.Linger(1, o.linger_s)))
    for timeout_us, option in ((o.snd_timeout_us, socket.SO_SNDTIMEO), (o.rcv_timeout_us, socket.SO_RCVTIMEO)):
        if timeout_us:
            sock.setsockopt(sol, option, bytes(sockopt.Timeval(timeout_us // 1_000_000, timeout_us % 1_000_000)))
    if o.bound_dev:
        sock.setsockopt(sol, socket.SO_BINDTODEVICE, o.bound_dev.encode())


def _set_ip_options(sock: socket.socket, sk: InetSocket) -> None:
    """IP-level options (CRIU: restore_ip_opts); an IPv6 socket has no TOS/TTL in the image."""
    ip = sk.ip
    if sk.family == socket.AF_INET6:
        if ip.freebind is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, sockopt.IPV6_FREEBIND, int(ip.freebind))
        if ip.pktinfo is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, int(ip.pktinfo))
        return
    if ip.freebind is not None:
        sock.setsockopt(socket.IPPROTO_IP, sockopt.IP_FREEBIND, int(ip.freebind))
    if ip.pktinfo is not None:
        sock.setsockopt(socket.IPPROTO_IP, sockopt.IP_PKTINFO, int(ip.pktinfo))
    if ip.tos is not None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, ip.tos)
    if ip.ttl is not None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ip.ttl)


def _set_tcp_options(sock: socket.socket, t: TcpOptions) -> None:
    """TCP_NODELAY, TCP_CORK and keepalive timing (CRIU: restore_tcp_opts)."""
    for value, option in ((t.nodelay, socket.TCP_NODELAY), (t.cork, socket.TCP_CORK),
                          (t.keepcnt, socket.TCP_KEEPCNT), (t.keepidle_s, socket.TCP_KEEPIDLE),
                          (t.keepintvl_s, socket.TCP_KEEPINTVL)):
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, int(value))


# --- the plan side: images -> InetSocket ------------------------------------------------
#
# An INETSK FileEntry (files.img, ``isk``) holds the socket; a connected TCP socket also has
# tcp-stream-<ino in hex>.img with its sequence numbers, options and queues (inq bytes, then
# outq bytes, after the record). Addresses are stored as u32 words copied from the kernel's
# in_addr/in6_addr: network byte order bytes, read as little-endian words (CRIU:
# restore_sockaddr's memcpy).

# InetSkEntry.family / type / proto values restored, with their names (<sys/socket.h>,
# <netinet/in.h>).
FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
KINDS = {(socket.SOCK_STREAM, socket.IPPROTO_TCP): "TCP", (socket.SOCK_DGRAM, socket.IPPROTO_UDP): "UDP"}
# The states each protocol may be in (anything else: "in state X: not restored").
TCP_STATES = (tcp_repair.TCP_LISTEN, tcp_repair.TCP_ESTABLISHED, tcp_repair.TCP_CLOSE)
UDP_STATES = (tcp_repair.TCP_ESTABLISHED, tcp_repair.TCP_CLOSE)
_ADDR_WORDS = {socket.AF_INET: 1, socket.AF_INET6: 4}


@dataclass(frozen=True)
class InetSocketFd:
    """One fd holding an inet socket: the spec ``read`` puts in ``Task.files``."""

    fd: int
    cloexec: bool
    file_id: int  # FileEntry id: fds (of one or several tasks) with one id are one socket
    sock: InetSocket


SPECS = (InetSocketFd,)


def read(ctx) -> InetSocketFd:
    """The INETSK entry of one fd, checked and turned into an ``InetSocketFd`` (pure).

    ``ctx`` is a files/registry.py FdContext. Refuses (naming task, fd and socket) what
    ``create_socket`` cannot rebuild; a connection's tcp-stream image is read here too.
    """
    if not ctx.entry.HasField("isk"):
        raise ctx.inconsistent("type INETSK without its isk payload")
    isk = ctx.entry.isk
    if isk.family not in FAMILIES:
        raise ctx.refuse(f"inet socket of address family {isk.family}")
    kind = KINDS.get((isk.type, isk.proto))
    if kind is None:
        raise ctx.refuse(f"inet socket of type {isk.type}, protocol {isk.proto} (only TCP and UDP are restored)")
    src_addr = _address(ctx, isk.family, isk.src_addr, "src_addr")
    dst_addr = _address(ctx, isk.family, isk.dst_addr, "dst_addr")
    desc = f"{kind} socket {format_endpoint(isk.family, src_addr, isk.src_port)}"
    if isk.dst_port:
        desc += f" -> {format_endpoint(isk.family, dst_addr, isk.dst_port)}"
    state_name = tcp_repair.STATE_NAMES.get(isk.state, str(isk.state))
    if isk.state not in (TCP_STATES if kind == "TCP" else UDP_STATES):
        raise ctx.refuse(f"{desc} in state {state_name}")
    if kind == "TCP" and isk.state == tcp_repair.TCP_CLOSE and isk.dst_port:
        raise ctx.refuse(f"{desc} in state CLOSE with a peer (a reset connection)")
    if kind == "TCP" and isk.state == tcp_repair.TCP_ESTABLISHED and not isk.dst_port:
        raise ctx.inconsistent(f"{desc}: ESTABLISHED without a peer port")
    if kind == "TCP" and isk.state == tcp_repair.TCP_LISTEN and isk.dst_port:
        raise ctx.inconsistent(f"{desc}: LISTEN with a peer port")
    if kind == "TCP" and isk.HasField("shutdown") and isk.shutdown != SK_SHUTDOWN_NONE:
        # A TCP shutdown is a FIN in a queue: CRIU rebuilds it with a raw packet (libnet).
        raise ctx.refuse(f"{desc} in state {state_name} shut down ({isk.shutdown})")
    if isk.HasField("ns_id"):
        task_ns = ctx.images.ids(ctx.pid).net_ns_id
        if isk.ns_id != task_ns:
            raise ctx.refuse(f"{desc} of network namespace {isk.ns_id} (the task's is {task_ns})")
    if len(isk.opts.so_filter):
        raise ctx.refuse(f"{desc} with a socket filter (SO_ATTACH_FILTER)")
    if isk.HasField("ip_opts") and isk.ip_opts.HasField("raw"):
        raise ctx.refuse(f"{desc} with raw-socket IP options")
    tcp = _tcp_options(isk)
    stream = None
    if kind == "TCP" and isk.dst_port:
        found = ctx.images.tcp_stream(isk.ino)
        stream = _stream(ctx, isk.ino, desc, found)
        tse = found[0]
        # Older CRIU kept these two in the stream record; CRIU still applies them when set.
        if tse.HasField("nodelay") and tse.nodelay and tcp.nodelay is None:
            tcp = replace(tcp, nodelay=True)
        if tse.HasField("cork") and tse.cork and tcp.cork is None:
            tcp = replace(tcp, cork=True)
    sock = InetSocket(
        ino=isk.ino, family=isk.family, sock_type=isk.type, proto=isk.proto, state=isk.state,
        src_addr=src_addr, src_port=isk.src_port, dst_addr=dst_addr, dst_port=isk.dst_port,
        backlog=isk.backlog, flags=isk.flags, options=_socket_options(isk.opts), ip=_ip_options(isk),
        tcp=tcp, v6only=isk.v6only, ifname=isk.ifname if isk.HasField("ifname") else None,
        shutdown=isk.shutdown if kind == "UDP" else SK_SHUTDOWN_NONE,
        stream=stream,
    )
    return InetSocketFd(fd=ctx.fd, cloexec=ctx.cloexec, file_id=ctx.file_id, sock=sock)


def open(spec: InetSocketFd) -> int:  # noqa: A001 - the registry's name for "create by file id"
    """The socket of ``spec``, parked high (files/registry.py: created by file id)."""
    return create_socket(spec.sock)


def _address(ctx, family: int, words, field: str) -> str:
    """The text form of an address stored as u32 words (network-order bytes)."""
    need = _ADDR_WORDS[family]
    # CRIU 0.1 wrote 4 words for IPv4 too: the first is the address.
    if len(words) < need or (family == socket.AF_INET6 and len(words) != need):
        raise ctx.inconsistent(f"isk.{field} has {len(words)} words, an {FAMILIES[family]} address needs {need}")
    raw = b"".join(int(w).to_bytes(4, "little") for w in list(words)[:need])
    return socket.inet_ntop(family, raw)


def _socket_options(o) -> SocketOptions:
    """SkOptsEntry -> SocketOptions (images/proto/sk_opts.proto)."""
    def opt(name: str):
        return getattr(o, name) if o.HasField(name) else None

    return SocketOptions(
        sndbuf_bytes=o.so_sndbuf, rcvbuf_bytes=o.so_rcvbuf,
        snd_timeout_us=o.so_snd_tmo_sec * 1_000_000 + o.so_snd_tmo_usec,
        rcv_timeout_us=o.so_rcv_tmo_sec * 1_000_000 + o.so_rcv_tmo_usec,
        reuseaddr=o.reuseaddr, reuseport=o.so_reuseport, priority=opt("so_priority"),
        rcvlowat=opt("so_rcvlowat"), mark=opt("so_mark"), keepalive=o.so_keepalive,
        broadcast=o.so_broadcast, dontroute=o.so_dontroute, no_check=o.so_no_check,
        oobinline=bool(o.so_oobinline), passcred=o.so_passcred, passsec=o.so_passsec,
        linger_s=opt("so_linger"), buf_lock=opt("so_buf_lock"), bound_dev=opt("so_bound_dev") or None,
    )


def _ip_options(isk) -> IpOptions:
    if not isk.HasField("ip_opts"):
        return IpOptions()
    ip = isk.ip_opts

    def opt(name: str):
        return getattr(ip, name) if ip.HasField(name) else None

    return IpOptions(ttl=opt("ttl"), tos=opt("tos"), freebind=opt("freebind"), pktinfo=opt("pktinfo"))


def _tcp_options(isk) -> TcpOptions:
    """TcpOptsEntry; the keepalive timing of old images sits in SkOptsEntry (tcp_keep*), which
    CRIU still applies, before TcpOptsEntry's."""
    o = isk.opts
    t = isk.tcp_opts if isk.HasField("tcp_opts") else None

    def pick(new: str, old: str):
        if t is not None and t.HasField(new):
            return getattr(t, new)
        return getattr(o, old) if o.HasField(old) else None

    return TcpOptions(
        nodelay=t.nodelay if t is not None and t.HasField("nodelay") else None,
        cork=t.cork if t is not None and t.HasField("cork") else None,
        keepcnt=pick("keepcnt", "tcp_keepcnt"), keepidle_s=pick("keepidle", "tcp_keepidle"),
        keepintvl_s=pick("keepintvl", "tcp_keepintvl"),
    )


def _stream(ctx, ino: int, desc: str, found) -> TcpStream:
    """tcp-stream-<ino>.img of a connection (``found``: ImageSet.tcp_stream's answer), checked
    as CRIU's restore_tcp_conn_state does."""
    name = f"tcp-stream-{ino:x}.img"
    if found is None:
        raise ctx.inconsistent(f"{desc} is ESTABLISHED but {name} is missing or empty")
    tse, inq, outq = found
    if len(inq) != tse.inq_len or len(outq) != tse.outq_len:
        raise ctx.inconsistent(f"{name}: queues of {len(inq)}+{len(outq)} bytes, the record says "
                               f"{tse.inq_len}+{tse.outq_len}")
    if not tse.HasField("unsq_len"):
        raise ctx.inconsistent(f"{name}: no unsq_len (the unsent part of the send queue)")
    if tse.unsq_len > tse.outq_len:
        raise ctx.inconsistent(f"{name}: unsq_len {tse.unsq_len} exceeds outq_len {tse.outq_len}")
    if tse.opt_mask & tcp_repair.TCPI_OPT_WSCALE and not tse.HasField("rcv_wscale"):
        raise ctx.inconsistent(f"{name}: opt_mask {tse.opt_mask:#x} has window scaling but no rcv_wscale")
    if tse.opt_mask & tcp_repair.TCPI_OPT_TIMESTAMPS and not tse.HasField("timestamp"):
        raise ctx.inconsistent(f"{name}: opt_mask {tse.opt_mask:#x} has timestamps but no timestamp")
    window = None
    if tse.HasField("snd_wnd"):
        window = Window(snd_wl1=tse.snd_wl1, snd_wnd=tse.snd_wnd, max_window=tse.max_window,
                        rcv_wnd=tse.rcv_wnd, rcv_wup=tse.rcv_wup)
    wscale = bool(tse.opt_mask & tcp_repair.TCPI_OPT_WSCALE)
    return TcpStream(
        inq_seq=tse.inq_seq, outq_seq=tse.outq_seq, inq=inq, outq=outq, unsent_bytes=tse.unsq_len,
        mss_clamp=tse.mss_clamp, opt_mask=tse.opt_mask,
        snd_wscale=tse.snd_wscale if wscale else 0, rcv_wscale=tse.rcv_wscale if wscale else 0,
        timestamp=tse.timestamp if tse.opt_mask & tcp_repair.TCPI_OPT_TIMESTAMPS else 0,
        window=window,
    )
