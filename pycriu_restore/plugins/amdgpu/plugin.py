"""AmdgpuPlugin: CRIU's amdgpu plugin restore path, with VRAM filled beside the host memory.

The hooks, in the order a restore calls them, and the process each runs in::

    restore_init         orchestrator  read and check every amdgpu-kfd-<id>.img and its pages
                                       files, every render-node and dma-buf image and the
                                       handles that join them; pick the backend ("kfd" or
                                       "sim") and the mode; make the channel (a socketpair)
    post_forking         orchestrator  close our copy of the task end; start the FillPool
    restore_ext_file     task          for a /dev/kfd EXT file: open the device, re-create the
                                       BOs (dma-buf fds), send the command + fds, then
                                         parallel: return at once
                                         serial:   wait until the pool has filled them
                                                   (the command carries a reply pipe)
                                       close the dma-bufs (and, after the task's last kfd file,
                                       its channel end); return the device fd to install;
                                       ROCm's /dev/shm/hsakmt_shared_mem recreated.
                                       For a render-node file: its BOs in the GPU's one DRM
                                       file, contents the same way (a RENDER_NODE command);
                                       a dup of that DRM file. For a dma-buf file: a dup of
                                       its exporter's dma-buf. Files a file needs (kfd before
                                       render nodes, exporters before importers) are made
                                       first and wait for their own hook.
    update_vma_map       task          a device VMA at (addr, old pgoff): its new pgoff and
                                       the file to map it through (a render node: the DRM
                                       file; /dev/kfd: reopened, or simgpu's kfd memfd)
    resume_devices_late  orchestrator  first call: join the pool (every copy done, or its
                                       error raised); then resume the GPU of that task
    cleanup              orchestrator  stop the pool if it still runs; close the channel

Parallel mode is the default (``ctx.options["parallel_gpu"]``), for one process and for a
tree: the tasks of a tree prepare side by side and send their commands on the one channel,
one message at a time. (CRIU turns parallel restore off when the root has children,
research/criu-restore-internals.md §5.9: its worker lived in the restoring criu process and
hung under Podman in review; nothing here depends on which task sends.)

Both modes copy in the orchestrator's fill pool, one worker per GPU, so the GPUs are filled
side by side either way. CRIU's serial path copies in the restored task with a thread per
GPU; a task here cannot start a thread while it prepares (it is seized with
PTRACE_O_TRACECLONE, so a new thread would stop at birth), and the copier's render node,
staging buffer and GPU context would be left in the restored process.

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
from typing import Any, NoReturn

from pycriu_restore import faults, files
from pycriu_restore.errors import EXIT_RESTORE, PycrestoreError
from pycriu_restore.images import BadRecord
from pycriu_restore.plan.model import ExtFileEnd, Task
from pycriu_restore.plugins.amdgpu import hsakmt
from pycriu_restore.plugins.amdgpu.backend import GpuBackend, LocalGpu, RestoredBo, RestoredDrmBo
from pycriu_restore.plugins.amdgpu.channel import (
    IDLE_TIMEOUT_S,
    MESSAGE_TIMEOUT_S,
    ChannelError,
    Command,
    Entry,
    GpuRecord,
    make_channel,
    open_reply_pipe,
    send_command,
    wait_reply,
)
from pycriu_restore.plugins.amdgpu.fillpool import DEFAULT_CHUNK_BYTES, FillError, FillPool, FillStats
from pycriu_restore.plugins.amdgpu.images import (
    CRIU_PLUGIN_NAME,
    NO_HANDLE,
    PAGES_HEADER,
    KfdImage,
    RenderImage,
    dmabuf_file_ids,
    has_contents,
    kfd_file_ids,
    load_dmabuf_handle,
    load_kfd_image,
    load_render_image,
    render_file_ids,
)
from pycriu_restore.plugins.amdgpu.sim import SimBackend, SimDevice
from pycriu_restore.plugins.api import ExtFile, Plugin, RestoreContext

log = logging.getLogger(__name__)

BACKENDS = ("kfd", "sim")
# A file of ours: ("kfd" | "render" | "dmabuf", its ExtFileEntry id).
FileKey = tuple[str, int]
# A BO others share (imports, dma-buf files): (the checkpointed pid of the task whose files
# hold it, or None if none does; checkpoint gpu_id; GEM handle). Handles are numbers of one
# DRM file, so two GPUs, or two processes on one GPU, reuse them.
ExporterKey = tuple[int | None, int, int]
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
    resume_devices_late waits for the copies (default: as long as they take);
    ``gpu_idle_timeout_s`` how long the pool waits for a task's next message or progress
    report (default channel.IDLE_TIMEOUT_S); ``gpu_shm_dir`` where ROCm's shared memory
    file is recreated (default /dev/shm with the kfd backend; simgpu: not at all) and
    ``gpu_shm_sem_name`` its semaphore's name (default hsakmt_semaphore, as ROCm's).
    A ``backend`` passed to the constructor overrides ``gpu_backend`` (tests).
    """

    name = "amdgpu"
    criu_name = CRIU_PLUGIN_NAME
    description = "AMD GPU buffer objects (/dev/kfd): re-created in the task, VRAM filled in parallel"

    def __init__(self, backend: GpuBackend | None = None) -> None:
        self._given_backend = backend
        self._reset()

    def _reset(self) -> None:
        # Set in restore_init (orchestrator), read-only afterwards, inherited by the tasks:
        self.backend: GpuBackend | None = self._given_backend
        self.parallel = False
        self._kfd: dict[int, KfdImage] = {}  # ExtFileEntry id -> its checked image
        self._render: dict[int, RenderImage] = {}  # ExtFileEntry id -> render-node image
        self._dmabuf: dict[int, ExporterKey] = {}  # ExtFileEntry id -> the BO it is a dma-buf of
        self._exporters: dict[ExporterKey, tuple[str, int, int]] = {}  # -> (kind, file id, BO index)
        self._needed: set[ExporterKey] = set()  # exporters an import or a dma-buf file uses
        self._owner: dict[int, int] = {}  # ExtFileEntry id -> checkpointed pid of the first task holding it
        self._files_of: dict[int, set[int]] = {}  # checkpointed pid -> kfd file ids it holds
        self._plugin_files_of: dict[int, list[FileKey]] = {}  # pid -> every file of ours, fd order
        self._chunk_bytes = DEFAULT_CHUNK_BYTES
        self._bytes_per_s: float | None = None
        self._fill_timeout_s: float | None = None
        self._idle_timeout_s = IDLE_TIMEOUT_S
        self._shm_dir: str | None = None  # where ROCm's shared memory file goes (None: nowhere)
        self._sem_name = hsakmt.HSAKMT_SEM_NAME
        self._orch_sock: socket.socket | None = None
        self._task_sock: socket.socket | None = None
        self._sock_inodes: dict[int, tuple[int, int]] = {}  # fd -> (st_dev, st_ino) at creation
        self._send_lock: Any = None  # serial mode with several tasks: one sender at a time
        # orchestrator only, from post_forking:
        self._pool: FillPool | None = None
        self._joined = False
        self.stats: FillStats | None = None
        # task only (each forked task changes its own copy):
        self._installed: dict[FileKey, int] = {}  # file -> the fd it was installed at
        self._made: dict[FileKey, int] = {}  # files restored ahead of their hook -> their fd
        self._gpus: dict[int, LocalGpu] = {}  # checkpoint gpu_id -> where its kfd file put it
        self._shared: dict[ExporterKey, int] = {}  # needed exporter -> a dup of its dma-buf
        # (addr, old pgoff) -> (new pgoff, local gpu_id whose render fd maps it, or None: /dev/kfd)
        self._vma_moves: dict[tuple[int, int], tuple[int, int | None]] = {}
        self._render_moves: dict[tuple[int, int], tuple[int, int]] = {}  # (minor, old) -> (new, gpu)

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
        already. Closes a number only if it still holds our socket (it may be reused). Runs
        after the task's device VMAs have their fds (restore/task.py): what the backend
        opened in the task (its DRM files, its BO dups) goes too.
        """
        if self.backend is not None:
            self.backend.close_task_files()
        self._close_if_ours(self._orch_sock)
        self._close_if_ours(self._task_sock)
        self._orch_sock = self._task_sock = None
        shared, self._shared = self._shared, {}  # the dma-buf dups kept for importers
        made, self._made = self._made, {}  # restored ahead of a hook that never came
        for fd in [*shared.values(), *made.values()]:
            os.close(fd)

    # --- orchestrator: before any fork --------------------------------------------------

    def restore_init(self, ctx: RestoreContext) -> None:
        """Check every kfd image, choose backend and mode, make the channel. Nothing if no GPU state."""
        self._reset()
        ids = kfd_file_ids(ctx.images)
        if not ids:
            return
        self._kfd = {file_id: load_kfd_image(ctx.images, file_id) for file_id in ids}
        for task in ctx.plan.tasks:  # a file's BOs belong to the (first) task that holds it
            for f in task.files:
                if isinstance(f, ExtFileEnd):
                    self._owner.setdefault(f.file_id, task.pid)
        self._load_shared_images(ctx)
        for task in ctx.plan.tasks:
            held = {f.file_id for f in task.files if isinstance(f, ExtFileEnd) and f.file_id in self._kfd}
            if held:
                self._files_of[task.pid] = held
            ours = [key for f in sorted((f for f in task.files if isinstance(f, ExtFileEnd)), key=lambda f: f.fd)
                    if (key := self._key_of(f.file_id)) is not None]
            if ours:
                self._plugin_files_of[task.pid] = list(dict.fromkeys(ours))
        unused = set(self._kfd) - {i for held in self._files_of.values() for i in held}
        for file_id in sorted(unused):
            log.warning("amdgpu: %s: no task holds this file; its BOs are not restored", self._kfd[file_id].path.name)
        if not self._files_of:
            return
        faults.point("amdgpu.restore_init")

        options = ctx.options
        if self.backend is None:
            self.backend = _make_backend(options.get("gpu_backend", "kfd"),
                                         maps_devices=any(v.file is not None and v.file.plugin
                                                          for task in ctx.plan.tasks for v in task.vmas))
        self._chunk_bytes = int(options.get("gpu_chunk_bytes") or DEFAULT_CHUNK_BYTES)
        rate = options.get("gpu_bytes_per_s")
        self._bytes_per_s = float(rate) if rate else None
        timeout = options.get("gpu_fill_timeout_s")
        self._fill_timeout_s = float(timeout) if timeout else None
        self._shm_dir = options.get("gpu_shm_dir") or (hsakmt.SHM_DIR if self.backend.name == "kfd" else None)
        self._sem_name = options.get("gpu_shm_sem_name") or hsakmt.HSAKMT_SEM_NAME
        idle = options.get("gpu_idle_timeout_s")
        self._idle_timeout_s = float(idle) if idle else IDLE_TIMEOUT_S
        self.parallel = bool(options.get("parallel_gpu", True))
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
            expected_commands=sum(1 for keys in self._plugin_files_of.values() for k in keys if k[0] != "dmabuf"),
            chunk_bytes=self._chunk_bytes, bytes_per_s_per_gpu=self._bytes_per_s, idle_timeout_s=self._idle_timeout_s,
            check_command=self._check_command, on_filled=device.adopt if device is not None else None,
            source_path=self._source_path)
        self._pool.start()

    def _pages_path(self, kfd_id: int, gpu_id: int) -> Path:
        """The pages file of one GPU of a kfd file (fill-pool workers)."""
        image = self._kfd.get(kfd_id)
        pages = image.gpus.get(gpu_id) if image is not None else None
        if pages is None or pages.path is None:
            raise FillError(f"kfd file {kfd_id} has no pages file for this GPU", gpu_id)
        return pages.path

    def _source_path(self, command: Command, entry: Entry) -> Path:
        """The file an entry's bytes come from (fill-pool workers): a GPU's pages file, or a
        render-node BO's own drm-pages file."""
        if command.render_node:
            return self._render[command.kfd_id].contents[entry.bo_index]
        return self._pages_path(command.kfd_id, entry.gpu_id)

    def _check_command(self, command: Command) -> None:
        """Every entry must be exactly one VRAM/GTT BO of the kfd image, at its own GPU's offset.

        The receiver thread runs this before any copy: a task that computed offsets wrongly
        (upstream's multi-GPU bug, §5.12.1) is caught here, not after filling VRAM with garbage.
        A render-node command must name BOs with contents of that render node, whole, from
        offset 8 of their own files.
        """
        if command.render_node:
            self._check_render_command(command)
            return
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
        """Restore a /dev/kfd, render-node or dma-buf file (BOs re-created, contents handed
        over); return the fd to install.

        Runs in the task, still Python, before its blob. None if ``ext`` is none of ours.
        """
        key = self._key_of(ext.file_id)
        if key is None or self.backend is None:
            return None
        if key in self._installed:
            # Another fd of the same open file: CRIU dups the first one.
            return os.dup(self._installed[key])
        self._close_if_ours(self._orch_sock)  # the orchestrator's end is not ours to hold
        self._orch_sock = None
        fd = self._made.pop(key, None)
        if fd is None:
            fd = self._make(task, key)
        self._installed[key] = ext.fd
        senders = {k for k in self._plugin_files_of.get(task.pid, []) if k[0] != "dmabuf"}
        if senders <= set(self._installed) | set(self._made):
            self._close_if_ours(self._task_sock)  # the task's last command is sent
            self._task_sock = None
        return fd

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
            self._gpus.update(gpus)
            for bo in bos:
                self._vma_moves[(bo.addr, bo.old_offset)] = (bo.restored_offset, bo.local_gpu_id)
                handle = image.kfd.bo_entries[bo.index].handle
                key = (self._owner.get(image.file_id), bo.gpu_id, handle)
                if key in self._needed:  # an import or a dma-buf file will want it
                    self._shared[key] = _keep(bo.dmabuf_fd)
            # Doorbell and MMIO BOs: their VMAs stay on /dev/kfd, at the offsets restore_bos gave.
            for remap in backend.vma_remaps:
                if not has_contents(remap.alloc_flags):
                    self._vma_moves[(remap.addr, remap.old_offset)] = (remap.new_offset, None)
            self._send(command, task, name)
            if self._shm_dir is not None:  # as CRIU, once the BOs are back
                hsakmt.restore_shared_mem(image.kfd.shared_mem_size, image.kfd.shared_mem_magic, self._shm_dir,
                                          self._sem_name)
        except BaseException as err:
            os.close(device_fd)
            _raise_naming(err, name, task.pid)
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

    # --- render nodes and dma-bufs --------------------------------------------------------

    def _load_shared_images(self, ctx: RestoreContext) -> None:
        """Orchestrator, restore_init: read every render-node and dma-buf image, check the handles.

        Exporters are the KFD VRAM/GTT BOs and the created render-node BOs, keyed by the task
        that holds them, the checkpoint gpu_id and the handle (ExporterKey): handles are numbers
        of one DRM file, so two GPUs, or two processes, reuse them (a single handle-keyed table,
        as upstream keeps per process, would confuse a process's two GPUs). Every import must
        find an exporter of its own task on its own GPU; every dma-buf file exactly one
        exporter of its own task.
        """
        gpu_ids = {gpu for image in self._kfd.values() for gpu in image.gpus}
        for image in self._kfd.values():
            for index, bo in enumerate(image.kfd.bo_entries):
                if has_contents(bo.alloc_flags) and bo.handle != NO_HANDLE:
                    self._add_exporter(image.path.name, (self._owner.get(image.file_id), bo.gpu_id, bo.handle),
                                       ("kfd", image.file_id, index))
        self._render = {i: load_render_image(ctx.images, i, gpu_ids) for i in render_file_ids(ctx.images)}
        for render in self._render.values():
            for index, bo in enumerate(render.node.bo_entries):
                if not bo.is_import:
                    self._add_exporter(render.path.name, (self._owner.get(render.file_id), render.node.gpu_id,
                                                          bo.handle), ("render", render.file_id, index))
        for render in self._render.values():
            for index, bo in enumerate(render.node.bo_entries):
                key = (self._owner.get(render.file_id), render.node.gpu_id, bo.handle)
                if bo.is_import:
                    if key not in self._exporters:
                        raise BadRecord(str(render.path), f"BO {index} imports handle {bo.handle} of gpu_id "
                                        f"{key[1]:#x}, which no KFD or render-node BO of its task exports")
                    self._needed.add(key)
        for file_id in dmabuf_file_ids(ctx.images):
            handle, pid = load_dmabuf_handle(ctx.images, file_id), self._owner.get(file_id)
            found = [key for key in self._exporters if key[0] == pid and key[2] == handle]
            if len(found) != 1:
                raise BadRecord(str(ctx.images.path(f"amdgpu-dmabuf_{file_id}.img")),
                                f"gem_handle {handle} names {len(found)} exported BOs of its task (GPUs "
                                f"{', '.join(f'{g:#x}' for _, g, _ in found) or 'none'}), expected exactly one")
            self._dmabuf[file_id] = found[0]
            self._needed.add(found[0])

    def _add_exporter(self, where: str, key: ExporterKey, value: tuple[str, int, int]) -> None:
        if key in self._exporters:
            raise BadRecord(where, f"handle {key[2]} of gpu_id {key[1]:#x} is exported twice in the task "
                            f"({self._exporters[key][0]} file {self._exporters[key][1]} and this one)")
        self._exporters[key] = value

    def _key_of(self, file_id: int) -> FileKey | None:
        """Which of our files the ExtFileEntry ``file_id`` is, or None."""
        for kind, table in (("kfd", self._kfd), ("render", self._render), ("dmabuf", self._dmabuf)):
            if file_id in table:
                return (kind, file_id)
        return None

    def _make(self, task: Task, key: FileKey) -> int:
        """Restore one of our files in the task and return its fd.

        Order: a render node needs the task's kfd files first (their GPU map, their BOs it
        imports: CRIU leaves this order to chance and fails otherwise) and the render nodes
        that export its imports; a dma-buf file needs every file of the task. Files restored
        ahead of their own hook wait in ``_made``.
        """
        kind, file_id = key
        if kind == "kfd":
            return self._restore_kfd(task, self._kfd[file_id])
        for other in self._plugin_files_of.get(task.pid, []):
            if other == key or other[0] == "dmabuf" or other in self._installed or other in self._made:
                continue
            if other[0] == "kfd" or kind == "dmabuf" or self._exports_to(other[1], file_id):
                # Parked: the task's own fds are dup2()ed to their numbers before its hook comes.
                self._made[other] = files.park(self._make(task, other))
        if kind == "render":
            return self._restore_render(task, self._render[file_id])
        exporter = self._dmabuf[file_id]
        if exporter not in self._shared:
            raise AmdgpuError(f"amdgpu-dmabuf_{file_id}.img: the BO with handle {exporter[2]} of gpu_id "
                              f"{exporter[1]:#x} is not restored in this task", pid=task.pid)
        return os.dup(self._shared[exporter])

    def _exports_to(self, exporter_id: int, importer_id: int) -> bool:
        """Whether render node ``exporter_id`` holds a BO that render node ``importer_id`` imports."""
        importer = self._render[importer_id].node
        pid = self._owner.get(importer_id)
        return any(self._exporters.get((pid, importer.gpu_id, bo.handle), ("", 0, 0))[:2] == ("render", exporter_id)
                   for bo in importer.bo_entries if bo.is_import)

    def _restore_render(self, task: Task, image: RenderImage) -> int:
        """A render-node file: its BOs in the GPU's DRM file, contents sent (and, serial, waited
        for). Its fd."""
        backend = self.backend
        assert backend is not None, "_restore_render: no backend"
        node, name = image.node, image.path.name
        owner = self._owner.get(image.file_id)
        local = self._gpus.get(node.gpu_id)
        if local is None:
            raise AmdgpuError(f"{name}: render node of gpu_id {node.gpu_id:#x} in a task with no /dev/kfd file "
                              "mapping that GPU (CRIU maps render nodes with the kfd image's topology)", pid=task.pid)

        def import_fd(handle: int) -> int:
            fd = self._shared.get((owner, node.gpu_id, handle))
            if fd is None:
                raise AmdgpuError(f"{name}: imports handle {handle}, whose exporter is not restored in this task",
                                  pid=task.pid)
            return fd

        bos: list[RestoredDrmBo] = []
        render_fd = -1
        try:
            render_fd, bos = backend.restore_render_node(node, local, import_fd)
            for bo in bos:
                if bo.new_offset is not None:
                    self._render_moves[(node.drm_render_minor, bo.old_offset)] = (bo.new_offset, local.gpu_id)
                if bo.dmabuf_fd >= 0 and (owner, node.gpu_id, bo.handle) in self._needed:
                    self._shared[(owner, node.gpu_id, bo.handle)] = _keep(bo.dmabuf_fd)
            filled = [bo for bo in bos if bo.index in image.contents]
            command = Command(kfd_id=image.file_id, gpus=[GpuRecord(node.gpu_id, local.gpu_id, local.minor)],
                              entries=[Entry(gpu_id=node.gpu_id, fd_index=i, bo_index=bo.index,
                                             file_offset=PAGES_HEADER.size, size_bytes=bo.size)
                                       for i, bo in enumerate(filled)],
                              fds=[bo.dmabuf_fd for bo in filled], sender_pid=os.getpid(), render_node=True)
            self._send(command, task, name)
        except BaseException as err:
            if render_fd >= 0:
                os.close(render_fd)
            _raise_naming(err, name, task.pid)
        finally:
            for bo in bos:
                if bo.dmabuf_fd >= 0:
                    os.close(bo.dmabuf_fd)
        return render_fd

    def _check_render_command(self, command: Command) -> None:
        """A render-node command names that node's BOs with contents, whole, from their files' offset 8."""
        what = f"command for render-node file {command.kfd_id}"
        image = self._render.get(command.kfd_id)
        if image is None:
            raise ChannelError(what, f"no amdgpu-renderD-{command.kfd_id}.img in the images", command.kfd_id,
                               command.sender_pid)
        for i, entry in enumerate(command.entries):
            bos = image.node.bo_entries
            if (entry.bo_index not in image.contents or entry.gpu_id != image.node.gpu_id
                    or (entry.file_offset, entry.size_bytes, entry.bo_offset)
                    != (PAGES_HEADER.size, bos[entry.bo_index].size, 0)):
                raise ChannelError(what, f"entry {i}: BO {entry.bo_index} of gpu_id {entry.gpu_id:#x}, "
                                   f"{entry.size_bytes} bytes at file offset {entry.file_offset}: not a BO with "
                                   f"contents of {image.path.name}, whole", command.kfd_id, command.sender_pid)

    def _send(self, command: Command, task: Task, name: str) -> None:
        """Send ``command`` on the task end (one sender at a time when the tree has several
        tasks); in serial mode, then wait until the pool has filled its BOs.

        The reply pipe's write end travels with the command and our copy is closed at once,
        so the wait ends with the pool's answer, or with EOF if the orchestrator is gone.
        """
        sock = self._task_sock
        if sock is None or not self._is_ours(sock):
            raise AmdgpuError("the amdgpu channel's task end is gone before RESTORE_EXT_FILE: the task "
                              "must keep AmdgpuPlugin.inherited_fds() open until its files are installed",
                              pid=task.pid)
        reply = -1
        if not self.parallel:
            reply, command.reply_fd = open_reply_pipe()
        try:
            lock = self._send_lock
            if lock is not None and not lock.acquire(timeout=MESSAGE_TIMEOUT_S):
                raise AmdgpuError(f"another task held the amdgpu channel for {MESSAGE_TIMEOUT_S:g} s", pid=task.pid)
            try:
                send_command(sock, command)
            finally:
                if lock is not None:
                    lock.release()
        except BaseException:
            if reply >= 0:
                os.close(reply)
            raise
        finally:
            if command.reply_fd >= 0:
                os.close(command.reply_fd)
                command.reply_fd = -1
        if reply >= 0:
            wait_reply(reply, f"fill of {name}")

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
        """Where a device VMA at ``start`` with the image's ``pgoff`` maps now: (new pgoff, fd).

        As CRIU's amdgpu_plugin_update_vmamap: a /dev/kfd VMA (doorbell, MMIO) is answered
        by the backend's kfd_vma_target: on a GPU fd None, so that the caller reopens
        /dev/kfd by path (any open maps the task's doorbells: kfd_mmap dispatches by the
        offset's type and gpu_id); simgpu gives a new dup of the task's kfd memfd, at its own
        offset for the page. A render-node VMA must be mapped through the DRM file
        that holds the BO (DRM refuses mmap through another open of the node), so the fd is
        a new dup of the task's render fd for that GPU, owned by the caller (the backend's
        vma_target: simgpu answers with the BO's memfd at offset 0). KFD BOs are
        found by (address, offset) -- KFD maps them at the same CPU and GPU address; a
        render-node BO by (minor, offset): its CPU mapping need not be at its GPU address
        (CRIU compared the GPU address with the VMA start and missed them).
        """
        path = re.sub("/+", "/", path)
        is_kfd = path == KFD_DEVICE_PATH
        if not is_kfd and not path.startswith(RENDER_NODE_PREFIX):
            return None
        found = self._vma_moves.get((start, pgoff))
        if found is None and not is_kfd:
            minor = path[len(RENDER_NODE_PREFIX):]
            found = self._render_moves.get((int(minor), pgoff)) if minor.isdigit() else None
        if found is None:
            return None
        new_pgoff, local_gpu = found
        assert self.backend is not None, "update_vma_map: a moved VMA without a backend"
        if is_kfd or local_gpu is None:
            return self.backend.kfd_vma_target(new_pgoff)
        return self.backend.vma_target(local_gpu, new_pgoff)

    def last_progress(self) -> float:
        """When the fill pool last copied (now, while it copies): a serial task waiting for its
        fill is alive as long as its copies go on (orchestrator, any thread)."""
        pool = self._pool
        return pool.last_progress() if pool is not None else 0.0

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


def _raise_naming(err: BaseException, name: str, pid: int) -> NoReturn:
    """Re-raise ``err``, the failure of restoring the plugin file ``name``: the plugin's own
    errors as they are, a PycrestoreError or OSError of a layer below as an AmdgpuError that
    names the file, anything else (an interruption) untouched."""
    if isinstance(err, (PycrestoreError, OSError)) and not isinstance(err, (AmdgpuError, ChannelError, FillError)):
        raise AmdgpuError(f"{name}: {err}", pid=pid) from err
    raise err


def _keep(fd: int) -> int:
    """A dup of ``fd`` that the task keeps while it installs its fds: in the temporary range
    (files.park), where no image fd number will be dup2()ed over it."""
    return files.park(os.dup(fd))


def _make_backend(name: str, maps_devices: bool = True) -> GpuBackend:
    """The backend called ``name`` in the options. The fds it keeps in a task (its render
    nodes) are parked above the image's fds, as every temporary of a task is. Without
    device VMAs (``maps_devices``), simgpu keeps no BO for them (one fd per BO)."""
    if name == "sim":
        return SimBackend(park_fd=files.park, keep_vma_targets=maps_devices)
    if name == "kfd":
        from pycriu_restore.plugins.amdgpu.kfd_backend import KfdBackend  # the real GPU: only when asked

        return KfdBackend(park_fd=files.park)
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
