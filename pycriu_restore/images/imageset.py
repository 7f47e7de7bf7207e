"""A checkpoint directory: typed, lazy access to the images of one CRIU dump.

``ImageSet.open(dir)`` reads inventory.img only (and checks the format version); every
accessor decodes its file on first use and keeps it. File names follow CRIU: the pstree's
pids name core/mm/ids/fs/pagemap images, ``ids.files_id`` names fdinfo, a PagemapHead's
``pages_id`` names pages-N.img.

As in CRIU's restore, a missing *optional* image is empty (a dump writes an image only when it
has something to say: no pipes, no pipes-data.img); a missing *required* one (pstree, core,
mm, ids, fs) raises MissingImage.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf.message import Message

from pycriu_restore.images.errors import BadRecord, MissingImage, NotACheckpoint, UnsupportedVersion
from pycriu_restore.images.framing import ACCEPTED_IMG_VERSIONS
from pycriu_restore.images.image import Image, kind_of, load_image
from pycriu_restore.images.kinds import ImageKind, file_name, kind_by_name
from pycriu_restore.images.pagemap import PagemapImage
from pycriu_restore.images.schemas import (
    core_pb2,
    cpuinfo_pb2,
    fdinfo_pb2,
    fs_pb2,
    ids_pb2,
    inventory_pb2,
    memfd_pb2,
    mm_pb2,
    pipe_data_pb2,
    pstree_pb2,
    sa_pb2,
    seccomp_pb2,
    sk_queues_pb2,
    stats_pb2,
    tcp_stream_pb2,
    timens_pb2,
    tty_pb2,
)

INVENTORY_FILE = "inventory.img"


def _kind(name: str) -> ImageKind:
    """A kind this module relies on, by crit name."""
    kind = kind_by_name(name)
    assert kind is not None, f"imageset: no kind {name} in the registry"
    return kind


class ImageSet:
    """The images of one checkpoint directory. Construct with :meth:`open`."""

    def __init__(self, directory: Path, inventory: inventory_pb2.InventoryEntry) -> None:
        self.directory = directory
        self.inventory = inventory
        self._cache: dict[str, Image] = {}  # file name -> decoded image

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> ImageSet:
        """Open a checkpoint directory: read and check its inventory.img, nothing else.

        Raises NotACheckpoint (no such directory, or no inventory.img), UnsupportedVersion
        (an image format other than v1.1), or the ImageError of a bad inventory.img.
        """
        path = Path(directory)
        if not path.is_dir():
            raise NotACheckpoint(str(path), "not a directory")
        inventory_path = path / INVENTORY_FILE
        if not inventory_path.is_file():
            raise NotACheckpoint(str(path), f"no {INVENTORY_FILE}: not a CRIU checkpoint directory")
        image = load_image(inventory_path, _kind("INVENTORY"))
        if len(image.entries) != 1:
            raise BadRecord(str(inventory_path), f"holds {len(image.entries)} records, expected 1")
        inventory = image.entries[0]
        if inventory.img_version not in ACCEPTED_IMG_VERSIONS:
            accepted = ", ".join(str(v) for v in ACCEPTED_IMG_VERSIONS)
            raise UnsupportedVersion(str(inventory_path),
                                     f"img_version is {inventory.img_version}, pycrestore reads {accepted}")
        # Absolute, so paths derived from it stay right after a restored task's chdir.
        return cls(Path(os.path.abspath(path)), inventory)

    # --- generic access ------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The path of an image file of this checkpoint, by file name (it may not exist)."""
        return self.directory / name

    def exists(self, name: str) -> bool:
        """Whether the checkpoint has the image file ``name``."""
        return self.path(name).is_file()

    def image(self, name: str, required: bool = False, kind: ImageKind | None = None) -> Image:
        """The decoded image file ``name`` (decoded once, then cached).

        A missing file raises MissingImage if ``required``, else reads as an image with no
        entries (``path`` None), as CRIU's restore reads a missing image.
        """
        if name not in self._cache:
            try:
                self._cache[name] = load_image(self.path(name), kind)
            except MissingImage as err:
                if required:
                    raise MissingImage(err.path, "required image is missing") from err
                if kind is None:
                    kind, _ = kind_of(name)
                self._cache[name] = Image(kind)
        return self._cache[name]

    def _entries(self, kind_name: str, *args: int | str, required: bool = False) -> list[Message]:
        """The records of the image of ``kind_name`` whose file name takes ``args``."""
        kind = _kind(kind_name)
        return self.image(file_name(kind.file_names[0], *args), required, kind).entries

    def _single(self, kind_name: str, *args: int | str, required: bool = True) -> Message | None:
        """The one record of a one-record image (core, mm, ids, fs...)."""
        kind = _kind(kind_name)
        name = file_name(kind.file_names[0], *args)
        entries = self.image(name, required, kind).entries
        if not entries and not required:
            return None
        if len(entries) != 1:
            raise BadRecord(str(self.path(name)), f"holds {len(entries)} records, expected 1")
        return entries[0]

    # --- the process tree and per-task images --------------------------------------------

    def pstree(self) -> list[pstree_pb2.PstreeEntry]:
        """Every process of the dump, parents before children (pstree.img, required)."""
        return self._entries("PSTREE", required=True)

    def core(self, tid: int) -> core_pb2.CoreEntry:
        """The state of thread ``tid`` (core-<tid>.img, required)."""
        return self._single("CORE", tid)

    def mm(self, pid: int) -> mm_pb2.MmEntry:
        """The address space of process ``pid`` (mm-<pid>.img, required)."""
        return self._single("MM", pid)

    def ids(self, pid: int) -> ids_pb2.TaskKobjIdsEntry:
        """The kernel-object ids of process ``pid`` (ids-<pid>.img, required)."""
        return self._single("IDS", pid)

    def fs(self, pid: int) -> fs_pb2.FsEntry:
        """cwd, root and umask of process ``pid`` (fs-<pid>.img, required)."""
        return self._single("FS", pid)

    def sigacts(self, pid: int) -> list[sa_pb2.SaEntry]:
        """Legacy per-process sigactions (sigacts-<pid>.img); empty in images since CRIU 2.x,
        which keep them in the core's ``tc.sigactions``."""
        return self._entries("SIGACT", pid)

    # --- memory --------------------------------------------------------------------------

    def pagemap(self, pid: int) -> PagemapImage:
        """The dumped pages of process ``pid`` (pagemap-<pid>.img; missing = no pages)."""
        kind = _kind("PAGEMAP")
        return PagemapImage(self.path(file_name(kind.file_names[0], pid)), kind)

    def shmem_pagemap(self, shmid: int) -> PagemapImage:
        """The dumped pages of a shared memory object (pagemap-shmem-<shmid>.img)."""
        kind = _kind("PAGEMAP")
        return PagemapImage(self.path(file_name(kind.file_names[1], shmid)), kind)

    def pages_path(self, pages_id: int) -> Path:
        """The path of pages-<pages_id>.img, which must exist (MissingImage otherwise)."""
        path = self.path(file_name(_kind("PAGES").file_names[0], pages_id))
        if not path.is_file():
            raise MissingImage(str(path), "required pages image is missing")
        return path

    def memfd_inodes(self) -> list[memfd_pb2.MemfdInodeEntry]:
        """Every memfd inode of the dump (memfd.img)."""
        return self._entries("MEMFD_INODE")

    # --- files ---------------------------------------------------------------------------

    def files(self) -> list[fdinfo_pb2.FileEntry]:
        """Every file object of the dump, whatever its type (files.img)."""
        return self._entries("FILES")

    def fdinfo(self, files_id: int) -> list[fdinfo_pb2.FdinfoEntry]:
        """The fd table shared by the tasks whose ``ids.files_id`` is ``files_id``."""
        return self._entries("FDINFO", files_id)

    def pipes_data(self) -> list[tuple[pipe_data_pb2.PipeDataEntry, bytes]]:
        """Unread pipe contents, each record with its bytes (pipes-data.img)."""
        image = self.image("pipes-data.img", kind=_kind("PIPES_DATA"))
        return [(entry, extra or b"") for entry, extra in zip(image.entries, image.extras)]

    def sk_queues(self) -> list[tuple[sk_queues_pb2.SkPacketEntry, bytes]]:
        """Queued socket packets, each record with its bytes (sk-queues.img)."""
        image = self.image("sk-queues.img", kind=_kind("SK_QUEUES"))
        return [(entry, extra or b"") for entry, extra in zip(image.entries, image.extras)]

    def tcp_stream(self, inode: int) -> tuple[tcp_stream_pb2.TcpStreamEntry, bytes, bytes] | None:
        """The stream state of the TCP socket whose InetSkEntry.ino is ``inode``, with its receive
        queue and its send queue (tcp-stream-<inode in hex>.img); None if the dump has none
        (a listening or closed socket has no stream)."""
        kind = _kind("TCP_STREAM")
        name = file_name(kind.file_names[0], inode)
        image = self.image(name, kind=kind)
        if not image.entries:
            return None
        if len(image.entries) != 1:
            raise BadRecord(str(self.path(name)), f"holds {len(image.entries)} records, expected 1")
        entry, payload = image.entries[0], image.extras[0] or b""
        return entry, payload[:entry.inq_len], payload[entry.inq_len:]

    def tty_info(self) -> list[tty_pb2.TtyInfoEntry]:
        """Every terminal the dump's tty fds refer to (tty-info.img; TtyFileEntry.tty_info_id)."""
        return self._entries("TTY_INFO")

    def tty_data(self) -> list[tty_pb2.TtyDataEntry]:
        """Unread terminal input, per TtyInfoEntry id (tty-data.img; written with --shell-job)."""
        return self._entries("TTY_DATA")

    def fifo_data(self) -> list[tuple[pipe_data_pb2.PipeDataEntry, bytes]]:
        """Unread FIFO contents, each record with its bytes (fifo-data.img)."""
        image = self.image("fifo-data.img", kind=_kind("FIFO_DATA"))
        return [(entry, extra or b"") for entry, extra in zip(image.entries, image.extras)]

    # --- namespaces, seccomp, statistics ------------------------------------------------

    def timens(self, image_id: int = 0) -> timens_pb2.TimensEntry | None:
        """Time namespace offsets (timens-<id>.img; CRIU 4.2 writes id 0), or None."""
        return self._single("TIMENS", image_id, required=False)

    def seccomp(self) -> seccomp_pb2.SeccompEntry | None:
        """The dump's seccomp filters (seccomp.img), or None."""
        return self._single("SECCOMP", required=False)

    def cpuinfo(self) -> cpuinfo_pb2.CpuinfoEntry | None:
        """The dump CPU (cpuinfo.img; CRIU writes it only when asked to), or None."""
        return self._single("CPUINFO", required=False)

    def stats(self, which: str = "dump") -> stats_pb2.StatsEntry | None:
        """CRIU's statistics of the dump (``stats-dump``) or a restore (``stats-restore``)."""
        return self._single("STATS", which, required=False)
