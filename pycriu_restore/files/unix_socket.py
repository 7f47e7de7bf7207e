"""Unix sockets (UNIXSK entries in files.img, queued data in sk-queues.img): socketpairs.

Both ends of a connected, unnamed pair are in the images (as two entries that name each
other as peer). A new socketpair takes their place; the bytes each end had not read at
dump are written back through the other end, in order, so the reader finds them first.
"""

from __future__ import annotations

import socket

from pycriu_restore.files import park
from pycriu_restore.plan.model import UnixSocketPair

# <asm-generic/socket.h>: set a buffer size past net.core.[wr]mem_max (needs CAP_NET_ADMIN).
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def create(pair: UnixSocketPair) -> tuple[int, int]:
    """A new connected pair standing for ``pair.a`` and ``pair.b``, refilled; fds parked high.

    The queues are written while both ends are still blocking and empty of readers, which
    fits: each end's queue was at most its receive buffer at dump.
    """
    a, b = socket.socketpair(socket.AF_UNIX, pair.sock_type)
    try:
        # Sizes first: a queue may need the dumped send buffer to fit.
        set_buffers(a, pair.bufs_a)
        set_buffers(b, pair.bufs_b)
        for data in pair.queued_a:  # unread by a: it arrives through b
            b.sendall(data)
        for data in pair.queued_b:
            a.sendall(data)
        return park(a.detach()), park(b.detach())
    finally:
        a.close()
        b.close()


def set_buffers(sock: socket.socket, bufs: tuple[int, int] | None) -> None:
    """Give ``sock`` the dumped (SO_SNDBUF, SO_RCVBUF). Those are the kernel's doubled values
    (socket(7)), so half of each is what setsockopt takes, as CRIU's restore_socket_opts does."""
    if bufs is None:
        return
    sndbuf, rcvbuf = bufs
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf // 2)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf // 2)
