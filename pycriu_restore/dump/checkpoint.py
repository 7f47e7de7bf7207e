"""Take a checkpoint of one stopped task: read it, then write CRIU 4.x images of it.

    seize_stopped(pid)     PTRACE_SEIZE + PTRACE_INTERRUPT: the task stops in a
                           ptrace-stop wherever it is (in a syscall too), as `criu dump`
                           stops it. The caller releases it: kill it, or ptrace.detach.
    dump_task(pid, dir)    read everything first, then write the images:

    what                   from                                     image
    namespaces             /proc/PID/ns/* (must be ours)            ids-PID.img, inventory.img
    the tree               /proc/PID/stat                           pstree.img
    task state, registers  /proc, prlimit, PTRACE_GETREGSET ...     core-PID.img
    memory map             /proc/PID/smaps, map_files, exe, auxv    mm-PID.img
    open files             /proc/PID/fd, fdinfo, kcmp               files.img, fdinfo-2.img
    cwd, root, umask       /proc/PID/cwd, root, status              fs-PID.img
    memory contents        /proc/PID/pagemap, /proc/PID/mem         pagemap-PID.img, pages-1.img
    clocks                 clock_gettime                            timens-0.img
    seccomp filters        none (core.py refuses a task with one)   seccomp.img
    counters               this dump                                stats-dump

The order of the reads follows CRIU's, because the file ids follow it: mapped files and
the exe first, then the fds, then cwd and root (dump/ids.py). Nothing is written until
everything is read, so a task CannotDump refuses leaves no half-written directory.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from pycriu_restore.dump.core import core_entry
from pycriu_restore.dump.errors import DumpError
from pycriu_restore.dump.files import FileTable
from pycriu_restore.dump.fs import fs_entry
from pycriu_restore.dump.ids import TASK_KOBJ_ID, check_same_namespaces, kobj_ids
from pycriu_restore.dump.inventory import inventory_entry
from pycriu_restore.dump.mm import mm_entry
from pycriu_restore.dump.pages import PAGES_ID, dump_pages, pagemap_head
from pycriu_restore.dump.procfs import read_smaps, read_stat
from pycriu_restore.dump.pstree import pstree_entry
from pycriu_restore.dump.stats import dump_stats
from pycriu_restore.dump.timens import TIMENS_IMAGE_ID, timens_entry
from pycriu_restore.dump.vmas import vma_entries
from pycriu_restore.images import Image, dump_image
from pycriu_restore.images.kinds import file_name, kind_by_name
from pycriu_restore.images.schemas import seccomp_pb2
from pycriu_restore.linux import ptrace
from pycriu_restore.linux.waitstatus import StopKind, wait_for

PAGE_BYTES = mmap.PAGESIZE
_US_PER_S = 1_000_000


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint written: where, of which task, and what it holds."""

    directory: Path
    pid: int
    files: tuple[str, ...]      # the image files written, in writing order
    pages: int                  # pages saved in pages-1.img
    vmas: int


def seize_stopped(pid: int) -> None:
    """Make ``pid`` our tracee and stop it in a ptrace-stop (PTRACE_EVENT_STOP).

    Precondition: ``pid`` runs (or sleeps) and nobody traces it. Afterwards it is stopped
    until the caller kills or detaches it. Raises TaskGone if it died meanwhile.
    """
    ptrace.seize(pid)
    ptrace.interrupt(pid)
    while True:
        stop = wait_for(pid)
        assert stop is not None, "seize_stopped: waitpid without WNOHANG returned nothing"
        if stop.kind in (StopKind.EVENT_STOP, StopKind.GROUP):
            return
        if not stop.alive:
            raise DumpError(f"task ended while being stopped: {stop.describe()}", pid=pid)
        # A signal arrived before the interrupt: deliver it, then wait for the interrupt's stop.
        ptrace.cont(pid, stop.signal if stop.kind is StopKind.SIGNAL else 0)


def _write(directory: Path, name: str, data: bytes) -> None:
    try:
        (directory / name).write_bytes(data)
    except OSError as err:
        raise DumpError(f"{directory / name}: cannot write: {err.strerror or err}") from err


def dump_task(pid: int, images_dir: str | os.PathLike[str], *, freezing_us: int = 0) -> Checkpoint:
    """Write a CRIU 4.x checkpoint of ``pid`` into ``images_dir`` (created if missing).

    Precondition: ``pid`` is single-threaded and in a ptrace-stop of this thread
    (seize_stopped). It stays stopped. Raises CannotDump for what this dumper does not
    record (threads, signal handlers, sockets, namespaces ...), DumpError otherwise.
    """
    started = time.monotonic()
    check_same_namespaces(pid)
    stat = read_stat(pid)
    pstree = pstree_entry(pid, stat)
    core = core_entry(pid, stat)
    files = FileTable()
    vmas = vma_entries(pid, read_smaps(pid), files, PAGE_BYTES)
    mm = mm_entry(pid, stat, vmas, files)
    fdinfo = files.fd_table(pid)
    fs = fs_entry(pid, files)
    mem_started = time.monotonic()
    pages = dump_pages(pid, vmas, core.thread_info.gpregs.sp, PAGE_BYTES)
    mem_done = time.monotonic()

    directory = Path(images_dir)
    directory.mkdir(parents=True, exist_ok=True)
    records: list[tuple[str, tuple, list[Message]]] = [
        ("INVENTORY", (), [inventory_entry()]),
        ("PSTREE", (), [pstree]),
        ("CORE", (pid,), [core]),
        ("IDS", (pid,), [kobj_ids(TASK_KOBJ_ID)]),
        ("MM", (pid,), [mm]),
        ("PAGEMAP", (pid,), [pagemap_head(), *pages.entries]),
        ("FILES", (), files.entries),
        ("FDINFO", (TASK_KOBJ_ID,), fdinfo),
        ("FS", (pid,), [fs]),
        ("TIMENS", (TIMENS_IMAGE_ID,), [timens_entry()]),
        ("SECCOMP", (), [seccomp_pb2.SeccompEntry()]),   # no filters (core.py checked)
    ]
    written = []
    for kind_name, args, entries in records:
        kind = kind_by_name(kind_name)
        assert kind is not None, f"dump_task: no image kind {kind_name}"
        name = file_name(kind.file_names[0], *args)
        _write(directory, name, dump_image(Image(kind, list(entries))))
        written.append(name)
    pages_name = file_name(kind_by_name("PAGES").file_names[0], PAGES_ID)
    write_started = time.monotonic()
    _write(directory, pages_name, bytes(pages.pages))
    written.append(pages_name)
    done = time.monotonic()
    stats_kind = kind_by_name("STATS")
    stats = dump_stats(freezing_us=freezing_us, frozen_us=int((done - started) * _US_PER_S),
                       memdump_us=int((mem_done - mem_started) * _US_PER_S),
                       memwrite_us=int((done - write_started) * _US_PER_S),
                       pages_scanned=pages.pages_scanned, pages_written=pages.pages_written,
                       page_pipe_bufs=len(pages.entries))
    _write(directory, file_name(stats_kind.file_names[0], "dump"), dump_image(Image(stats_kind, [stats])))
    written.append(file_name(stats_kind.file_names[0], "dump"))
    return Checkpoint(directory=directory, pid=pid, files=tuple(written), pages=pages.pages_written,
                      vmas=len(vmas))
