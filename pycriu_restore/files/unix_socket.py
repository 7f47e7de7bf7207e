"""Unix sockets (UNIXSK entries in files.img, queued data in sk-queues.img): socketpairs.

Both ends of a connected, unnamed pair are in the images (as two entries that name each
other as peer). A new socketpair takes their place; the bytes each end had not read at
dump are written back through the other end, in order, so the reader finds them first.
The pair is one shared object (created by the root before it forks); each end is parked
under its own inode number, and every fd holding an end is a dup of it.
"""

from __future__ import annotations

import fcntl
import os
import socket

from pycriu_restore.files import install as install_fd, park
from pycriu_restore.files.registry import FdContext, InstallContext, SharedObject, TreeContext
from pycriu_restore.plan.model import UnixSocketEnd, UnixSocketPair

SPECS = (UnixSocketEnd,)

# <asm-generic/socket.h>: set a buffer size past net.core.[wr]mem_max (needs CAP_NET_ADMIN).
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# <linux/net.h> socket types; CRIU's sk_unix.proto names them STREAM/DGRAM/SEQPACKET.
SOCK_TYPES = {1: "stream", 2: "datagram", 5: "seqpacket"}
TCP_ESTABLISHED = 1  # CRIU reuses the TCP state names for unix sockets


def read(ctx: FdContext) -> UnixSocketEnd:
    """The end; refused unless it is one end of an unnamed connected pair in the images."""
    if not ctx.entry.HasField("usk"):
        raise ctx.inconsistent("type UNIXSK without its usk payload")
    usk = ctx.entry.usk
    what = f"unix socket {usk.ino}"
    if usk.name:
        raise ctx.refuse(f"{what} bound to {usk.name!r} (only socketpairs are restored)")
    if usk.type not in SOCK_TYPES:
        raise ctx.refuse(f"{what} of type {usk.type}")
    peers = [e.usk for e in ctx.files.values() if e.HasField("usk") and e.usk.ino == usk.peer]
    if usk.state != TCP_ESTABLISHED or not peers:
        raise ctx.refuse(f"{what} not connected to a socket in the images (state {usk.state}, peer {usk.peer})")
    if peers[0].peer != usk.ino:
        raise ctx.inconsistent(f"{what}: its peer {usk.peer} is connected to {peers[0].peer}")
    return UnixSocketEnd(fd=ctx.fd, socket_id=usk.ino, flags=usk.flags, cloexec=ctx.cloexec)


def shared(ctx: TreeContext) -> tuple[SharedObject, ...]:
    """One pair per pair of ends held, with each end's queued data and buffer sizes."""
    held = sorted({f.socket_id for t in ctx.tasks for f in t.files if isinstance(f, UnixSocketEnd)})
    if not held:
        return ()
    by_ino = {e.usk.ino: (e.id, e.usk) for e in ctx.files.values() if e.HasField("usk")}
    queues: dict[int, list[bytes]] = {}
    for packet, data in ctx.images.sk_queues():
        queues.setdefault(packet.id_for, []).append(data or b"")
    pairs, done = [], set()
    for ino in held:
        if ino in done:
            continue
        file_id, usk = by_ino[ino]
        peer_id, peer = by_ino[usk.peer]  # read() checked the pair
        pair = UnixSocketPair(a=ino, b=usk.peer, sock_type=usk.type,
                              queued_a=tuple(queues.get(file_id, ())), queued_b=tuple(queues.get(peer_id, ())),
                              bufs_a=_socket_bufs(usk), bufs_b=_socket_bufs(peer))
        pairs.append(SharedObject("UNIXSK", ino, 2, pair))
        done.update((ino, usk.peer))
    return tuple(pairs)


def parked_keys(obj: SharedObject) -> tuple[int, int]:
    return obj.spec.a, obj.spec.b


def create(obj: SharedObject) -> tuple[int, int]:
    """A new connected pair standing for ``pair.a`` and ``pair.b``, refilled; fds parked high.

    The queues are written while both ends are still blocking and empty of readers, which
    fits: each end's queue was at most its receive buffer at dump.
    """
    pair: UnixSocketPair = obj.spec
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


def install(end: UnixSocketEnd, ctx: InstallContext) -> None:
    """A dup of the end at ``end.fd``; its status flags (O_NONBLOCK) go on the open file."""
    (parked,) = ctx.parked("UNIXSK", end.socket_id)
    temp = park(os.dup(parked))
    try:
        fcntl.fcntl(temp, fcntl.F_SETFL, end.flags & os.O_NONBLOCK)
    except BaseException:
        os.close(temp)
        raise
    install_fd(temp, end.fd, end.cloexec)


def set_buffers(sock: socket.socket, bufs: tuple[int, int] | None) -> None:
    """Give ``sock`` the dumped (SO_SNDBUF, SO_RCVBUF). Those are the kernel's doubled values
    (socket(7)), so half of each is what setsockopt takes, as CRIU's restore_socket_opts does."""
    if bufs is None:
        return
    sndbuf, rcvbuf = bufs
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf // 2)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf // 2)


def _socket_bufs(usk) -> tuple[int, int] | None:
    """A unix socket's (SO_SNDBUF, SO_RCVBUF) as dumped, or None if the image has no options."""
    if not usk.HasField("opts"):
        return None
    return usk.opts.so_sndbuf, usk.opts.so_rcvbuf
