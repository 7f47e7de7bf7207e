"""AmdgpuPlugin: CRIU's amdgpu plugin restore path, with VRAM filled beside the host memory.

The hooks, in the order a restore calls them, and the process each runs in::

    restore_init         orchestrator  read and check every amdgpu-kfd-<id>.img and its pages
                                       files; pick the backend ("kfd" or "sim") and the mode;
                                       make the channel (a socketpair) the tasks inherit
    post_forking         orchestrator  close our copy of the task end; start the FillPool
    restore_ext_file     task          for a /dev/kfd EXT file: open the device, re-create the
                                       BOs (dma-buf fds), then
                                         parallel: send the command + fds, return at once
                                         serial:   fill the BOs here, then send them flagged
                                                   ALREADY_FILLED (simgpu's device keeps them)
                                       close the dma-bufs (and, after the task's last kfd file,
                                       its channel end); return the device fd to install
    update_vma_map       task          a device VMA at (addr, old pgoff): the BO's new pgoff
    resume_devices_late  orchestrator  first call: join the pool (every copy done, or its
                                       error raised); then resume the GPU of that task
    cleanup              orchestrator  stop the pool if it still runs; close the channel

Parallel mode is the default (``ctx.options["parallel_gpu"]``). As in CRIU
(research/criu-restore-internals.md §5.9) a tree of several processes is filled serially,
each task filling its own BOs before its blob: the tasks of a tree prepare side by side and
share one channel, and CRIU never ran the parallel path for them.

What the orchestrator's restore must do for this plugin, beyond calling the hooks: keep the
fds of :meth:`AmdgpuPlugin.inherited_fds` open in the tasks until their files are installed
(the task end of the channel), then call :meth:`AmdgpuPlugin.close_inherited_fds` in the task.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import socket
from pathlib import Path
from typing import Any

from pycriu_restore import faults
from pycriu_restore.errors import EXIT_RESTORE, PycrestoreError
from pycriu_restore.plan.model import ExtFileEnd, Task
from pycriu_restore.plugins.amdgpu.backend import GpuBackend, LocalGpu, RestoredBo
from pycriu_restore.plugins.amdgpu.channel import (
    MESSAGE_TIMEOUT_S,
    ChannelError,
    Command,
    Entry,
    GpuRecord,
    make_channel,
    send_command,
)
from pycriu_restore.plugins.amdgpu.fillpool import (
    DEFAULT_CHUNK_BYTES,
    FillError,
    FillPool,
    FillStats,
    Throttle,
    check_ranges,
    copy_bo,
)
from pycriu_restore.plugins.amdgpu.images import KfdImage, kfd_file_ids, load_kfd_image
from pycriu_restore.plugins.amdgpu.sim import SimBackend, SimDevice
from pycriu_restore.plugins.api import ExtFile, Plugin, RestoreContext

log = logging.getLogger(__name__)

BACKENDS = ("kfd", "sim")
# Device files whose VMAs the plugin moves (CRIU's amdgpu_plugin_update_vmamap).
KFD_DEVICE_PATH = "/dev/kfd"
RENDER_NODE_PREFIX = "/dev/dri/renderD"


class AmdgpuError(PycrestoreError):
    """The amdgpu plugin could not restore a GPU file (the cause is chained)."""

    exit_code = EXIT_RESTORE


class AmdgpuPlugin(Plugin):
    """The amdgpu plugin (entry point ``amdgpu``). Options read from ``ctx.options``:

    ``gpu_backend`` "kfd" (default) or "sim"; ``parallel_gpu`` (default True);
    ``gpu_bytes_per_s`` a per-GPU bandwidth cap for the copies (default none);
    ``gpu_chunk_bytes`` bytes per copy call; ``gpu_fill_timeout_s`` how long
    resume_devices_late waits for the copies (default: as long as they take).
    A ``backend`` passed to the constructor overrides ``gpu_backend`` (tests).
    """

    name = "amdgpu"
    description = "AMD GPU buffer objects (/dev/kfd): re-created in the task, VRAM filled in parallel"

    def __init__(self, backend: GpuBackend | None = None) -> None:
        self._given_backend = backend
        self._reset()

    def _reset(self) -> None:
        # Set in restore_init (orchestrator), read-only afterwards, inherited by the tasks:
        self.backend: GpuBackend | None = self._given_backend
        self.parallel = False
        self._kfd: dict[int, KfdImage] = {}  # ExtFileEntry id -> its checked image
        self._files_of: dict[int, set[int]] = {}  # checkpointed pid -> kfd file ids it holds
        self._chunk_bytes = DEFAULT_CHUNK_BYTES
        self._bytes_per_s: float | None = None
        self._fill_timeout_s: float | None = None
        self._orch_sock: socket.socket | None = None
        self._task_sock: socket.socket | None = None
        self._sock_inodes: dict[int, tuple[int, int]] = {}  # fd -> (st_dev, st_ino) at creation
        self._send_lock: Any = None  # serial mode with several tasks: one sender at a time
        # orchestrator only, from post_forking:
        self._pool: FillPool | None = None
        self._joined = False
        self.stats: FillStats | None = None
        # task only (each forked task changes its own copy):
        self._installed: dict[int, int] = {}  # kfd file id -> the fd it was installed at
        self._vma_moves: dict[tuple[int, int], int] = {}  # (addr, old pgoff) -> new pgoff

    @property
    def sim_device(self) -> SimDevice | None:
        """simgpu's device memory (the BOs the tasks sent), or None with another backend.

        It outlives the restore so that it can be checked; the caller closes it.
        """
        return self.backend.device if isinstance(self.backend, SimBackend) else None

    def inherited_fds(self) -> tuple[int, ...]:
        """Fds the forked tasks must keep until their files are installed (the channel's task end).

        Orchestrator, after restore_init: the task's preparation leaves these open when it
        closes what it inherited, and calls :meth:`close_inherited_fds` once its fds are in.
        """
        return () if self._task_sock is None else (self._task_sock.fileno(),)

    def close_inherited_fds(self) -> None:
        """Task, after its fds are installed: close the channel ends it still holds, if any.

        A task with no kfd file never sent a command; one with kfd files has closed its end
        already. Closes a number only if it still holds our socket (it may be reused).
        """
        self._close_if_ours(self._orch_sock)
        self._close_if_ours(self._task_sock)
        self._orch_sock = self._task_sock = None

    # --- orchestrator: before any fork --------------------------------------------------

    def restore_init(self, ctx: RestoreContext) -> None:
        """Check every kfd image, choose backend and mode, make the channel. Nothing if no GPU state."""
        self._reset()
        ids = kfd_file_ids(ctx.images)
        if not ids:
            return
        self._kfd = {file_id: load_kfd_image(ctx.images, file_id) for file_id in ids}
        for task in ctx.plan.tasks:
            held = {f.file_id for f in task.files if isinstance(f, ExtFileEnd) and f.file_id in self._kfd}
            if held:
                self._files_of[task.pid] = held
        unused = set(self._kfd) - {i for held in self._files_of.values() for i in held}
        for file_id in sorted(unused):
            log.warning("amdgpu: %s: no task holds this file; its BOs are not restored", self._kfd[file_id].path.name)
        if not self._files_of:
            return
        faults.point("amdgpu.restore_init")

        options = ctx.options
        if self.backend is None:
            self.backend = _make_backend(options.get("gpu_backend", "kfd"))
        self._chunk_bytes = int(options.get("gpu_chunk_bytes") or DEFAULT_CHUNK_BYTES)
        rate = options.get("gpu_bytes_per_s")
        self._bytes_per_s = float(rate) if rate else None
        timeout = options.get("gpu_fill_timeout_s")
        self._fill_timeout_s = float(timeout) if timeout else None
        self.parallel = bool(options.get("parallel_gpu", True))
        if self.parallel and len(ctx.plan.tasks) > 1:
            # CRIU's rule (parallel_disabled when the root has children, §5.9).
            log.info("amdgpu: %d processes in the tree: each task fills its own BOs (serial), as CRIU does",
                     len(ctx.plan.tasks))
            self.parallel = False
        if len(ctx.plan.tasks) > 1:
            # Tasks of a tree prepare at the same time: one command on the shared stream at once.
            # A fork-context Lock is a semaphore in shared memory: no fd, inherited by fork.
            self._send_lock = multiprocessing.get_context("fork").Lock()
        self._orch_sock, self._task_sock = make_channel()
        for sock in (self._orch_sock, self._task_sock):
            st = os.fstat(sock.fileno())
            self._sock_inodes[sock.fileno()] = (st.st_dev, st.st_ino)
        log.info("amdgpu: %d kfd file(s), %d bytes of BO contents, backend %s, %s fill",
                 len(self._kfd), sum(k.total_bytes for k in self._kfd.values()), self.backend.name,
                 "parallel" if self.parallel else "serial")

    # --- orchestrator: after the root fork ----------------------------------------------

    def post_forking(self, ctx: RestoreContext) -> None:
        """Close our copy of the task end (so the stream can end) and start the fill pool."""
        if self._orch_sock is None:
            return
        faults.point("amdgpu.post_forking")
        assert self._task_sock is not None and self.backend is not None, "post_forking: restore_init did not run"
        self._task_sock.close()  # the root has its copy now; ours would hide the task's EOF
        self._task_sock = None
        device = self.sim_device
        self._pool = FillPool(
            self.backend, self._orch_sock, self._pages_path,
            expected_commands=sum(len(ids) for ids in self._files_of.values()),
            chunk_bytes=self._chunk_bytes, bytes_per_s_per_gpu=self._bytes_per_s,
            check_command=self._check_command, on_filled=device.adopt if device is not None else None)
        self._pool.start()

    def _pages_path(self, kfd_id: int, gpu_id: int) -> Path:
        """The pages file of one GPU of a kfd file (fill-pool workers)."""
        image = self._kfd.get(kfd_id)
        pages = image.gpus.get(gpu_id) if image is not None else None
        if pages is None or pages.path is None:
            raise FillError(f"kfd file {kfd_id} has no pages file for this GPU", gpu_id)
        return pages.path

    def _check_command(self, command: Command) -> None:
        """Every entry must be exactly one VRAM/GTT BO of the kfd image, at its own GPU's offset.

        The receiver thread runs this before any copy: a task that computed offsets wrongly
        (upstream's multi-GPU bug, §5.12.1) is caught here, not after filling VRAM with garbage.
        """
        what = f"command for kfd file {command.kfd_id}"
        image = self._kfd.get(command.kfd_id)
        if image is None:
            raise ChannelError(what, f"no amdgpu-kfd-{command.kfd_id}.img in the images", command.kfd_id,
                               command.sender_pid)
        for i, entry in enumerate(command.entries):
            bos = image.kfd.bo_entries
            problem = None
            if entry.bo_index >= len(bos) or bos[entry.bo_index].gpu_id != entry.gpu_id:
                problem = f"BO {entry.bo_index} of gpu_id {entry.gpu_id:#x} is not in {image.path.name}"
            else:
                content = next((c for c in image.gpus[entry.gpu_id].bos if c.index == entry.bo_index), None)
                if content is None:
                    problem = f"BO {entry.bo_index} is not a VRAM/GTT BO"
                elif (entry.file_offset, entry.size_bytes, entry.bo_offset) != (content.file_offset, content.size_bytes, 0):
                    problem = (f"BO {entry.bo_index}: file offset {entry.file_offset}, {entry.size_bytes} bytes at "
                               f"BO offset {entry.bo_offset}; the image says offset {content.file_offset}, "
                               f"{content.size_bytes} bytes at 0")
            if problem:
                raise ChannelError(what, f"entry {i}: {problem}", command.kfd_id, command.sender_pid)

    # --- task: installing its fds -------------------------------------------------------

    def restore_ext_file(self, ctx: RestoreContext, task: Task, ext: ExtFile) -> int | None:
        """Re-create the BOs of a /dev/kfd file and hand their contents over; return the device fd.

        Runs in the task, still Python, before its blob. None if ``ext`` is not a kfd file.
        """
        image = self._kfd.get(ext.file_id)
        if image is None or self.backend is None:
            return None
        if ext.file_id in self._installed:
            # Another fd of the same open file: CRIU dups the first one.
            return os.dup(self._installed[ext.file_id])
        self._close_if_ours(self._orch_sock)  # the orchestrator's end is not ours to hold
        self._orch_sock = None
        device_fd = self._restore_kfd(task, image)
        self._installed[ext.file_id] = ext.fd
        if set(self._installed) >= self._files_of.get(task.pid, set()):
            self._close_if_ours(self._task_sock)  # the last kfd file of this task: no more commands
            self._task_sock = None
        return device_fd

    def _restore_kfd(self, task: Task, image: KfdImage) -> int:
        """open_device, restore_bos, then send (parallel) or fill and send (serial). The device fd."""
        backend = self.backend
        assert backend is not None, "_restore_kfd: no backend"
        name = image.path.name
        try:
            device_fd = backend.open_device()
        except PycrestoreError as err:
            raise AmdgpuError(f"{name}: cannot open the GPU device: {err}", pid=task.pid) from err
        except OSError as err:
            raise AmdgpuError(f"{name}: cannot open the GPU device: {err.strerror or err}", pid=task.pid) from err
        bos: list[RestoredBo] = []
        try:
            gpus = backend.map_gpus(image.kfd)
            bos = backend.restore_bos(device_fd, image.kfd, {g: local.gpu_id for g, local in gpus.items()})
            command = self._command_for(image, gpus, bos, task)
            for bo in bos:
                self._vma_moves[(bo.addr, bo.old_offset)] = bo.restored_offset
            if not self.parallel:
                self._fill_serially(image, command, gpus)
                command.already_filled = True
            self._send(command, task)
        except BaseException as err:
            os.close(device_fd)
            if isinstance(err, (AmdgpuError, ChannelError, FillError)):
                raise
            if isinstance(err, (PycrestoreError, OSError)):
                raise AmdgpuError(f"{name}: {err}", pid=task.pid) from err
            raise
        finally:
            for bo in bos:  # sent (the orchestrator has its own copies) or filled: ours go
                os.close(bo.dmabuf_fd)
        return device_fd

    def _command_for(self, image: KfdImage, gpus: dict[int, LocalGpu], bos: list[RestoredBo], task: Task) -> Command:
        """The command for ``bos``: one entry per BO, at its offset in its own GPU's pages file."""
        expected = sorted(c.index for g in image.gpus.values() for c in g.bos)
        found = sorted(bo.index for bo in bos)
        if found != expected:
            raise AmdgpuError(f"{image.path.name}: the backend restored VRAM/GTT BOs {found[:8]}..., "
                              f"the image has {expected[:8]}... ({len(found)} vs {len(expected)})", pid=task.pid)
        records = []
        for gpu_id in sorted({bo.gpu_id for bo in bos}):
            local = gpus.get(gpu_id)
            if local is None:
                raise AmdgpuError(f"{image.path.name}: gpu_id {gpu_id:#x} was not mapped to a local GPU", pid=task.pid)
            records.append(GpuRecord(gpu_id, local.gpu_id, local.minor))
        entries = []
        for fd_index, bo in enumerate(bos):
            content = image.content(bo.index)
            entries.append(Entry(gpu_id=bo.gpu_id, fd_index=fd_index, bo_index=bo.index,
                                 file_offset=content.file_offset, size_bytes=content.size_bytes))
        return Command(kfd_id=image.file_id, gpus=records, entries=entries, fds=[bo.dmabuf_fd for bo in bos],
                       sender_pid=os.getpid())

    def _fill_serially(self, image: KfdImage, command: Command, gpus: dict[int, LocalGpu]) -> None:
        """Serial mode: copy every BO here, one GPU after the other, in the task's only thread.

        No thread may exist in a task that is about to enter its blob, so unlike CRIU's
        serial path (one pthread per GPU) the GPUs are filled one after another.
        """
        assert self.backend is not None, "_fill_serially: no backend"
        for record in command.gpus:
            self.backend.prepare_fill(record.gpu_id, gpus[record.gpu_id])
            pages = image.gpus[record.gpu_id]
            assert pages.path is not None, f"_fill_serially: gpu {record.gpu_id:#x} has BOs but no pages file"
            throttle = Throttle(self._bytes_per_s)
            src_fd = os.open(pages.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for entry in command.entries:
                    if entry.gpu_id != record.gpu_id:
                        continue
                    bo_fd = command.fds[entry.fd_index]
                    problem = check_ranges(entry, src_fd, bo_fd)
                    if problem:
                        raise FillError(problem, entry.gpu_id, entry.bo_index, image.file_id)
                    try:
                        copy_bo(self.backend, bo_fd, src_fd, entry, self._chunk_bytes, throttle)
                    except (PycrestoreError, OSError) as err:
                        if isinstance(err, FillError):
                            raise
                        raise FillError(str(err), entry.gpu_id, entry.bo_index, image.file_id) from err
                    finally:
                        self.backend.release_bo(bo_fd)
            finally:
                os.close(src_fd)

    def _send(self, command: Command, task: Task) -> None:
        """Send ``command`` on the task end (one sender at a time when the tree has several tasks)."""
        sock = self._task_sock
        if sock is None or not self._is_ours(sock):
            raise AmdgpuError("the amdgpu channel's task end is gone before RESTORE_EXT_FILE: the task "
                              "must keep AmdgpuPlugin.inherited_fds() open until its files are installed",
                              pid=task.pid)
        lock = self._send_lock
        if lock is not None and not lock.acquire(timeout=MESSAGE_TIMEOUT_S):
            raise AmdgpuError(f"another task held the amdgpu channel for {MESSAGE_TIMEOUT_S:g} s", pid=task.pid)
        try:
            send_command(sock, command)
        finally:
            if lock is not None:
                lock.release()

    def _is_ours(self, sock: socket.socket) -> bool:
        """Whether ``sock``'s fd number still holds the socket restore_init made (not a reused number)."""
        try:
            st = os.fstat(sock.fileno())
        except OSError:
            return False
        return self._sock_inodes.get(sock.fileno()) == (st.st_dev, st.st_ino)

    def _close_if_ours(self, sock: socket.socket | None) -> None:
        """Close a channel end in the task, unless its number was closed and reused meanwhile."""
        if sock is None or sock.fileno() < 0:
            return
        if self._is_ours(sock):
            sock.close()
        else:
            sock.detach()  # someone closed the fd already; the number may be another file's now

    def update_vma_map(self, ctx: RestoreContext, task: Task, path: str, start: int,
                       pgoff: int) -> tuple[int, int | None] | None:
        """The new mmap offset of a BO mapped at ``start`` with the image's ``pgoff``.

        The fd is None: the VMA is mapped by reopening its path, as CRIU does for /dev/kfd.
        """
        path = re.sub("/+", "/", path)
        if path != KFD_DEVICE_PATH and not path.startswith(RENDER_NODE_PREFIX):
            return None
        new = self._vma_moves.get((start, pgoff))
        return None if new is None else (new, None)

    # --- orchestrator: after the blobs --------------------------------------------------

    def resume_devices_late(self, ctx: RestoreContext, pid: int) -> None:
        """Wait for the fill (first call), then resume the GPU state of ``pid`` if it has any.

        Every task is past its blob when this runs, so every command has been sent.
        Raises the pool's FillError/ChannelError: the restore must fail, not resume a GPU
        with half its memory.
        """
        if self._pool is None or self.backend is None:
            return
        if not self._joined:
            self._joined = True
            self.stats = self._pool.join(self._fill_timeout_s)
            log.info("amdgpu: filled %d bytes in %d BO(s) from %d command(s)", self.stats.total_bytes,
                     self.stats.bos, self.stats.commands)
        if _checkpoint_pid(pid) in self._files_of:
            self.backend.resume(pid)

    def cleanup(self, ctx: RestoreContext, failed: bool) -> None:
        """Stop the pool if it was not joined, close the channel and the backend's files."""
        if self._pool is not None and not self._joined:
            self._pool.stop()
        self._pool = None
        for sock in (self._orch_sock, self._task_sock):
            if sock is not None:
                sock.close()
        self._orch_sock = self._task_sock = None
        if self.backend is not None:
            self.backend.close()
            if failed and self.sim_device is not None:
                self.sim_device.close()


def _make_backend(name: str) -> GpuBackend:
    """The backend called ``name`` in the options."""
    if name == "sim":
        return SimBackend()
    if name == "kfd":
        from pycriu_restore.plugins.amdgpu.kfd_backend import KfdBackend  # the real GPU: only when asked

        return KfdBackend()
    raise AmdgpuError(f"amdgpu: gpu_backend is {name!r}, expected one of {', '.join(BACKENDS)}")


def _checkpoint_pid(pid: int) -> int:
    """The pid a task has inside its own pid namespace (proc(5) NSpid, last field): its checkpointed pid."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return pid
