"""Unix sockets (UNIXSK entries in files.img, queued data in sk-queues.img): socketpairs.

Both ends of a connected, unnamed pair are in the images (as two entries that name each
other as peer). A new socketpair takes their place; the bytes each end had not read at
dump are written back through the other end, in order, so the reader finds them first.
"""

from __future__ import annotations

import socket

from pycriu_restore.files import park
from pycriu_restore.plan.model import UnixSocketPair


def create(pair: UnixSocketPair) -> tuple[int, int]:
    """A new connected pair standing for ``pair.a`` and ``pair.b``, refilled; fds parked high.

    The queues are written while both ends are still blocking and empty of readers, which
    fits: each end's queue was at most its receive buffer at dump.
    """
    a, b = socket.socketpair(socket.AF_UNIX, pair.sock_type)
    try:
        for data in pair.queued_a:  # unread by a: it arrives through b
            b.sendall(data)
        for data in pair.queued_b:
            a.sendall(data)
        return park(a.detach()), park(b.detach())
    finally:
        a.close()
        b.close()
