"""The command channel from a restored task to the orchestrator: BO fds and what to copy into them.

The task re-creates its GPU buffer objects (BOs) and exports each as a dma-buf fd; the
orchestrator's fill pool copies the checkpointed bytes into them while the task goes on to
restore its host memory (parallel mode) or waits for the copies (serial mode). The task
tells the pool what to copy, and hands over the fds, on a ``socketpair(AF_UNIX,
SOCK_STREAM | SOCK_CLOEXEC)`` made in restore_init, before the fork, so the task inherits
its end. (Upstream connects to an abstract socket by name;
abstract names are per network namespace, so a task in a new netns cannot reach it:
research/criu-restore-internals.md §5.12.3.)

A stream is a sequence of messages; all integers little-endian, sizes and offsets 64-bit::

    header, 32 bytes (HEADER)
    offset  size  field
    ------  ----  ---------------------------------------------------------------------
      0      4    magic        b"PCGC"
      4      2    version      2 (VERSION); another version is refused
      6      2    kind         1 COMMAND, 2 DONE (no more commands; all counts 0)
      8      4    kfd_id       ExtFileEntry id of the /dev/kfd file (amdgpu-kfd-<id>.img)
     12      4    n_gpus       GPU records that follow                  (<= MAX_GPUS)
     16      4    n_entries    entries that follow the GPU records      (<= MAX_ENTRIES)
     20      4    n_fds        fds that follow the entries              (<= MAX_FDS + 1)
     24      4    flags        bit 0 WAIT: the task waits for its fill (serial mode); the
                               last fd is the write end of a pipe, not a BO: the orchestrator
                               writes the outcome there once every copy of the command has
                               ended (REPLY_OK, or REPLY_FAILED and a UTF-8 reason), then
                               closes it. Entries never name that fd.
                               bit 1 RENDER_NODE: kfd_id is the id of a render-node file
                               (amdgpu-renderD-<id>.img), bo_index a BO of its bo_entries,
                               and each BO's bytes are in its own drm-pages file
     28      4    sender_pid   the task's pid, for messages

    GPU record, 16 bytes (GPU_RECORD), n_gpus times
      0      4    gpu_id       checkpoint gpu_id: names amdgpu-pages-<kfd_id>-<gpu_id>.img
      4      4    local_gpu_id the GPU it was restored on (KFD gpu_id on this machine)
      8      4    minor        that GPU's DRM render minor (/dev/dri/renderD<minor>)
     12      4    reserved     0

    entry, 40 bytes (ENTRY), n_entries times: copy one BO (or a part of one)
      0      4    gpu_id       checkpoint gpu_id; one of the GPU records
      4      4    fd_index     which of the n_fds fds is the BO's dma-buf (< n_fds)
      8      4    bo_index     the BO's index in the kfd image's bo_entries (for messages)
     12      4    reserved     0
     16      8    file_offset  absolute byte offset in that GPU's OWN pages file (header
                               included), not a running offset over all GPUs (§5.12.1)
     24      8    size         bytes to copy (> 0)
     32      8    bo_offset    where they go inside the BO

    fds: SCM_RIGHTS batches of at most FDS_PER_BATCH fds, each batch on one byte b"F",
         in order (fd_index 0 first); exactly n_fds in all

Reading is exact: every part is read to its full length (a stream socket may deliver any
split), and a stream that ends or stalls inside a message is an error, not a hang. The
receiver waits ``idle_timeout_s`` for a message to begin (the task may be busy restoring
files for a while), counted from the later of its last message and the pool's last copy
(``idle_since``): a serial task sends nothing while it waits for its fill, so liveness is
judged by progress, not by how long a fill takes. It then gives the whole message
``message_timeout_s`` to arrive: a deadline for the message, not per read, so a sender
that trickles cannot stretch it.
Every violation is a :class:`ChannelError`; fds received before it are closed.

A stream ends with a DONE message or with EOF (every copy of the task end closed).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pycriu_restore.errors import EXIT_RESTORE, PycrestoreError
from pycriu_restore.plugins.amdgpu.images import MAX_BOS, MAX_GPUS

MAGIC = b"PCGC"
VERSION = 2
KIND_COMMAND = 1
KIND_DONE = 2
FLAG_WAIT = 1 << 0
FLAG_RENDER_NODE = 1 << 1
_KNOWN_FLAGS = FLAG_WAIT | FLAG_RENDER_NODE
# The answer to a WAIT command, on its reply pipe: one byte, then (failed) the reason.
REPLY_OK = b"K"
REPLY_FAILED = b"E"
REPLY_MAX_BYTES = 4096  # a reason is cut to this; one pipe write (<= PIPE_BUF) is atomic

HEADER = struct.Struct("<4sHHIIIIII")
GPU_RECORD = struct.Struct("<IIII")
ENTRY = struct.Struct("<IIIIQQQ")
assert (HEADER.size, GPU_RECORD.size, ENTRY.size) == (32, 16, 40), "channel: wire sizes drifted"

# Fds per sendmsg: SCM_MAX_FD in the kernel (include/net/scm.h) is 253; upstream's sender
# used 252. 250 leaves room and keeps every control message well under a page.
FDS_PER_BATCH = 250
FD_BATCH_BYTE = b"F"

# Bounds checked before anything is allocated or received: the images' own bounds (one
# entry and one fd per BO at most).
MAX_ENTRIES = MAX_BOS
MAX_FDS = MAX_BOS
_MAX_U63 = (1 << 63) - 1

# Defaults for the receiver: how long a message may take to begin, and to arrive whole.
IDLE_TIMEOUT_S = 300.0
MESSAGE_TIMEOUT_S = 30.0

# Fd numbers the channel ends are moved to: above the fds of an image and the parked
# shared objects (restore/shared.py SHARED_FD_BASE 700), so that installing the task's fds
# with dup2 never lands on a channel end; below the status fd at 1000 (restore/task.py).
CHANNEL_FD_BASE = 950


class ChannelError(PycrestoreError):
    """The command stream between a task and the orchestrator is broken or malformed."""

    exit_code = EXIT_RESTORE

    def __init__(self, what: str, cause: str, kfd_id: int | None = None, pid: int | None = None) -> None:
        super().__init__(f"amdgpu channel: {what}: {cause}", kfd_id=kfd_id, pid=pid)
        self.what = what
        self.cause = cause


@dataclass(frozen=True)
class GpuRecord:
    """A checkpointed GPU of a command and where it was restored."""

    gpu_id: int
    local_gpu_id: int
    minor: int


@dataclass(frozen=True)
class Entry:
    """Copy ``size_bytes`` from ``file_offset`` of GPU ``gpu_id``'s pages file into BO fd ``fd_index``."""

    gpu_id: int
    fd_index: int
    bo_index: int
    file_offset: int
    size_bytes: int
    bo_offset: int = 0


@dataclass
class Command:
    """One kfd (or render-node) file's BOs: what to copy, and the dma-buf fds to copy into.

    The fds are owned by whoever holds the Command: the sender closes its own after
    sending; the receiver's copies are closed by :meth:`close_fds`. ``reply_fd`` is the
    write end of the sender's reply pipe (FLAG_WAIT), -1 when the sender does not wait.
    """

    kfd_id: int
    gpus: list[GpuRecord]
    entries: list[Entry]
    fds: list[int] = field(default_factory=list)
    sender_pid: int = 0
    render_node: bool = False  # kfd_id names a render-node file (FLAG_RENDER_NODE)
    reply_fd: int = -1

    def reply(self, failure: str | None) -> None:
        """Receiver: tell a waiting sender how its fill ended (None: every copy done), once.

        Closes the reply pipe; nothing if the sender does not wait. A sender that is gone
        (EPIPE) is not an error here: its own restore has failed already.
        """
        fd, self.reply_fd = self.reply_fd, -1
        if fd < 0:
            return
        message = REPLY_OK if failure is None else (REPLY_FAILED + failure.encode())[:REPLY_MAX_BYTES]
        try:
            os.write(fd, message)
        except OSError:
            pass
        finally:
            os.close(fd)

    def close_fds(self) -> None:
        """Close every fd of the command (each at most once); a waiting sender reads EOF."""
        fds, self.fds = self.fds, []
        if self.reply_fd >= 0:
            fds.append(self.reply_fd)
            self.reply_fd = -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def make_channel() -> tuple[socket.socket, socket.socket]:
    """A connected pair (orchestrator end, task end), both close-on-exec, at CHANNEL_FD_BASE and up.

    Made before the fork; the orchestrator closes its copy of the task end once the task
    exists (else it would never see EOF), the task closes its copy of the orchestrator end.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        return _move_high(a), _move_high(b)
    finally:
        a.close()
        b.close()


def _move_high(sock: socket.socket) -> socket.socket:
    """A new socket object for a close-on-exec dup of ``sock`` at CHANNEL_FD_BASE or above."""
    import fcntl

    fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, CHANNEL_FD_BASE)
    return socket.socket(fileno=fd)


# --- sending (the task) --------------------------------------------------------------------


def encode(command: Command) -> bytes:
    """The header, GPU records and entries of ``command`` (the fds travel separately)."""
    flags = (FLAG_WAIT if command.reply_fd >= 0 else 0) | (FLAG_RENDER_NODE if command.render_node else 0)
    parts = [HEADER.pack(MAGIC, VERSION, KIND_COMMAND, command.kfd_id, len(command.gpus),
                         len(command.entries), len(_fds_sent(command)), flags, command.sender_pid)]
    parts += [GPU_RECORD.pack(g.gpu_id, g.local_gpu_id, g.minor, 0) for g in command.gpus]
    parts += [ENTRY.pack(e.gpu_id, e.fd_index, e.bo_index, 0, e.file_offset, e.size_bytes, e.bo_offset)
              for e in command.entries]
    return b"".join(parts)


def _fds_sent(command: Command) -> list[int]:
    """The fds of a message: the BOs' and, last, the reply pipe's write end (FLAG_WAIT)."""
    return command.fds + ([command.reply_fd] if command.reply_fd >= 0 else [])


def send_command(sock: socket.socket, command: Command, timeout_s: float = MESSAGE_TIMEOUT_S) -> None:
    """Send one command and its fds. The caller still owns (and closes) ``command.fds``
    and ``command.reply_fd``.

    Raises ChannelError if the orchestrator's end is gone or does not read in time.
    """
    _check_outgoing(command)
    where = f"command for kfd file {command.kfd_id}"
    fds = _fds_sent(command)
    try:
        sock.settimeout(timeout_s)
        sock.sendall(encode(command), socket.MSG_NOSIGNAL)
        for start in range(0, len(fds), FDS_PER_BATCH):
            batch = fds[start:start + FDS_PER_BATCH]
            sent = socket.send_fds(sock, [FD_BATCH_BYTE], batch, socket.MSG_NOSIGNAL)
            if sent != 1:
                raise ChannelError(where, f"fd batch at {start}: sent {sent} bytes, expected 1")
    except OSError as err:  # socket.timeout is an OSError too
        raise ChannelError(where, f"send failed: {err.strerror or err}", command.kfd_id) from err


def send_done(sock: socket.socket, timeout_s: float = MESSAGE_TIMEOUT_S) -> None:
    """Tell the orchestrator that no command follows on this stream."""
    try:
        sock.settimeout(timeout_s)
        sock.sendall(HEADER.pack(MAGIC, VERSION, KIND_DONE, 0, 0, 0, 0, 0, os.getpid()), socket.MSG_NOSIGNAL)
    except OSError as err:
        raise ChannelError("done message", f"send failed: {err.strerror or err}") from err


def open_reply_pipe() -> tuple[int, int]:
    """A sender that waits for its fill: (read end, write end), both close-on-exec.

    The write end goes with the command (``Command.reply_fd``) and the sender closes its
    own copy right after sending, so that the orchestrator's is the only one left: if the
    orchestrator dies, :func:`wait_reply` reads EOF instead of waiting for ever.
    """
    return os.pipe2(os.O_CLOEXEC)


def wait_reply(read_fd: int, what: str) -> None:
    """Sender: block until the orchestrator answers on the reply pipe; raise if the fill failed.

    Closes ``read_fd``. Raises ChannelError naming ``what`` with the orchestrator's reason,
    or saying that it closed the pipe without an answer (it was stopped, or died).
    """
    try:
        chunks = []
        while chunk := os.read(read_fd, REPLY_MAX_BYTES):
            chunks.append(chunk)
    except OSError as err:
        raise ChannelError(what, f"reading the fill's reply failed: {err.strerror or err}") from err
    finally:
        os.close(read_fd)
    answer = b"".join(chunks)
    if answer == REPLY_OK:
        return
    if answer.startswith(REPLY_FAILED):
        raise ChannelError(what, f"the orchestrator's fill failed: {answer[1:].decode(errors='replace')}")
    if not answer:
        raise ChannelError(what, "the orchestrator ended the fill without an answer (the restore was stopped)")
    raise ChannelError(what, f"the fill's reply is {answer[:16]!r}, expected {REPLY_OK!r} or {REPLY_FAILED!r}...")


def _check_outgoing(command: Command) -> None:
    """A command we send must pass the receiver's checks: catch our own bugs at the source."""
    assert len(command.gpus) <= MAX_GPUS and len(command.entries) <= MAX_ENTRIES, \
        "send_command: command exceeds the channel bounds"
    assert len(command.fds) <= MAX_FDS, "send_command: too many fds"
    assert command.reply_fd not in command.fds, "send_command: the reply pipe is not a BO"
    gpu_ids = {g.gpu_id for g in command.gpus}
    for e in command.entries:
        assert e.gpu_id in gpu_ids and 0 <= e.fd_index < len(command.fds) and e.size_bytes > 0, \
            f"send_command: bad entry {e}"


# --- receiving (the orchestrator) ----------------------------------------------------------


class _Reader:
    """Exact-length reads from a stream socket under a per-message deadline.

    Before a message begins, the wait is ``idle_timeout_s`` from the later of the reader's
    start and ``idle_since()`` (the pool's last copy: a busy pool is not idle).
    """

    def __init__(self, sock: socket.socket, idle_timeout_s: float, message_timeout_s: float,
                 idle_since: Callable[[], float] | None = None) -> None:
        self.sock = sock
        self.idle_timeout_s = idle_timeout_s
        self.message_timeout_s = message_timeout_s
        self.idle_since = idle_since
        self.started = time.monotonic()
        self.deadline: float | None = None  # set when the first byte of a message arrives

    def _timeout(self) -> float:
        """Seconds the next read may wait; 0 once the idle wait is over (no message began)."""
        if self.deadline is None:
            since = max(self.started, self.idle_since()) if self.idle_since is not None else self.started
            return max(since + self.idle_timeout_s - time.monotonic(), 0.0)
        return max(self.deadline - time.monotonic(), 0.001)

    def read_exact(self, n_bytes: int, what: str) -> bytes | None:
        """Read exactly ``n_bytes``; None on EOF before the first byte of a message.

        EOF or a timeout after the message began is a ChannelError saying how far it got.
        """
        buf = bytearray(n_bytes)
        view = memoryview(buf)
        got = 0
        while got < n_bytes:
            try:
                timeout = self._timeout()
                if timeout == 0.0:
                    raise TimeoutError()
                self.sock.settimeout(timeout)
                n = self.sock.recv_into(view[got:], n_bytes - got)
            except TimeoutError as err:
                if self.deadline is None and self._timeout() > 0.0:
                    continue  # the pool copied meanwhile: the idle wait starts again
                state = "no message began" if self.deadline is None else f"stalled after {got} of {n_bytes} bytes"
                limit = self.idle_timeout_s if self.deadline is None else self.message_timeout_s
                raise ChannelError(what, f"{state} within {limit:g} s") from err
            except OSError as err:
                raise ChannelError(what, f"receive failed: {err.strerror or err}") from err
            if n == 0:
                if got == 0 and self.deadline is None:
                    return None
                raise ChannelError(what, f"stream ended after {got} of {n_bytes} bytes")
            if self.deadline is None:
                self.deadline = time.monotonic() + self.message_timeout_s
            got += n
        return bytes(buf)

    def read_fd_batch(self, count: int, what: str) -> list[int]:
        """Receive one batch of exactly ``count`` fds on its one byte."""
        try:
            self.sock.settimeout(self._timeout())
            data, fds, msg_flags, _ = socket.recv_fds(self.sock, 1, FDS_PER_BATCH)
        except TimeoutError as err:
            raise ChannelError(what, f"no fds arrived within {self.message_timeout_s:g} s") from err
        except OSError as err:
            raise ChannelError(what, f"receive failed: {err.strerror or err}") from err
        if msg_flags & socket.MSG_CTRUNC:
            _close_all(fds)
            raise ChannelError(what, f"more than {FDS_PER_BATCH} fds in one batch (control data truncated)")
        if not data:
            _close_all(fds)
            raise ChannelError(what, "stream ended before the fds")
        if data != FD_BATCH_BYTE or len(fds) != count:
            _close_all(fds)
            raise ChannelError(what, f"batch carries {len(fds)} fds on byte {data!r}, "
                               f"expected {count} on {FD_BATCH_BYTE!r}")
        return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def receive_command(sock: socket.socket, idle_timeout_s: float = IDLE_TIMEOUT_S,
                    message_timeout_s: float = MESSAGE_TIMEOUT_S,
                    idle_since: Callable[[], float] | None = None) -> Command | None:
    """Read the next message: a Command (its fds are now ours), or None for DONE or EOF.

    ``idle_since()``, if given, is when the receiver's side last made progress (the idle
    wait counts from then, if that is later than the call). Raises ChannelError for
    anything else (see the module docstring); no fd leaks then.
    """
    reader = _Reader(sock, idle_timeout_s, message_timeout_s, idle_since)
    raw = reader.read_exact(HEADER.size, "header")
    if raw is None:
        return None
    magic, version, kind, kfd_id, n_gpus, n_entries, n_fds, flags, pid = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ChannelError("header", f"magic is {magic!r}, expected {MAGIC!r}", pid=pid or None)
    if version != VERSION:
        raise ChannelError("header", f"version is {version}, this end speaks {VERSION}", pid=pid)
    if kind == KIND_DONE:
        if (kfd_id, n_gpus, n_entries, n_fds, flags) != (0, 0, 0, 0, 0):
            raise ChannelError("done message", f"carries kfd_id {kfd_id}, {n_gpus} GPUs, {n_entries} "
                               f"entries, {n_fds} fds, flags {flags:#x}; expected all 0", pid=pid)
        return None
    what = f"command for kfd file {kfd_id}"
    if kind != KIND_COMMAND:
        raise ChannelError("header", f"message kind is {kind}, expected {KIND_COMMAND} or {KIND_DONE}", pid=pid)
    waits = bool(flags & FLAG_WAIT)
    for name, count, limit in (("GPUs", n_gpus, MAX_GPUS), ("entries", n_entries, MAX_ENTRIES),
                               ("fds", n_fds, MAX_FDS + waits)):
        if count > limit:
            raise ChannelError(what, f"{count} {name}, more than the limit of {limit}", kfd_id, pid)
    if flags & ~_KNOWN_FLAGS:
        raise ChannelError(what, f"unknown flags {flags & ~_KNOWN_FLAGS:#x}", kfd_id, pid)
    if waits and not n_fds:
        raise ChannelError(what, "waits for its fill but sends no reply pipe (no fds)", kfd_id, pid)
    n_bo_fds = n_fds - waits
    if n_entries and not n_bo_fds:
        raise ChannelError(what, f"{n_entries} entries but no BO fds", kfd_id, pid)

    gpus = _decode_gpus(reader.read_exact(GPU_RECORD.size * n_gpus, f"{what}: GPU records") or b"",
                        n_gpus, what, kfd_id, pid)
    entries = _decode_entries(reader.read_exact(ENTRY.size * n_entries, f"{what}: entries") or b"",
                              n_entries, n_bo_fds, {g.gpu_id for g in gpus}, what, kfd_id, pid)
    fds: list[int] = []
    try:
        while len(fds) < n_fds:
            count = min(FDS_PER_BATCH, n_fds - len(fds))
            fds += reader.read_fd_batch(count, f"{what}: fds {len(fds)}..{len(fds) + count - 1} of {n_fds}")
    except ChannelError as err:
        _close_all(fds)
        raise ChannelError(err.what, err.cause, kfd_id, pid) from err
    reply_fd = fds.pop() if waits else -1
    if reply_fd >= 0 and not stat.S_ISFIFO(os.fstat(reply_fd).st_mode):  # never write into a BO
        _close_all([*fds, reply_fd])
        raise ChannelError(what, "its last fd, the reply pipe, is not a pipe", kfd_id, pid)
    return Command(kfd_id=kfd_id, gpus=gpus, entries=entries, fds=fds, sender_pid=pid,
                   render_node=bool(flags & FLAG_RENDER_NODE), reply_fd=reply_fd)


def _decode_gpus(raw: bytes, n_gpus: int, what: str, kfd_id: int, pid: int) -> list[GpuRecord]:
    gpus: list[GpuRecord] = []
    for i in range(n_gpus):
        gpu_id, local_gpu_id, minor, reserved = GPU_RECORD.unpack_from(raw, i * GPU_RECORD.size)
        if reserved:
            raise ChannelError(what, f"GPU record {i}: reserved word is {reserved:#x}, expected 0", kfd_id, pid)
        if any(g.gpu_id == gpu_id for g in gpus):
            raise ChannelError(what, f"GPU record {i}: gpu_id {gpu_id:#x} appears twice", kfd_id, pid)
        gpus.append(GpuRecord(gpu_id, local_gpu_id, minor))
    return gpus


def _decode_entries(raw: bytes, n_entries: int, n_fds: int, gpu_ids: set[int], what: str,
                    kfd_id: int, pid: int) -> list[Entry]:
    entries: list[Entry] = []
    for i in range(n_entries):
        gpu_id, fd_index, bo_index, reserved, file_offset, size, bo_offset = ENTRY.unpack_from(raw, i * ENTRY.size)
        problem = None
        if gpu_id not in gpu_ids:
            problem = f"gpu_id {gpu_id:#x} is not one of the command's GPUs"
        elif fd_index >= n_fds:
            problem = f"fd_index {fd_index} points past the {n_fds} fds"
        elif reserved:
            problem = f"reserved word is {reserved:#x}, expected 0"
        elif size == 0:
            problem = "copies 0 bytes"
        elif file_offset + size > _MAX_U63 or bo_offset + size > _MAX_U63:
            problem = f"range overflows: file_offset {file_offset:#x}, bo_offset {bo_offset:#x}, size {size:#x}"
        if problem:
            raise ChannelError(what, f"entry {i} (BO {bo_index}): {problem}", kfd_id, pid)
        entries.append(Entry(gpu_id, fd_index, bo_index, file_offset, size, bo_offset))
    return entries
