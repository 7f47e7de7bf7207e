"""The fill pool: orchestrator threads that copy checkpointed BO contents into the task's GPU buffers.

This is the "parallel restore" of CRIU's amdgpu plugin (gCROP): while a restored task
restores its host memory in its blob, the orchestrator fills its VRAM. The task sends one
:class:`~pycriu_restore.plugins.amdgpu.channel.Command` per /dev/kfd file (entries + the
BOs' dma-buf fds); the pool copies each entry from the GPU's pages file into the BO::

    task (restore_ext_file)          orchestrator
    -----------------------          -------------------------------------------------------
    restore BOs, send command  ───►  receiver thread: receive_command() ──┬─► worker gpu A
    (returns at once, goes on                                             └─► worker gpu B
     to its blob)                       each worker: prepare_fill, then copy_bo() per entry,
                                        chunk by chunk, backend.fill() with the GIL released
                                     resume_devices_late: join() ─ every copy done or failed

Serial mode uses the same pool: the command carries a reply pipe (FLAG_WAIT) and the task
blocks on it until the last job of its command ends. So the GPUs of a serial restore are
filled side by side too, and nothing of the copier (render node, staging buffer, GPU
context) is ever made in the restored task.

One worker thread per GPU (the copies of one GPU go through one DMA engine in the real
backend; different GPUs run side by side). ``start()`` is called in POST_FORKING, after the
last fork of the orchestrator (forking a threaded process is unsafe), and ``join()`` in
RESUME_DEVICES_LATE, before the GPU is resumed: queues may read VRAM once resumed
(research/criu-restore-internals.md §5.11). ``stop()`` is the failure path: it wakes the
receiver, cancels the copies between chunks, and closes every fd the pool holds.

The first error wins: join() raises it (a FillError naming the GPU, BO and cause, or the
receiver's ChannelError) and the other workers stop at their next chunk.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

from pycriu_restore import faults
from pycriu_restore.errors import EXIT_RESTORE, PycrestoreError
from pycriu_restore.plugins.amdgpu.backend import GpuBackend, LocalGpu
from pycriu_restore.plugins.amdgpu.channel import (
    IDLE_TIMEOUT_S,
    MESSAGE_TIMEOUT_S,
    ChannelError,
    Command,
    Entry,
    receive_command,
)

# Bytes per backend.fill call: large enough that per-call costs vanish (an SDMA submit, a
# Python call), small enough that a cancel or a bandwidth cap acts within milliseconds.
DEFAULT_CHUNK_BYTES = 32 << 20
# With a bandwidth cap, chunks shrink to about this fraction of a second of transfer, so
# that the pace is smooth rather than one burst and one long sleep per chunk.
_CAPPED_CHUNK_SECONDS = 0.05
_MIN_CHUNK_BYTES = 64 << 10


class FillError(PycrestoreError):
    """Copying a BO's checkpointed contents into the GPU failed."""

    exit_code = EXIT_RESTORE

    def __init__(self, cause: str, gpu_id: int | None = None, bo_index: int | None = None,
                 kfd_id: int | None = None) -> None:
        where = "amdgpu fill"
        if gpu_id is not None:
            where += f": gpu_id {gpu_id:#x}"
        if bo_index is not None:
            where += f", BO {bo_index}"
        super().__init__(f"{where}: {cause}", kfd_id=kfd_id)
        self.gpu_id = gpu_id
        self.bo_index = bo_index
        self.cause = cause


class Cancelled(Exception):
    """Raised inside copy_bo when the pool is being stopped (never leaves the pool)."""


class Throttle:
    """A bandwidth cap for one GPU's copies (bytes/s), modelling PCIe or SDMA speed.

    Used by one thread only (its GPU's worker). ``None`` means no cap.
    """

    def __init__(self, bytes_per_s: float | None) -> None:
        assert bytes_per_s is None or bytes_per_s > 0, f"Throttle: rate {bytes_per_s} must be positive"
        self.bytes_per_s = bytes_per_s
        self._start: float | None = None
        self._bytes = 0

    def chunk_bytes(self, default: int) -> int:
        """How much to copy at once under this cap."""
        if self.bytes_per_s is None:
            return default
        return max(_MIN_CHUNK_BYTES, min(default, int(self.bytes_per_s * _CAPPED_CHUNK_SECONDS)))

    def account(self, n_bytes: int) -> None:
        """``n_bytes`` were copied: sleep until the average rate is back under the cap."""
        if self.bytes_per_s is None:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self._bytes += n_bytes
        ahead_s = self._bytes / self.bytes_per_s - (now - self._start)
        if ahead_s > 0:
            time.sleep(ahead_s)


def copy_bo(backend: GpuBackend, bo_fd: int, src_fd: int, entry: Entry, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
            throttle: Throttle | None = None, cancel: threading.Event | None = None,
            on_chunk: Callable[[], None] | None = None) -> None:
    """Copy one entry (a BO, or a part of one) from ``src_fd`` into ``bo_fd``, chunk by chunk.

    The bytes at ``entry.file_offset`` of the pages file go to ``entry.bo_offset`` of the BO.
    ``on_chunk`` runs after each chunk (the pool notes its progress). Raises whatever
    backend.fill raises, or Cancelled once ``cancel`` is set.
    """
    step = chunk_bytes if throttle is None else throttle.chunk_bytes(chunk_bytes)
    done = 0
    while done < entry.size_bytes:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        n = min(step, entry.size_bytes - done)
        backend.fill(bo_fd, n, src_fd, entry.file_offset + done, entry.gpu_id, bo_offset=entry.bo_offset + done)
        done += n
        if throttle is not None:
            throttle.account(n)
        if on_chunk is not None:
            on_chunk()


def check_ranges(entry: Entry, src_fd: int, bo_fd: int) -> str | None:
    """Why ``entry`` does not fit its pages file or its BO, or None if it does.

    A dma-buf's inode size is the buffer's size (dma_buf_getfile), as a memfd's is, so fstat
    bounds both sides. A BO whose size reads as 0 is not bounded (some exporters).
    """
    src_bytes = os.fstat(src_fd).st_size
    if entry.file_offset + entry.size_bytes > src_bytes:
        return (f"reads {entry.size_bytes} bytes at offset {entry.file_offset} of a {src_bytes}-byte "
                f"pages file")
    bo_bytes = os.fstat(bo_fd).st_size
    if bo_bytes and entry.bo_offset + entry.size_bytes > bo_bytes:
        return f"writes {entry.size_bytes} bytes at offset {entry.bo_offset} of a {bo_bytes}-byte BO"
    return None


@dataclass
class FillStats:
    """What a pool did: bytes per checkpoint gpu_id, commands, and when it started and ended."""

    bytes_by_gpu: dict[int, int] = field(default_factory=dict)
    commands: int = 0
    bos: int = 0
    started_s: float = 0.0  # time.monotonic() at start()
    finished_s: float = 0.0  # time.monotonic() when the last GPU job ended (0: none ran)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_gpu.values())


@dataclass
class _Pending:
    """A received command whose GPU jobs are still running; the last one to end finishes it."""

    command: Command
    jobs_left: int


class FillPool:
    """The orchestrator's fill threads for one restore. ``start()`` / ``join()`` (or ``stop()``).

    ``sock`` is the orchestrator end of the channel; ``pages_path(kfd_id, gpu_id)`` names
    the pages file of a GPU; ``source_path(command, entry)``, when given, names the file
    of any entry instead (render-node BOs each have their own file); ``expected_commands``
    is how many commands the tasks will send (one per restored /dev/kfd or render-node
    file; None: read until DONE or EOF). ``on_filled(command)`` is called once every entry
    of a command is copied, before its fds are closed: simgpu's device keeps dups of them
    there. A waiting sender (FLAG_WAIT) is answered after that, failure or not.
    ``check_command(command)`` runs on each command before any copy starts and raises
    ChannelError if it does not match the images (the plugin compares it with the kfd image).
    """

    def __init__(self, backend: GpuBackend, sock: socket.socket, pages_path: Callable[[int, int], str | os.PathLike[str]],
                 *, expected_commands: int | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 bytes_per_s_per_gpu: float | None = None, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 message_timeout_s: float = MESSAGE_TIMEOUT_S,
                 check_command: Callable[[Command], None] | None = None,
                 on_filled: Callable[[Command], None] | None = None,
                 source_path: Callable[[Command, Entry], str | os.PathLike[str]] | None = None) -> None:
        assert chunk_bytes > 0, "FillPool: chunk_bytes must be positive"
        # Set at construction, read-only afterwards (any thread):
        self.backend = backend
        self.pages_path = pages_path
        self.source_path = source_path
        self.expected_commands = expected_commands
        self.chunk_bytes = chunk_bytes
        self.bytes_per_s_per_gpu = bytes_per_s_per_gpu
        self.idle_timeout_s = idle_timeout_s
        self.message_timeout_s = message_timeout_s
        self.check_command = check_command
        self.on_filled = on_filled
        self._cancel = threading.Event()  # set by stop() and by the first error
        # receiver thread only (and stop(), which only shuts it down):
        self._sock = sock
        self._receiver: threading.Thread | None = None
        self._lock = threading.Lock()
        # guarded by _lock:
        self._error: BaseException | None = None
        self._executors: dict[int, ThreadPoolExecutor] = {}  # checkpoint gpu_id -> its worker
        self._throttles: dict[int, Throttle] = {}  # each used by its GPU's worker only
        self._futures: list[Future[None]] = []
        self._pending: list[_Pending] = []
        self._stats = FillStats()
        self._last_copy_s = 0.0  # time.monotonic() of the last chunk copied or job ended

    # --- the acquire/release pair ------------------------------------------------------

    def start(self) -> None:
        """Start the receiver thread. Call once, after the orchestrator's last fork."""
        assert self._receiver is None, "FillPool.start: already started"
        self._stats.started_s = time.monotonic()
        self._receiver = threading.Thread(target=self._receive_all, name="amdgpu-fill-receiver", daemon=True)
        self._receiver.start()

    def join(self, timeout_s: float | None = None) -> FillStats:
        """Wait until every command is received and every copy has ended; raise the first error.

        Raises FillError (a copy failed, or the wait passed ``timeout_s``) or ChannelError
        (the task's stream was malformed or ended early). The pool is finished afterwards
        either way: its threads have ended or been cancelled, its fds are closed.
        """
        assert self._receiver is not None, "FillPool.join: never started"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._receiver.join(_left(deadline))
        if self._receiver.is_alive():
            self._fail(FillError(f"the tasks' commands did not all arrive within {timeout_s:g} s"))
            self.stop()
        with self._lock:
            futures = list(self._futures)
        _, not_done = wait_futures(futures, timeout=_left(deadline))
        if not_done:
            self._fail(FillError(f"{len(not_done)} GPU copy job(s) still running after {timeout_s:g} s"))
            self.stop()
        self._shutdown()
        with self._lock:
            error = self._error
            stats = self._stats
        if error is not None:
            raise error
        return stats

    def stop(self) -> None:
        """Abort: wake the receiver, cancel the copies, wait for the threads, close every fd.

        Safe to call at any time, more than once, and after join(). Records no error.
        """
        self._cancel.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # the receiver's recv returns EOF at once
        except OSError:
            pass  # not connected any more: the receiver is not blocked in it either
        if self._receiver is not None:
            self._receiver.join()
        self._shutdown()

    # --- receiver thread ---------------------------------------------------------------

    def _receive_all(self) -> None:
        """Receive commands until ``expected_commands`` have come (or DONE/EOF), dispatching each."""
        received = 0
        try:
            while self.expected_commands is None or received < self.expected_commands:
                command = receive_command(self._sock, self.idle_timeout_s, self.message_timeout_s,
                                          idle_since=self.last_progress)
                if command is None:
                    if self.expected_commands is not None and not self._cancel.is_set():
                        raise ChannelError("stream", f"ended after {received} of {self.expected_commands} "
                                           f"commands (a task exited or closed its end early)")
                    break
                received += 1
                if self._cancel.is_set():
                    command.close_fds()
                    break
                if self.check_command is not None:
                    try:
                        self.check_command(command)
                    except BaseException as err:
                        command.reply(str(err))  # a waiting task fails with the reason
                        command.close_fds()
                        raise
                self._dispatch(command)
        except ChannelError as err:
            if not self._cancel.is_set():
                self._fail(err)
        except BaseException as err:  # noqa: BLE001 - a receiver bug must reach join(), not vanish
            self._fail(FillError(f"receiver failed: {type(err).__name__}: {err}"))

    def last_progress(self) -> float:
        """When the pool last worked (now, while a job is pending; any thread): the
        receiver's idle wait, and the orchestrator's wait for a task that waits on its
        fill (serial mode), start from here, so the task is not judged idle."""
        with self._lock:
            return time.monotonic() if self._pending else self._last_copy_s

    def _copied_chunk(self) -> None:
        with self._lock:
            self._last_copy_s = time.monotonic()

    def _dispatch(self, command: Command) -> None:
        """Queue one job per GPU of ``command`` on that GPU's worker (or finish it at once)."""
        by_gpu: dict[int, list[Entry]] = {}
        for entry in command.entries:
            by_gpu.setdefault(entry.gpu_id, []).append(entry)
        locals_by_gpu = {g.gpu_id: LocalGpu(g.local_gpu_id, g.minor) for g in command.gpus}
        with self._lock:
            self._stats.commands += 1
            if not by_gpu:
                pending = None
            else:
                pending = _Pending(command, len(by_gpu))
                self._pending.append(pending)
                for gpu_id, entries in by_gpu.items():
                    executor = self._executors.get(gpu_id)
                    if executor is None:
                        executor = ThreadPoolExecutor(1, thread_name_prefix=f"amdgpu-fill-{gpu_id:04x}")
                        self._executors[gpu_id] = executor
                        self._throttles[gpu_id] = Throttle(self.bytes_per_s_per_gpu)
                    future = executor.submit(self._fill_gpu, pending, gpu_id, locals_by_gpu[gpu_id],
                                             entries, self._throttles[gpu_id])
                    self._futures.append(future)
        if pending is None:
            self._finish(command)

    # --- worker threads (one per GPU) --------------------------------------------------

    def _fill_gpu(self, pending: _Pending, gpu_id: int, local: LocalGpu, entries: list[Entry],
                  throttle: Throttle) -> None:
        """Copy every entry of one GPU of one command; the GPU's worker thread only."""
        command = pending.command
        bo_index: int | None = None
        copied = 0
        try:
            if self._cancel.is_set():
                return
            faults.point("amdgpu.fill")
            self.backend.prepare_fill(gpu_id, local)
            sources: dict[str, int] = {}  # path -> its fd, for this job
            try:
                last_use = {e.fd_index: i for i, e in enumerate(entries)}
                for i, entry in enumerate(entries):
                    bo_index = entry.bo_index
                    bo_fd = command.fds[entry.fd_index]
                    path = os.fspath(self.source_path(command, entry) if self.source_path is not None
                                     else self.pages_path(command.kfd_id, gpu_id))
                    if path not in sources:
                        sources[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    src_fd = sources[path]
                    problem = check_ranges(entry, src_fd, bo_fd)
                    if problem:
                        raise FillError(f"{problem} ({os.fspath(path)})", gpu_id, bo_index, command.kfd_id)
                    try:
                        copy_bo(self.backend, bo_fd, src_fd, entry, self.chunk_bytes, throttle, self._cancel,
                                on_chunk=self._copied_chunk)
                    finally:
                        if last_use[entry.fd_index] == i:
                            self.backend.release_bo(bo_fd)
                    copied += entry.size_bytes
            finally:
                for fd in sources.values():
                    os.close(fd)
        except Cancelled:
            return
        except (FillError, ChannelError) as err:
            self._fail(err)
            return
        except PycrestoreError as err:
            self._fail(_wrap(err, gpu_id, bo_index, command.kfd_id))
            return
        except OSError as err:
            self._fail(_wrap(err, gpu_id, bo_index, command.kfd_id, err.strerror))
            return
        except BaseException as err:  # noqa: BLE001 - any failure must reach join() with its GPU and BO
            self._fail(_wrap(err, gpu_id, bo_index, command.kfd_id, f"{type(err).__name__}: {err}"))
            return
        finally:
            with self._lock:
                self._stats.bytes_by_gpu[gpu_id] = self._stats.bytes_by_gpu.get(gpu_id, 0) + copied
                self._stats.finished_s = self._last_copy_s = max(self._stats.finished_s, time.monotonic())
                pending.jobs_left -= 1
                last = pending.jobs_left == 0
                if last:
                    self._pending.remove(pending)
            if last:
                self._finish(command)

    def _finish(self, command: Command) -> None:
        """Every copy of ``command`` has ended: hand it to on_filled (if it succeeded), answer
        a waiting sender, close its fds."""
        try:
            with self._lock:
                failed = self._error is not None or self._cancel.is_set()
                if not failed:
                    self._stats.bos += len(command.fds)
            if self.on_filled is not None and not failed:
                self.on_filled(command)
        except BaseException as err:  # noqa: BLE001 - reported through join()
            self._fail(FillError(f"on_filled failed: {type(err).__name__}: {err}", kfd_id=command.kfd_id))
        finally:
            command.reply(self._failure())
            command.close_fds()

    def _failure(self) -> str | None:
        """Why the pool's copies did not all succeed (its first error), or None."""
        with self._lock:
            if self._error is not None:
                return str(self._error)
        return "the fill was stopped" if self._cancel.is_set() else None

    # --- shared helpers ----------------------------------------------------------------

    def _fail(self, err: BaseException) -> None:
        """Record ``err`` if it is the first error, and make every other worker stop."""
        with self._lock:
            if self._error is None:
                self._error = err
        self._cancel.set()

    def _shutdown(self) -> None:
        """End the worker threads (their jobs have ended or see the cancel) and close leftover fds."""
        with self._lock:
            executors = list(self._executors.values())
            self._executors.clear()
        for executor in executors:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            pending, self._pending = self._pending, []
        for p in pending:  # jobs cancelled before they ran never finished their command
            p.command.reply(self._failure() or "the fill was stopped")
            p.command.close_fds()


def _wrap(err: BaseException, gpu_id: int, bo_index: int | None, kfd_id: int, cause: str | None = None) -> FillError:
    wrapped = FillError(cause or str(err), gpu_id, bo_index, kfd_id)
    wrapped.__cause__ = err
    return wrapped


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
