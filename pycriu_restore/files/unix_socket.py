"""Unix sockets (UNIXSK entries in files.img, queued messages in sk-queues.img).

Every unix socket any task holds is made by the root before it forks, in one go
(:func:`create`, files/unix_build.py), and parked under its inode number; each fd holding it
is a dup (restore/shared.py). One place for all of them is what connections need: a client in
one task talks to a server end in another, a datagram socket sends to a name another task
bound, and a connection accepted from a listener can only be made by connecting to that
listener. How each socket comes back (:class:`Making`), following criu/sk-unix.c:

    ALONE      socket(), bind(name), listen(backlog) if it listened: unconnected sockets and
               listeners (open_unixsk_standalone)
    PAIR       socketpair(): two sockets connected to each other, neither made by accept()
               from a listener in the images (open_unixsk_pair_master); the bytes one end had
               not read are written through the other
    ACCEPTED   the server end of a connection accepted from a listener in the images: its
               client connects to the listener's name and the root accept()s it, so the
               server end shares the listener's name (getsockname) and the client sees it as
               its peer (getpeername), as after the original accept (CRIU uses a socketpair
               here and loses both names)
    CONNECTS   socket(), bind(name), connect(the peer's name): a datagram socket connect()ed
               to a bound one, a client of an accepted connection, or a client still waiting
               in a listener's backlog (post_open_standalone)

A socket's own name is bound first; relative names are bound from ``name_dir`` (the directory
CRIU resolved them in), a stale socket file at the path is removed first (unlink_sk), the file
gets the dumped mode and owner (restore_file_perms), and a name whose file had been deleted at
dump (``deleted``) is bound and then unlinked again once everything is connected
(bind_on_deleted). As in CRIU's bind_unix_sk, a connected stream or seqpacket socket whose
connection is remade by socketpair() is not bound: it would collide with its listener's name.

Queued messages (restore_unix_queue): what socket X had not read is sent, message by message
(datagram and seqpacket boundaries are kept), by a socket connected to X: the other end of its
pair or connection, else the first socket whose peer is X, else a throw-away sender made with
X (add_fake_unix_queuers: X is one end of a socketpair, then disconnected; a stream socket
whose peer had closed keeps that sender closed, so it reads the data and then end of file).
Buffers are raised while sending and set to the dumped values after; then shutdown(2).
Passed fds (SCM_RIGHTS) in the queues are refused (plan/coverage.py), as are sockets connected
to one outside the images (CRIU's --ext-unix-sk, which pycrestore does not have).
"""

from __future__ import annotations

import enum
import fcntl
import os
import socket
from dataclasses import dataclass

from pycriu_restore.files import install as install_fd, park
from pycriu_restore.files.registry import FdContext, InstallContext, SharedObject, TreeContext
from pycriu_restore.linux.tcp_repair import TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature
from pycriu_restore.plan.model import InheritedFile, UnixSocketEnd

SPECS = (UnixSocketEnd,)

# criu/sk-unix.c: UnixSkEntry.uflags bit of a socket outside the tree (the peer of one of
# ours, dumped with --ext-unix-sk); CRIU's other bits (USK_SERVICE, USK_CALLBACK, USK_INHERIT)
# never appear in a dump of an application.
USK_EXTERN = 1 << 0

# Socket types (<linux/net.h>; CRIU's sk_unix.proto names them STREAM/DGRAM/SEQPACKET).
SOCK_STREAM = int(socket.SOCK_STREAM)
SOCK_DGRAM = int(socket.SOCK_DGRAM)
SOCK_SEQPACKET = int(socket.SOCK_SEQPACKET)
SOCK_TYPES = {SOCK_STREAM: "stream", SOCK_DGRAM: "datagram", SOCK_SEQPACKET: "seqpacket"}
# CRIU reuses the TCP state names (<net/tcp_states.h>) for unix sockets.
STATES = {TCP_ESTABLISHED: "connected", TCP_CLOSE: "unconnected", TCP_LISTEN: "listening"}
# <linux/un.h>: the size of sockaddr_un.sun_path.
UNIX_PATH_MAX = 108
# images/sk-opts.proto enum sk_shutdown -> shutdown(2)'s how (<sys/socket.h> SHUT_RD/WR/RDWR),
# as CRIU's sk_decode_shutdown.
SHUTDOWN_HOW = {1: 0, 2: 1, 3: 2}


class Making(enum.Enum):
    """How the root re-creates one socket (see the module docstring)."""

    ALONE = "alone"
    PAIR = "pair"
    ACCEPTED = "accepted"
    CONNECTS = "connects"


@dataclass(frozen=True)
class UnixSocket:
    """One unix socket as dumped, and how it is made again."""

    socket_id: int  # its inode number: what a peer's ``peer`` names
    file_id: int  # its FileEntry id: what sk-queues.img's ``id_for`` names
    sock_type: int  # SOCK_STREAM / SOCK_DGRAM / SOCK_SEQPACKET
    state: int  # TCP_ESTABLISHED / TCP_CLOSE / TCP_LISTEN
    making: Making
    name: bytes = b""  # b"": unbound; b"\0...": abstract; else a path (no trailing NUL)
    name_dir: str = ""  # a relative path's directory (UnixSkEntry.name_dir), else ""
    bind: bool = False  # bind(name) it (an accepted socket gets its name from the listener)
    deleted: bool = False  # the path's file was gone at dump: bind, then unlink
    file_perms: tuple[int, int, int] | None = None  # (mode, uid, gid) of the socket file
    backlog: int = 0  # listen() backlog (LISTEN only)
    peer: int = 0  # the socket it is connected to (0: none)
    via: int = 0  # ACCEPTED and its client: the listener; CONNECTS: the socket it connects to
    queued: tuple[bytes, ...] = ()  # unread at dump, oldest first, one entry per message
    sender: int = 0  # the socket that writes ``queued`` (0: a throw-away one)
    bufs: tuple[int, int] | None = None  # (SO_SNDBUF, SO_RCVBUF) as dumped (doubled values)
    shutdown_how: int | None = None  # shutdown(2) how, or None

    @property
    def what(self) -> str:
        return describe(self.socket_id, self.sock_type, self.name)


@dataclass(frozen=True)
class UnixSockets:
    """Every unix socket of the tree, in the order the root makes them (the shared object)."""

    sockets: tuple[UnixSocket, ...]

    def by_id(self, socket_id: int) -> UnixSocket:
        for sk in self.sockets:
            if sk.socket_id == socket_id:
                return sk
        raise AssertionError(f"UnixSockets.by_id: no socket {socket_id}")


def describe(socket_id: int, sock_type: int, name: bytes) -> str:
    """``unix stream socket 222754 (/var/tmp/x.sock)`` for messages; '@' starts an abstract name."""
    kind = SOCK_TYPES.get(sock_type, f"type-{sock_type}")
    shown = ""
    if name:
        shown = " (@" + name[1:].decode(errors="replace").replace("\0", "@") + ")" if name[0] == 0 \
            else f" ({name.decode(errors='replace')})"
    return f"unix {kind} socket {socket_id}{shown}"


def socket_name(usk) -> bytes:
    """The name a socket was bound to: abstract names exactly, paths up to their first NUL
    (the kernel's unix_mkname_bsd stores one after the path when the caller passed the whole
    sockaddr_un, as crit's trailing ``=00`` shows)."""
    name = bytes(usk.name)
    if name and name[0] != 0:
        name = name.split(b"\0", 1)[0]
    return name


# --- plan time ---------------------------------------------------------------------------


def read(ctx: FdContext) -> UnixSocketEnd:
    """The fd; refused, naming the socket, unless pycrestore can make the socket again."""
    if not ctx.entry.HasField("usk"):
        raise ctx.inconsistent("type UNIXSK without its usk payload")
    usk = ctx.entry.usk
    name = socket_name(usk)
    what = describe(usk.ino, usk.type, name)
    if usk.type not in SOCK_TYPES:
        raise ctx.refuse(f"{what}: socket type {usk.type}")
    if usk.state not in STATES:
        raise ctx.refuse(f"{what} in state {usk.state} (only {', '.join(STATES.values())} sockets are restored)")
    if usk.state == TCP_LISTEN and (usk.type == SOCK_DGRAM or usk.peer):
        raise ctx.inconsistent(f"{what}: listening, but a datagram socket or connected to {usk.peer}")
    if len(bytes(usk.name)) > UNIX_PATH_MAX:
        raise ctx.inconsistent(f"{what}: name of {len(bytes(usk.name))} bytes, at most {UNIX_PATH_MAX} fit sockaddr_un")
    if name and name[0] != 0:
        if not name.startswith(b"/") and not usk.name_dir:
            raise ctx.refuse(f"{what}: relative name without the directory it was bound in (name_dir)")
    elif usk.deleted:
        raise ctx.inconsistent(f"{what}: an abstract or empty name cannot have a deleted file")
    if usk.peer:
        peers = [e.usk for e in ctx.files.values() if e.HasField("usk") and e.usk.ino == usk.peer]
        if not peers:
            raise ctx.refuse(f"{what} connected to unix socket {usk.peer} outside the restored tree "
                             "(CRIU restores it only with --ext-unix-sk)")
        peer = peers[0]
        if peer.uflags & USK_EXTERN:
            raise ctx.refuse(f"{what} connected to unix socket {usk.peer} outside the restored tree (dumped with "
                             f"--ext-unix-sk): pass an fd for it with --inherit-fd fd[N]:socket:[{usk.ino}]")
        if peer.type != usk.type:
            raise ctx.inconsistent(f"{what}: its peer {usk.peer} is of type {peer.type}")
        if peer.peer != usk.ino:  # one way: connect() to the peer's name
            peer_name = socket_name(peer)
            if not peer_name:
                raise ctx.inconsistent(f"{what}: connected to unbound socket {usk.peer}, which is not connected back")
            if peer.deleted:
                raise ctx.refuse(f"{what}: connected to {describe(peer.ino, peer.type, peer_name)}, "
                                 "whose socket file was deleted before the dump")
            if usk.type != SOCK_DGRAM and peer.state != TCP_LISTEN:
                raise ctx.inconsistent(f"{what}: connected to {usk.peer}, which neither listens nor is connected back")
    return UnixSocketEnd(fd=ctx.fd, socket_id=usk.ino, flags=usk.flags, cloexec=ctx.cloexec)


def inherit_key(ctx: FdContext) -> str:
    """``socket:[INO]``, as /proc/PID/fd shows it (criu/sk-unix.c socket_d_name)."""
    return f"socket:[{ctx.entry.usk.ino}]"


def shared(ctx: TreeContext) -> tuple[SharedObject, ...]:
    """One object holding every socket any task holds (each parked under its inode).

    A socket the caller hands over (--inherit-fd socket:[INO], files/inherited.py) is not
    made: no socket of the tree may be connected to it, and its queued messages are the
    caller's concern, not replayed (as CRIU marks it USK_INHERIT and skips its queue)."""
    held = {f.socket_id for t in ctx.tasks for f in t.files if isinstance(f, UnixSocketEnd)}
    inherited = {int(f.key[len("socket:["):-1]) for t in ctx.tasks for f in t.files
                 if isinstance(f, InheritedFile) and f.key.startswith("socket:[")}
    if not held:
        return ()
    entries = {e.usk.ino: e.usk for e in ctx.files.values() if e.HasField("usk")}
    for ino in sorted(held):
        peer = entries[ino].peer
        if peer and peer in inherited:
            raise UnsupportedFeature("files.img", f"{describe(ino, entries[ino].type, socket_name(entries[ino]))}: "
                                     f"connected to socket {peer}, which --inherit-fd replaces: not restored")
        if peer and peer not in held:  # read() checked it is in files.img
            raise UnsupportedFeature("files.img", f"{describe(ino, entries[ino].type, socket_name(entries[ino]))}: "
                                     f"its peer {peer} is held by no task (in flight in a queue?): not restored")
    skip = {entries[ino].id for ino in inherited if ino in entries}  # file ids whose queues are not replayed
    packets = [(p, data) for p, data in ctx.images.sk_queues() if p.id_for not in skip]
    return (SharedObject("UNIXSK", 0, len(held), plan_sockets([entries[i] for i in sorted(held)], packets)),)


def plan_sockets(entries: list, packets: list[tuple[object, bytes]]) -> UnixSockets:
    """Decide how each socket of ``entries`` (UnixSkEntry, peers included) is made, and which
    socket sends each one's queued messages (``packets``: sk-queues.img records with their
    bytes). Raises InconsistentImages for queues no socket can take."""
    by_ino = {u.ino: u for u in entries}
    by_file = {u.id: u for u in entries}
    queued: dict[int, list[bytes]] = {}
    for packet, data in packets:
        target = by_file.get(packet.id_for)
        if target is None:
            raise InconsistentImages("sk-queues.img", f"{len(data)} queued bytes for file id {packet.id_for}, "
                                     "which is no unix socket held by a task")
        queued.setdefault(target.ino, []).append(data)
    listeners = {_address(u): u for u in entries if u.state == TCP_LISTEN}
    making: dict[int, tuple[Making, int]] = {}
    for u in entries:
        if u.ino in making:
            continue
        peer = by_ino.get(u.peer)
        if peer is None:
            making[u.ino] = (Making.ALONE, 0)
        elif peer.peer != u.ino or peer.ino == u.ino:
            making[u.ino] = (Making.CONNECTS, peer.ino)
        else:
            server = _accepted_end(u, peer, listeners)
            if server is None:
                making[u.ino] = making[peer.ino] = (Making.PAIR, 0)
            else:
                listener = listeners[_address(server)]
                client = peer if server is u else u
                making[server.ino] = (Making.ACCEPTED, listener.ino)
                making[client.ino] = (Making.CONNECTS, listener.ino)
    queuers = {}
    for u in entries:  # the first socket connected to a socket that does not point back
        if u.peer and u.peer in by_ino:
            queuers.setdefault(u.peer, u.ino)
    sockets = []
    for u in entries:
        how, via = making[u.ino]
        if how in (Making.PAIR, Making.ACCEPTED) or (how is Making.CONNECTS and via != u.peer):
            sender = u.peer  # the other end of the connection
        else:
            sender = queuers.get(u.ino, 0)
        if u.state == TCP_LISTEN and queued.get(u.ino) and not sender:
            raise InconsistentImages("sk-queues.img", f"{describe(u.ino, u.type, socket_name(u))}: listening, with "
                                     "queued data but no client waiting")
        name = socket_name(u)
        # CRIU's bind_unix_sk leaves connected stream/seqpacket sockets unbound: an accepted
        # one shares its listener's name. A client that connects binds its own name first.
        binds = bool(name) and (u.type == SOCK_DGRAM or u.state != TCP_ESTABLISHED or how is Making.CONNECTS)
        sockets.append(UnixSocket(
            socket_id=u.ino, file_id=u.id, sock_type=u.type, state=u.state, making=how, name=name,
            name_dir=u.name_dir if name and name[0] != 0 and not name.startswith(b"/") else "",
            bind=binds, deleted=bool(u.deleted),
            file_perms=(u.file_perms.mode, u.file_perms.uid, u.file_perms.gid) if u.HasField("file_perms") else None,
            backlog=u.backlog if u.state == TCP_LISTEN else 0, peer=u.peer, via=via,
            queued=tuple(queued.get(u.ino, ())), sender=sender,
            bufs=(u.opts.so_sndbuf, u.opts.so_rcvbuf) if u.HasField("opts") else None,
            shutdown_how=SHUTDOWN_HOW.get(u.shutdown) if u.HasField("shutdown") else None))
    _check_paths(sockets)
    return UnixSockets(tuple(sockets))


def _address(u) -> tuple[str, bytes]:
    """What makes two names the same socket address: the directory of a relative path, the name."""
    name = socket_name(u)
    relative = bool(name) and name[0] != 0 and not name.startswith(b"/")
    return (u.name_dir if relative else "", name)


def _accepted_end(a, b, listeners: dict) -> object | None:
    """Of a connected stream/seqpacket pair, the end accept() made: the one that carries the
    name of a listener in the images (the kernel gives an accepted socket its listener's
    address) while the other does not. None if that cannot be told: then a socketpair."""
    if a.type == SOCK_DGRAM:
        return None
    matches = [s for s in (a, b) if socket_name(s) and _address(s) in listeners
               and listeners[_address(s)].type == s.type and not listeners[_address(s)].deleted]
    return matches[0] if len(matches) == 1 else None


def _check_paths(sockets: list[UnixSocket]) -> None:
    """Two sockets of the images cannot both be bound to one path (or one abstract name)."""
    seen: dict[tuple[str, bytes], UnixSocket] = {}
    for sk in sockets:
        if not sk.bind:
            continue
        key = (sk.name_dir, sk.name)
        if key in seen:
            raise UnsupportedFeature("files.img", f"{sk.what} and {seen[key].what} are bound to the same name "
                                     "(one of them to a deleted file): not restored")
        seen[key] = sk


# --- restore time -----------------------------------------------------------------------


def parked_keys(obj: SharedObject) -> tuple[int, ...]:
    return tuple(sk.socket_id for sk in obj.spec.sockets)


def create(obj: SharedObject) -> tuple[int, ...]:
    """Every socket of the tree, made, connected and refilled; their fds parked high, in order."""
    from pycriu_restore.files.unix_build import build

    return build(obj.spec)


def install(end: UnixSocketEnd, ctx: InstallContext) -> None:
    """A dup of the socket at ``end.fd``; its status flags (O_NONBLOCK) go on the open file."""
    (parked,) = ctx.parked("UNIXSK", end.socket_id)
    temp = park(os.dup(parked))
    try:
        fcntl.fcntl(temp, fcntl.F_SETFL, end.flags & os.O_NONBLOCK)
    except BaseException:
        os.close(temp)
        raise
    install_fd(temp, end.fd, end.cloexec)
