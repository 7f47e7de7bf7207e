"""TCP repair mode (``TCP_REPAIR``): read and rebuild a TCP connection without the network.

A socket in repair mode (Linux 3.5+, needs CAP_NET_ADMIN) sends nothing: ``connect()``
moves it straight to ESTABLISHED without a SYN, ``close()`` drops it without FIN or RST, and
``send()`` with a queue selected writes bytes straight into that queue. With it a checkpoint
tool reads a connection's state and makes the same connection again elsewhere; this module
is the thin layer over the socket options, as CRIU's libsoccr (soccr/soccr.c) is in C:

    TCP_REPAIR          on / off (off sends one window probe; OFF_NO_WP does not)
    TCP_REPAIR_QUEUE    select the queue (none, receive, send) the next two act on
    TCP_QUEUE_SEQ       get/set the selected queue's sequence number
    TCP_REPAIR_OPTIONS  what the handshake negotiated: MSS, window scale, SACK, timestamps
    TCP_REPAIR_WINDOW   snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup (Linux 4.8+)
    TCP_TIMESTAMP       the connection's timestamp clock (so the peer's PAWS check passes)

The sequence numbers, as libsoccr draws them::

          output queue                          input queue
    net <---------------------- sk        net ----------------------> sk
          ^ snd_una  ^ write_seq                 ^ copied_seq  ^ rcv_nxt

    outq_len = write_seq - snd_una (SIOCOUTQ)    inq_len = rcv_nxt - copied_seq (SIOCINQ)
    TCP_QUEUE_SEQ of the send queue = write_seq  TCP_QUEUE_SEQ of the receive queue = rcv_nxt

On restore the kernel advances a queue's sequence number by every byte written into the
queue, so the caller sets ``seq - len`` first and writes the ``len`` bytes after.

Everything here works on an fd number and takes or returns plain integers and bytes; it
knows nothing of images. Constants and structs come from <linux/tcp.h>, <linux/sockios.h>,
<asm-generic/ioctls.h> and <netinet/tcp.h>; tests/test_linux_tcp_repair.py compares them
with the headers.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import socket
from dataclasses import dataclass

# <netinet/in.h>: the socket option level of TCP options.
SOL_TCP = 6

# <linux/tcp.h>: socket options.
TCP_MAXSEG = 2
TCP_INFO = 11
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29

# <linux/tcp.h>: values of TCP_REPAIR.
TCP_REPAIR_ON = 1
TCP_REPAIR_OFF = 0
TCP_REPAIR_OFF_NO_WP = -1

# <linux/tcp.h>: values of TCP_REPAIR_QUEUE.
TCP_NO_QUEUE = 0
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2

# <linux/tcp.h>: tcp_info.tcpi_options bits, as CRIU stores them in TcpStreamEntry.opt_mask.
TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4

# <netinet/tcp.h>: TCP option kinds, the opt_code of struct tcp_repair_opt.
TCPOPT_MAXSEG = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERMITTED = 4
TCPOPT_TIMESTAMP = 8

# <netinet/tcp.h>: connection states (tcp_info.tcpi_state, InetSkEntry.state).
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11

STATE_NAMES = {TCP_ESTABLISHED: "ESTABLISHED", TCP_SYN_SENT: "SYN_SENT", TCP_SYN_RECV: "SYN_RECV",
               TCP_FIN_WAIT1: "FIN_WAIT1", TCP_FIN_WAIT2: "FIN_WAIT2", TCP_TIME_WAIT: "TIME_WAIT",
               TCP_CLOSE: "CLOSE", TCP_CLOSE_WAIT: "CLOSE_WAIT", TCP_LAST_ACK: "LAST_ACK",
               TCP_LISTEN: "LISTEN", TCP_CLOSING: "CLOSING"}

# <asm-generic/ioctls.h> (FIONREAD, TIOCOUTQ, which <linux/sockios.h> names SIOCINQ,
# SIOCOUTQ) and <linux/sockios.h> (SIOCOUTQNSD): bytes in a socket's queues.
SIOCINQ = 0x541B
SIOCOUTQ = 0x5411
SIOCOUTQNSD = 0x894B


class TcpRepairOpt(ctypes.Structure):
    """``struct tcp_repair_opt`` from <linux/tcp.h>: one negotiated option for TCP_REPAIR_OPTIONS."""

    _fields_ = [
        ("opt_code", ctypes.c_uint32),
        ("opt_val", ctypes.c_uint32),
    ]


class TcpRepairWindow(ctypes.Structure):
    """``struct tcp_repair_window`` from <linux/tcp.h>: the window state (TCP_REPAIR_WINDOW)."""

    _fields_ = [
        ("snd_wl1", ctypes.c_uint32),
        ("snd_wnd", ctypes.c_uint32),
        ("max_window", ctypes.c_uint32),
        ("rcv_wnd", ctypes.c_uint32),
        ("rcv_wup", ctypes.c_uint32),
    ]


class TcpInfoHead(ctypes.Structure):
    """The first bytes of ``struct tcp_info`` (<linux/tcp.h>): state, options, window scales.

    The kernel copies min(optlen, its size) bytes, so asking for only this head is allowed,
    as libsoccr does with its own ``struct soccr_tcp_info``.
    """

    _fields_ = [
        ("tcpi_state", ctypes.c_uint8),
        ("tcpi_ca_state", ctypes.c_uint8),
        ("tcpi_retransmits", ctypes.c_uint8),
        ("tcpi_probes", ctypes.c_uint8),
        ("tcpi_backoff", ctypes.c_uint8),
        ("tcpi_options", ctypes.c_uint8),
        ("tcpi_snd_wscale", ctypes.c_uint8, 4),  # little-endian bitfields: snd is the low nibble
        ("tcpi_rcv_wscale", ctypes.c_uint8, 4),
    ]


@dataclass(frozen=True)
class Window:
    """The window state TCP_REPAIR_WINDOW reads and writes (sequence numbers and byte counts)."""

    snd_wl1: int
    snd_wnd: int
    max_window: int
    rcv_wnd: int
    rcv_wup: int


def _sock(fd: int) -> socket.socket:
    """A socket object over ``fd`` that does not own it (closing it would close ``fd``)."""
    return socket.socket(fileno=fd)


def _setsockopt_int(fd: int, option: int, value: int) -> None:
    sock = _sock(fd)
    try:
        sock.setsockopt(SOL_TCP, option, value)
    finally:
        sock.detach()


def _getsockopt_int(fd: int, option: int) -> int:
    sock = _sock(fd)
    try:
        return sock.getsockopt(SOL_TCP, option)
    finally:
        sock.detach()


def repair_on(fd: int) -> None:
    """Put the TCP socket ``fd`` in repair mode. From now on it sends no packet.

    The kernel also sets SK_FORCE_REUSE: bind() then ignores every address conflict, which
    is what lets a restored connection share its port with a listener already bound there.
    """
    _setsockopt_int(fd, TCP_REPAIR, TCP_REPAIR_ON)


def repair_off(fd: int, window_probe: bool = True) -> None:
    """Leave repair mode. With ``window_probe`` the kernel sends one window probe, which
    makes the peer answer with its current window (CRIU's restorer leaves repair this way).
    The kernel resets SO_REUSEADDR (sk_reuse = SK_NO_REUSE): set it again afterwards."""
    _setsockopt_int(fd, TCP_REPAIR, TCP_REPAIR_OFF if window_probe else TCP_REPAIR_OFF_NO_WP)


def select_queue(fd: int, queue: int) -> None:
    """Select the queue (TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE) that TCP_QUEUE_SEQ,
    send() and recv() act on while in repair mode."""
    _setsockopt_int(fd, TCP_REPAIR_QUEUE, queue)


def get_queue_seq(fd: int, queue: int) -> int:
    """The sequence number of ``queue``: rcv_nxt for the receive queue, write_seq for the
    send queue. Precondition: repair mode."""
    select_queue(fd, queue)
    return _getsockopt_int(fd, TCP_QUEUE_SEQ) & 0xFFFFFFFF


def set_queue_seq(fd: int, queue: int, seq: int) -> None:
    """Set the sequence number ``queue`` starts from. Precondition: repair mode and the socket
    not yet connected (the kernel refuses once it is ESTABLISHED)."""
    select_queue(fd, queue)
    # getsockopt/setsockopt take a C int: pass the u32 as its signed twin.
    _setsockopt_int(fd, TCP_QUEUE_SEQ, ctypes.c_int32(seq & 0xFFFFFFFF).value)


def peek_queue(fd: int, queue: int, length: int) -> bytes:
    """The ``length`` bytes of ``queue`` without consuming them. Precondition: repair mode.

    One byte more is asked for, as libsoccr does, so that a queue longer than announced is
    noticed instead of cut.
    """
    select_queue(fd, queue)
    if length == 0:
        return b""
    sock = _sock(fd)
    try:
        data = sock.recv(length + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    finally:
        sock.detach()
    if len(data) != length:
        raise OSError(f"peek_queue: queue {queue} holds {len(data)} bytes, {length} expected")
    return data


def fill_queue(fd: int, queue: int, data: bytes) -> None:
    """Write ``data`` into ``queue`` as bytes already received (TCP_RECV_QUEUE) or sent but
    not acknowledged (TCP_SEND_QUEUE). Precondition: repair mode, connected.

    In repair mode the kernel builds one linear buffer per send() for the receive queue,
    so a large write can fail with ENOMEM; the chunk is then halved (libsoccr's __send_queue).
    """
    select_queue(fd, queue)
    sock = _sock(fd)
    try:
        view, chunk = memoryview(data), len(data)
        while view:
            try:
                sent = sock.send(view[:chunk])
            except OSError:
                if chunk <= 1024:
                    raise
                chunk //= 2
                continue
            view = view[sent:]
    finally:
        sock.detach()


def set_options(fd: int, options: list[tuple[int, int]]) -> None:
    """Apply what the handshake negotiated: (TCPOPT_* code, value) pairs, in one call.

    Precondition: repair mode, connected (the options are connection state)."""
    array_type = TcpRepairOpt * len(options)
    raw = array_type(*(TcpRepairOpt(code, value) for code, value in options))
    sock = _sock(fd)
    try:
        sock.setsockopt(SOL_TCP, TCP_REPAIR_OPTIONS, bytes(raw))
    finally:
        sock.detach()


def get_window(fd: int) -> Window:
    """The connection's window state. Precondition: repair mode."""
    sock = _sock(fd)
    try:
        raw = sock.getsockopt(SOL_TCP, TCP_REPAIR_WINDOW, ctypes.sizeof(TcpRepairWindow))
    finally:
        sock.detach()
    w = TcpRepairWindow.from_buffer_copy(raw.ljust(ctypes.sizeof(TcpRepairWindow), b"\0"))
    return Window(w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup)


def set_window(fd: int, window: Window) -> None:
    """Set the window state. Precondition: repair mode, connected; the kernel checks that
    snd_wl1 and rcv_wup are consistent with the queues' sequence numbers (EINVAL if not)."""
    raw = TcpRepairWindow(window.snd_wl1, window.snd_wnd, window.max_window, window.rcv_wnd, window.rcv_wup)
    sock = _sock(fd)
    try:
        sock.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW, bytes(raw))
    finally:
        sock.detach()


def get_timestamp(fd: int) -> int:
    """The connection's current TCP timestamp value (tcp_time_stamp plus its offset)."""
    return _getsockopt_int(fd, TCP_TIMESTAMP) & 0xFFFFFFFF


def set_timestamp(fd: int, value: int) -> None:
    """Make the connection's timestamp clock read ``value`` now. Precondition: repair mode."""
    _setsockopt_int(fd, TCP_TIMESTAMP, ctypes.c_int32(value & 0xFFFFFFFF).value)


def get_mss(fd: int) -> int:
    """TCP_MAXSEG: the MSS clamp (the largest segment the peer announced it takes)."""
    return _getsockopt_int(fd, TCP_MAXSEG)


def info_head(fd: int) -> TcpInfoHead:
    """The head of TCP_INFO: state, negotiated options, window scales."""
    sock = _sock(fd)
    try:
        raw = sock.getsockopt(SOL_TCP, TCP_INFO, ctypes.sizeof(TcpInfoHead))
    finally:
        sock.detach()
    return TcpInfoHead.from_buffer_copy(raw.ljust(ctypes.sizeof(TcpInfoHead), b"\0"))


def queue_bytes(fd: int, request: int) -> int:
    """Bytes in a socket queue: SIOCINQ (unread), SIOCOUTQ (unacknowledged), SIOCOUTQNSD
    (never sent)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, request, buf, True)
    return buf[0]
