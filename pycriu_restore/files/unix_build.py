"""Making the unix sockets of a plan (files/unix_socket.py UnixSockets) in the root task.

Runs once, before the root forks, and either returns every socket as a parked fd (in the
order of ``UnixSockets.sockets``) or closes all it made and raises UnixSocketFailed naming
the socket and the step. The steps, in the order they must happen:

    1. remove stale socket files at the paths about to be bound (criu unlink_sk)
    2. ALONE sockets: socket() (or one end of a socketpair whose other end is kept as a
       throw-away sender), bind, chmod/chown the file, listen
    3. PAIR sockets: socketpair(), bind the datagram ends' names
    4. ACCEPTED: the client is made and bound, connects to the listener, the root accepts
       -- before any client that was still waiting in that listener's backlog connects, so
       that each accept() returns the connection it is for
    5. CONNECTS (the rest): made and bound; the queues of the throw-away senders written
       (a connected datagram socket takes messages from its peer only); then, once every
       name exists, connected
    6. the other queued messages, each through its sender (``UnixSocket.sender``)
    7. the throw-away senders closed (a stream socket whose peer was gone now reads EOF)
    8. dumped buffer sizes, shutdown(2), and unlink the names whose file was deleted at dump
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import stat
from collections.abc import Iterator

from pycriu_restore.files import park
from pycriu_restore.files.unix_socket import (
    SOCK_DGRAM,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    Making,
    UnixSocket,
    UnixSockets,
)
from pycriu_restore.linux.libc import libc_function
from pycriu_restore.linux.sockopt import SO_RCVBUFFORCE, SO_SNDBUFFORCE

# CRIU's restore_prepare_socket: the kernel doubles what it is given and keeps an int.
QUEUE_BUF = (2**31 - 1) // 2
CONNECT_TIMEOUT_S = 10.0
MAX_DGRAM_QLEN = "/proc/sys/net/unix/max_dgram_qlen"

_connect = libc_function("connect", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32])


class UnixSocketFailed(Exception):
    """A unix socket could not be made again (its description, the step, the cause)."""


def build(plan: UnixSockets) -> tuple[int, ...]:
    """Steps 1-8 of the module docstring; the sockets' fds, parked, in plan order."""
    made: dict[int, socket.socket] = {}
    senders: dict[int, socket.socket] = {}  # throw-away senders, by the socket they feed
    try:
        for sk in plan.sockets:
            if sk.bind and _is_path(sk.name):
                _remove_stale(sk)
        for sk in plan.sockets:
            if sk.making is Making.ALONE:
                made[sk.socket_id] = _new(sk, senders)
                _bind(sk, made[sk.socket_id])
                if sk.state == TCP_LISTEN:
                    _do(sk, "listen", lambda sk=sk: made[sk.socket_id].listen(sk.backlog))
        for sk in plan.sockets:
            if sk.making is Making.PAIR and sk.socket_id not in made:
                peer = plan.by_id(sk.peer)
                made[sk.socket_id], made[peer.socket_id] = _do(sk, "socketpair",
                                                               lambda: socket.socketpair(socket.AF_UNIX, sk.sock_type))
                _bind(sk, made[sk.socket_id])
                _bind(peer, made[peer.socket_id])
        for sk in plan.sockets:
            if sk.making is Making.ACCEPTED:
                client, listener = plan.by_id(sk.peer), plan.by_id(sk.via)
                made[client.socket_id] = _new(client, senders)
                _bind(client, made[client.socket_id])
                _connect_to(client, made[client.socket_id], listener)
                made[sk.socket_id] = _accept(sk, made[listener.socket_id])
        waiting = [sk for sk in plan.sockets if sk.socket_id not in made]
        for sk in waiting:
            assert sk.making is Making.CONNECTS, f"build: {sk.what} ({sk.making}) not made"
            made[sk.socket_id] = _new(sk, senders)
            _bind(sk, made[sk.socket_id])
        # A datagram socket connected to one socket takes messages from no other (unix_may_send):
        # the throw-away senders write before their receivers connect.
        for sk in plan.sockets:
            if sk.queued and not sk.sender:
                _send_queue(sk, senders[sk.socket_id])
        for sk in waiting:
            _connect_to(sk, made[sk.socket_id], plan.by_id(sk.via))
        for sk in plan.sockets:
            if sk.queued and sk.sender:
                _send_queue(sk, made[sk.sender])
        for sender in senders.values():
            sender.close()
        senders.clear()
        for sk in plan.sockets:
            _finish(sk, made[sk.socket_id])
        for sk in plan.sockets:
            if sk.deleted and sk.bind:
                with _in_dir(sk):
                    _do(sk, "unlink the file deleted before the dump", lambda sk=sk: os.unlink(sk.name))
        fds = [made.pop(sk.socket_id).detach() for sk in plan.sockets]
    except BaseException:
        for sock in list(made.values()) + list(senders.values()):
            sock.close()
        raise
    return tuple(_park_all(fds))


def _park_all(fds: list[int]) -> Iterator[int]:
    for i, fd in enumerate(fds):
        try:
            yield park(fd)
        except BaseException:
            for rest in fds[i + 1:]:
                os.close(rest)
            raise


def _do(sk: UnixSocket, step: str, action):
    """Run one system call for ``sk``; an OSError becomes UnixSocketFailed naming both."""
    try:
        return action()
    except OSError as err:
        raise UnixSocketFailed(f"{sk.what}: {step}: {err.strerror or err}") from err


def _is_path(name: bytes) -> bool:
    return bool(name) and name[0] != 0


@contextlib.contextmanager
def _in_dir(sk: UnixSocket) -> Iterator[None]:
    """Relative names are resolved where CRIU found them (name_dir); the root's cwd is put
    back after (nothing else runs in the root meanwhile: it has not forked yet)."""
    if not sk.name_dir:
        yield
        return
    back = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _do(sk, f"chdir {sk.name_dir}", lambda: os.chdir(sk.name_dir))
        yield
    finally:
        os.fchdir(back)
        os.close(back)


def _remove_stale(sk: UnixSocket) -> None:
    """A socket file left at the path by the dumped program (or an earlier restore) would make
    bind() fail; remove it, and only if it is a socket (criu unlink_sk)."""
    with _in_dir(sk):
        try:
            st = os.lstat(sk.name)
        except FileNotFoundError:
            return
        except OSError as err:
            raise UnixSocketFailed(f"{sk.what}: stat {sk.name.decode(errors='replace')}: {err.strerror}") from err
        if stat.S_ISSOCK(st.st_mode):
            _do(sk, "remove the stale socket file", lambda: os.unlink(sk.name))


def _new(sk: UnixSocket, senders: dict[int, socket.socket]) -> socket.socket:
    """A new socket for ``sk``. When its queued messages have no sender among the sockets, or
    it is a connected stream socket whose peer had closed, it is made as one end of a
    socketpair and the other end is kept as its sender (criu add_fake_unix_queuers); a
    datagram end is then disconnected, so that it can connect or be sent to like a new one."""
    widowed = sk.sock_type != SOCK_DGRAM and sk.state == TCP_ESTABLISHED and not sk.peer
    if not widowed and not (sk.queued and not sk.sender):
        return _do(sk, "socket", lambda: socket.socket(socket.AF_UNIX, sk.sock_type))
    ours, sender = _do(sk, "socketpair", lambda: socket.socketpair(socket.AF_UNIX, sk.sock_type))
    senders[sk.socket_id] = sender
    if sk.sock_type == SOCK_DGRAM:
        _disconnect(sk, ours)
    return ours


def _disconnect(sk: UnixSocket, sock: socket.socket) -> None:
    """connect() with AF_UNSPEC: a datagram socket forgets its peer (unix_dgram_connect)."""
    unspec = ctypes.c_ushort(socket.AF_UNSPEC)  # sockaddr: just sa_family
    if _connect(sock.fileno(), ctypes.addressof(unspec), ctypes.sizeof(unspec)) != 0:
        err = ctypes.get_errno()
        raise UnixSocketFailed(f"{sk.what}: connect(AF_UNSPEC): {os.strerror(err)}")


def _bind(sk: UnixSocket, sock: socket.socket) -> None:
    """bind() to its name (if it binds), then give the socket file its dumped mode and owner."""
    if not sk.bind:
        return
    with _in_dir(sk):
        _do(sk, "bind", lambda: sock.bind(sk.name))
        if sk.file_perms is not None and _is_path(sk.name):
            mode, uid, gid = sk.file_perms
            # chown first: it clears set-id bits that the chmod then puts back (cr_fchpermat).
            _do(sk, "chown the socket file", lambda: os.chown(sk.name, uid, gid))
            _do(sk, "chmod the socket file", lambda: os.chmod(sk.name, stat.S_IMODE(mode)))


def _connect_to(sk: UnixSocket, sock: socket.socket, target: UnixSocket) -> None:
    """connect() ``sock`` to ``target``'s name, as resolved where ``target`` was bound."""
    sock.settimeout(CONNECT_TIMEOUT_S)  # a listener's full backlog would block for ever
    try:
        with _in_dir(target):
            _do(sk, f"connect to {target.what}", lambda: sock.connect(target.name))
    finally:
        sock.setblocking(True)


def _accept(sk: UnixSocket, listener: socket.socket) -> socket.socket:
    """The server end of the connection just made to ``listener``: its first in line."""
    listener.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn, _ = _do(sk, "accept from its listener", listener.accept)
    finally:
        listener.setblocking(True)
    conn.setblocking(True)
    return conn


def _send_queue(sk: UnixSocket, sender: socket.socket) -> None:
    """Write ``sk.queued`` through ``sender``, one send() per message, never blocking."""
    _do(sk, "raise the sender's buffers", lambda: (
        sender.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, QUEUE_BUF),
        sender.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, QUEUE_BUF)))
    stream = sk.sock_type == socket.SOCK_STREAM
    for i, message in enumerate(sk.queued):
        view = memoryview(message)
        while True:
            try:
                sent = sender.send(view, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except BlockingIOError as err:
                raise UnixSocketFailed(
                    f"{sk.what}: queued message {i + 1} of {len(sk.queued)} does not fit its receive queue"
                    + (f" (a datagram socket takes at most net.unix.max_dgram_qlen = {_max_dgram_qlen()} "
                       "messages from a socket it is not connected to)" if sk.sock_type == SOCK_DGRAM else "")) from err
            except OSError as err:
                raise UnixSocketFailed(f"{sk.what}: send queued message {i + 1} of {len(sk.queued)}: "
                                       f"{err.strerror or err}") from err
            if sent == len(view):
                break
            if not stream:
                raise UnixSocketFailed(f"{sk.what}: queued message {i + 1} trimmed to {sent} of {len(view)} bytes")
            view = view[sent:]


def _finish(sk: UnixSocket, sock: socket.socket) -> None:
    """The dumped buffer sizes (half the doubled values, as criu restore_socket_opts), then
    shutdown(2) (criu shutdown_unix_sk)."""
    if sk.bufs is not None:
        sndbuf, rcvbuf = sk.bufs
        _do(sk, "SO_SNDBUFFORCE", lambda: sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf // 2))
        _do(sk, "SO_RCVBUFFORCE", lambda: sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf // 2))
    if sk.shutdown_how is not None:
        _do(sk, "shutdown", lambda: sock.shutdown(sk.shutdown_how))


def _max_dgram_qlen() -> str:
    try:
        with open(MAX_DGRAM_QLEN) as f:
            return f.read().strip()
    except OSError:
        return "?"
