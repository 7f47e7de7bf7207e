"""The registry of image kinds: file name -> (crit name, magic, framing, schema, payload rule).

Each CRIU image file is one *kind*, named as crit names it ("CORE", "PAGEMAP"...). A kind
says how the file is framed (:class:`Framing`, drawn in :mod:`pycriu_restore.images.framing`),
which message each record holds, and whether raw bytes follow each record. File names are
CRIU's format strings (``criu/image-desc.c``), e.g. ``core-%u.img``.

Adding a kind is one line in :data:`KINDS` (or a :func:`register_kind` call from a plugin)::

    ImageKind("AMDGPU_KFD", None, Framing.PLUGIN, "amdgpu_pb2.CriuKfd", ("amdgpu-kfd-%u.img",)),

A kind names its message class ("core_pb2.CoreEntry", a module of images/schemas.py) and the
class is imported when a file of the kind is first read: a restore builds the classes of the
dozen kinds its images hold, not of all of them (schemas.py). A plugin may pass the class.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from google.protobuf.message import Message

from pycriu_restore.images import magic as M
from pycriu_restore.images import schemas


class Framing(enum.Enum):
    """How a file's bytes are laid out (the layouts are drawn in framing.py)."""

    INVENTORY = "inventory"  # u32 INVENTORY_MAGIC, then records
    COMMON = "common"        # u32 IMG_COMMON_MAGIC, u32 kind magic, then records
    SERVICE = "service"      # u32 IMG_SERVICE_MAGIC, u32 kind magic, then records
    PLUGIN = "plugin"        # u64 message size, then one message (CRIU plugins: amdgpu)
    RAW = "raw"              # no header and no records: raw data (pages-N.img)


# CRIU's printf conversions in image file names -> what they match.
_CONVERSIONS = {
    "%u": r"(\d+)", "%lu": r"(\d+)", "%d": r"(-?\d+)", "%ld": r"(-?\d+)",
    "%x": r"([0-9a-f]+)", "%04x": r"([0-9a-f]{4,})", "%s": r"(\w+)",
}
# ... and how to print them.
_FORMATS = {"%u": "{}", "%lu": "{}", "%d": "{}", "%ld": "{}", "%x": "{:x}", "%04x": "{:04x}", "%s": "{}"}
_CONVERSION_RE = re.compile("|".join(re.escape(c) for c in sorted(_CONVERSIONS, key=len, reverse=True)))


def _name_regex(pattern: str) -> re.Pattern[str]:
    """Compile a CRIU file-name format (``"pagemap-%lu.img"``) into a full-match regex."""
    parts = _CONVERSION_RE.split(pattern)
    conversions = _CONVERSION_RE.findall(pattern)
    regex = re.escape(parts[0])
    for conv, literal in zip(conversions, parts[1:]):
        regex += _CONVERSIONS[conv] + re.escape(literal)
    return re.compile(regex)


def _schema_class(ref: str | type[Message] | None) -> type[Message] | None:
    """The message class ``ref`` names, importing its schema module on first use."""
    if ref is None or isinstance(ref, type):
        return ref
    module, _, name = ref.partition(".")
    return getattr(getattr(schemas, module), name)


@dataclass(frozen=True)
class ImageKind:
    """One kind of image file.

    ``schema`` names the class of every record (``"core_pb2.CoreEntry"``, a module of
    images/schemas.py, or the class itself); ``head_schema``, where set, the class of the
    first record only (pagemap files: a PagemapHead, then PagemapEntry records). The classes
    are :attr:`message` and :attr:`head`, imported on first use.

    ``payload_fields`` name the record fields whose sum is the number of raw bytes following
    each record in the file (pipes-data: ``bytes``; sk-queues: ``length``; tcp-stream:
    ``inq_len`` then ``outq_len``). crit shows the payload as one base64 string, or, where
    ``payload_keys`` is set, as an object with one base64 string per field under these keys
    (tcp-stream: ``{"inq": ..., "outq": ...}``).

    ``undecoded``, where set, says why pycrestore cannot read the records of this kind (the
    kind is known by name and magic, but its data follows a layout of its own); reading such
    a file raises ImageError with this reason.

    ``magic`` is the kind's own magic word: None for PLUGIN files, which have none.
    """

    name: str
    magic: int | None
    framing: Framing
    schema: str | type[Message] | None  # "core_pb2.CoreEntry", or the class
    file_names: tuple[str, ...]
    head_schema: str | type[Message] | None = None
    payload_fields: tuple[str, ...] = ()
    payload_keys: tuple[str, ...] = ()
    undecoded: str | None = None

    def __post_init__(self) -> None:
        assert self.file_names, f"ImageKind {self.name}: no file name"
        assert (self.framing is Framing.RAW) == (self.schema is None), \
            f"ImageKind {self.name}: raw kinds, and only they, have no message"
        assert not self.payload_keys or len(self.payload_keys) == len(self.payload_fields), \
            f"ImageKind {self.name}: one payload key per payload field"

    @functools.cached_property
    def _regexes(self) -> tuple[re.Pattern[str], ...]:
        # Compiled on the first match, not at import: ~90 patterns take ~10 ms to compile.
        return tuple(_name_regex(p) for p in self.file_names)

    @property
    def message(self) -> type[Message] | None:
        """The class of every record (None for a raw kind)."""
        return _schema_class(self.schema)

    @property
    def head(self) -> type[Message] | None:
        """The class of the first record where it differs from the others, else None."""
        return _schema_class(self.head_schema)

    def payload_sizes(self, message: Message) -> tuple[int, ...]:
        """The byte counts of the payload parts that follow ``message`` (one per payload field)."""
        return tuple(getattr(message, name) for name in self.payload_fields)

    def record_class(self, index: int) -> type[Message]:
        """The message class of record ``index`` (0-based) of a file of this kind."""
        assert self.message is not None, f"record_class: {self.name} is a raw image"
        if index == 0 and self.head is not None:
            return self.head
        return self.message

    def match(self, file_name: str) -> tuple[str, ...] | None:
        """The arguments of the file name if it is one of this kind's (``"core-7.img"`` -> ("7",))."""
        for regex in self._regexes:
            found = regex.fullmatch(file_name)
            if found:
                return found.groups()
        return None


C, S, I, R, P = Framing.COMMON, Framing.SERVICE, Framing.INVENTORY, Framing.RAW, Framing.PLUGIN

# Every kind pycrestore reads, in CRIU's names. The legacy kinds (one image per fd type,
# per-task creds/sigacts/rlimits...) are still read by CRIU's restore and so by ours.
KINDS: list[ImageKind] = [
    ImageKind("INVENTORY", M.INVENTORY_MAGIC, I, "inventory_pb2.InventoryEntry", ("inventory.img",)),
    ImageKind("PSTREE", M.PSTREE_MAGIC, C, "pstree_pb2.PstreeEntry", ("pstree.img",)),
    ImageKind("CORE", M.CORE_MAGIC, C, "core_pb2.CoreEntry", ("core-%u.img",)),
    ImageKind("IDS", M.IDS_MAGIC, C, "ids_pb2.TaskKobjIdsEntry", ("ids-%u.img",)),
    ImageKind("MM", M.MM_MAGIC, C, "mm_pb2.MmEntry", ("mm-%u.img",)),
    ImageKind("PAGEMAP", M.PAGEMAP_MAGIC, C, "pagemap_pb2.PagemapEntry",
              ("pagemap-%lu.img", "pagemap-shmem-%lu.img"), head_schema="pagemap_pb2.PagemapHead"),
    ImageKind("PAGES", M.RAW_IMAGE_MAGIC, R, None, ("pages-%u.img",)),
    ImageKind("FS", M.FS_MAGIC, C, "fs_pb2.FsEntry", ("fs-%u.img",)),
    ImageKind("FILES", M.FILES_MAGIC, C, "fdinfo_pb2.FileEntry", ("files.img",)),
    ImageKind("FDINFO", M.FDINFO_MAGIC, C, "fdinfo_pb2.FdinfoEntry", ("fdinfo-%u.img",)),
    ImageKind("PIPES_DATA", M.PIPES_DATA_MAGIC, C, "pipe_data_pb2.PipeDataEntry", ("pipes-data.img",),
              payload_fields=("bytes",)),
    ImageKind("SK_QUEUES", M.SK_QUEUES_MAGIC, C, "sk_queues_pb2.SkPacketEntry", ("sk-queues.img",),
              payload_fields=("length",)),
    ImageKind("MEMFD_INODE", M.MEMFD_INODE_MAGIC, C, "memfd_pb2.MemfdInodeEntry", ("memfd.img",)),
    ImageKind("TTY_INFO", M.TTY_INFO_MAGIC, C, "tty_pb2.TtyInfoEntry", ("tty-info.img",)),
    ImageKind("TTY_DATA", M.TTY_DATA_MAGIC, C, "tty_pb2.TtyDataEntry", ("tty-data.img",)),
    ImageKind("TIMENS", M.TIMENS_MAGIC, C, "timens_pb2.TimensEntry", ("timens-%u.img",)),
    ImageKind("SECCOMP", M.SECCOMP_MAGIC, C, "seccomp_pb2.SeccompEntry", ("seccomp.img",)),
    ImageKind("CPUINFO", M.CPUINFO_MAGIC, C, "cpuinfo_pb2.CpuinfoEntry", ("cpuinfo.img",)),
    ImageKind("STATS", M.STATS_MAGIC, S, "stats_pb2.StatsEntry", ("stats-%s",)),
    # Network namespace: netdev and netns are records; the rest are raw tool dumps.
    ImageKind("NETDEV", M.NETDEV_MAGIC, C, "net_pb2.NetDeviceEntry", ("netdev-%u.img",)),
    ImageKind("NETNS", M.NETNS_MAGIC, C, "net_pb2.NetnsEntry", ("netns-%u.img",)),
    ImageKind("IFADDR", M.RAW_IMAGE_MAGIC, R, None, ("ifaddr-%u.img",)),
    ImageKind("ROUTE", M.RAW_IMAGE_MAGIC, R, None, ("route-%u.img",)),
    ImageKind("ROUTE6", M.RAW_IMAGE_MAGIC, R, None, ("route6-%u.img",)),
    ImageKind("RULE", M.RAW_IMAGE_MAGIC, R, None, ("rule-%u.img",)),
    ImageKind("IPTABLES", M.RAW_IMAGE_MAGIC, R, None, ("iptables-%u.img",)),
    ImageKind("IP6TABLES", M.RAW_IMAGE_MAGIC, R, None, ("ip6tables-%u.img",)),
    ImageKind("NFTABLES", M.RAW_IMAGE_MAGIC, R, None, ("nftables-%u.img",)),
    ImageKind("NETNF_CT", M.RAW_IMAGE_MAGIC, R, None, ("netns-ct-%u.img",)),
    ImageKind("NETNF_EXP", M.RAW_IMAGE_MAGIC, R, None, ("netns-exp-%u.img",)),
    # The amdgpu plugin's own images (plugins/amdgpu/amdgpu_plugin_util.c): a u64 size, then
    # one message; the page images hold a u64 size, then raw BO contents (read by the plugin).
    # crit does not decode these; the names are pycrestore's.
    ImageKind("AMDGPU_KFD", None, P, "amdgpu_pb2.CriuKfd", ("amdgpu-kfd-%d.img",)),
    ImageKind("AMDGPU_RENDERD", None, P, "amdgpu_pb2.CriuRenderNode", ("amdgpu-renderD-%d.img",)),
    ImageKind("AMDGPU_DMABUF", None, P, "amdgpu_pb2.CriuDmabufNode", ("amdgpu-dmabuf_%d.img",)),
    ImageKind("AMDGPU_PAGES", M.RAW_IMAGE_MAGIC, R, None, ("amdgpu-pages-%d-%04x.img",)),
    ImageKind("AMDGPU_DRM_PAGES", M.RAW_IMAGE_MAGIC, R, None, ("amdgpu-drm-pages-%d-%d-%04x.img",)),
    # Legacy: one image per fd type (files.img holds them all since CRIU 3.x).
    ImageKind("REG_FILES", M.REG_FILES_MAGIC, C, "regfile_pb2.RegFileEntry", ("reg-files.img",)),
    ImageKind("PIPES", M.PIPES_MAGIC, C, "pipe_pb2.PipeEntry", ("pipes.img",)),
    ImageKind("UNIXSK", M.UNIXSK_MAGIC, C, "sk_unix_pb2.UnixSkEntry", ("unixsk.img",)),
    ImageKind("EVENTFD_FILE", M.EVENTFD_FILE_MAGIC, C, "eventfd_pb2.EventfdFileEntry", ("eventfd.img",)),
    ImageKind("EXT_FILES", M.EXT_FILES_MAGIC, C, "ext_file_pb2.ExtFileEntry", ("ext-files.img",)),
    ImageKind("TTY_FILES", M.TTY_FILES_MAGIC, C, "tty_pb2.TtyFileEntry", ("tty.img",)),
    # Legacy: per-task state that core-N.img holds since CRIU 1.x.
    ImageKind("VMAS", M.VMAS_MAGIC, C, "vma_pb2.VmaEntry", ("vmas-%u.img",)),
    ImageKind("SIGACT", M.SIGACT_MAGIC, C, "sa_pb2.SaEntry", ("sigacts-%u.img",)),
    ImageKind("CREDS", M.CREDS_MAGIC, C, "creds_pb2.CredsEntry", ("creds-%u.img",)),
    ImageKind("RLIMIT", M.RLIMIT_MAGIC, C, "rlimit_pb2.RlimitEntry", ("rlimit-%u.img",)),
    ImageKind("ITIMERS", M.ITIMERS_MAGIC, C, "timer_pb2.ItimerEntry", ("itimers-%u.img",)),
    ImageKind("POSIX_TIMERS", M.POSIX_TIMERS_MAGIC, C, "timer_pb2.PosixTimerEntry", ("posix-timers-%u.img",)),
    ImageKind("SIGNAL", M.SIGNAL_MAGIC, C, "siginfo_pb2.SiginfoEntry", ("signal-s-%u.img", "signal-p-%u.img")),
    # A TCP connection's sequence numbers, options and queues, named by the socket's inode
    # (InetSkEntry.ino); the receive queue, then the send queue, follow each record.
    ImageKind("TCP_STREAM", M.TCP_STREAM_MAGIC, C, "tcp_stream_pb2.TcpStreamEntry", ("tcp-stream-%x.img",),
              payload_fields=("inq_len", "outq_len"), payload_keys=("inq", "outq")),
    # Legacy: the other per-fd-kind images (CRIU 4.x writes these fds into files.img).
    ImageKind("INETSK", M.INETSK_MAGIC, C, "sk_inet_pb2.InetSkEntry", ("inetsk.img",)),
    ImageKind("PACKETSK", M.PACKETSK_MAGIC, C, "packet_sock_pb2.PacketSockEntry", ("packetsk.img",)),
    ImageKind("NETLINK_SK", M.NETLINK_SK_MAGIC, C, "sk_netlink_pb2.NetlinkSkEntry", ("netlinksk.img",)),
    ImageKind("NS_FILES", M.NS_FILES_MAGIC, C, "ns_pb2.NsFileEntry", ("ns-files.img",)),
    ImageKind("EVENTPOLL_FILE", M.EVENTPOLL_FILE_MAGIC, C, "eventpoll_pb2.EventpollFileEntry", ("eventpoll.img",)),
    ImageKind("EVENTPOLL_TFD", M.EVENTPOLL_TFD_MAGIC, C, "eventpoll_pb2.EventpollTfdEntry", ("eventpoll-tfd.img",)),
    ImageKind("SIGNALFD", M.SIGNALFD_MAGIC, C, "signalfd_pb2.SignalfdEntry", ("signalfd.img",)),
    ImageKind("TIMERFD", M.TIMERFD_MAGIC, C, "timerfd_pb2.TimerfdEntry", ("timerfd.img",)),
    ImageKind("INOTIFY_FILE", M.INOTIFY_FILE_MAGIC, C, "fsnotify_pb2.InotifyFileEntry", ("inotify.img",)),
    ImageKind("INOTIFY_WD", M.INOTIFY_WD_MAGIC, C, "fsnotify_pb2.InotifyWdEntry", ("inotify-wd.img",)),
    ImageKind("FANOTIFY_FILE", M.FANOTIFY_FILE_MAGIC, C, "fsnotify_pb2.FanotifyFileEntry", ("fanotify.img",)),
    ImageKind("FANOTIFY_MARK", M.FANOTIFY_MARK_MAGIC, C, "fsnotify_pb2.FanotifyMarkEntry", ("fanotify-mark.img",)),
    ImageKind("TUNFILE", M.TUNFILE_MAGIC, C, "tun_pb2.TunfileEntry", ("tunfile.img",)),
    ImageKind("FIFO", M.FIFO_MAGIC, C, "fifo_pb2.FifoEntry", ("fifo.img",)),
    ImageKind("BPFMAP_FILE", M.BPFMAP_FILE_MAGIC, C, "bpfmap_file_pb2.BpfmapFileEntry", ("bpfmap-file.img",)),
    ImageKind("PIDFD", M.PIDFD_MAGIC, C, "pidfd_pb2.PidfdEntry", ("pidfd.img",)),
    # Data behind fds: FIFO contents (framed as pipes-data), BPF map keys then values.
    ImageKind("FIFO_DATA", M.FIFO_DATA_MAGIC, C, "pipe_data_pb2.PipeDataEntry", ("fifo-data.img",),
              payload_fields=("bytes",)),
    ImageKind("BPFMAP_DATA", M.BPFMAP_DATA_MAGIC, C, "bpfmap_data_pb2.BpfmapDataEntry", ("bpfmap-data.img",),
              payload_fields=("keys_bytes", "values_bytes")),
    # Files that were deleted or unreachable at dump time, and file locks.
    ImageKind("REMAP_FPATH", M.REMAP_FPATH_MAGIC, C, "remap_file_path_pb2.RemapFilePathEntry", ("remap-fpath.img",)),
    ImageKind("GHOST_FILE", M.GHOST_FILE_MAGIC, C, "ghost_file_pb2.GhostFileEntry", ("ghost-file-%x.img",),
              undecoded="a GhostFileEntry, then the file's bytes or GhostChunkEntry records with data"),
    ImageKind("FILE_LOCKS", M.FILE_LOCKS_MAGIC, C, "file_lock_pb2.FileLockEntry", ("filelocks.img",)),
    # Namespaces, mounts and cgroups.
    ImageKind("UTSNS", M.UTSNS_MAGIC, C, "utsns_pb2.UtsnsEntry", ("utsns-%u.img",)),
    ImageKind("USERNS", M.USERNS_MAGIC, C, "userns_pb2.UsernsEntry", ("userns-%u.img",)),
    ImageKind("PIDNS", M.PIDNS_MAGIC, C, "pidns_pb2.PidnsEntry", ("pidns-%u.img",)),
    ImageKind("IPC_VAR", M.IPC_VAR_MAGIC, C, "ipc_var_pb2.IpcVarEntry", ("ipcns-var-%u.img",)),
    ImageKind("IPCNS_SHM", M.IPCNS_SHM_MAGIC, C, "ipc_shm_pb2.IpcShmEntry", ("ipcns-shm-%u.img",),
              undecoded="each record is followed by the segment's bytes, padded to 4 bytes"),
    ImageKind("IPCNS_MSG", M.IPCNS_MSG_MAGIC, C, "ipc_msg_pb2.IpcMsgEntry", ("ipcns-msg-%u.img",),
              undecoded="each record is followed by qnum IpcMsg records, each with its text padded to 8 bytes"),
    ImageKind("IPCNS_SEM", M.IPCNS_SEM_MAGIC, C, "ipc_sem_pb2.IpcSemEntry", ("ipcns-sem-%u.img",),
              undecoded="each record is followed by nsems u16 values, padded to 8 bytes"),
    ImageKind("MNTS", M.MNTS_MAGIC, C, "mnt_pb2.MntEntry", ("mountpoints-%u.img",)),
    ImageKind("TMPFS_IMG", M.RAW_IMAGE_MAGIC, R, None, ("tmpfs-%u.tar.gz.img",)),
    ImageKind("TMPFS_DEV", M.RAW_IMAGE_MAGIC, R, None, ("tmpfs-dev-%u.tar.gz.img",)),
    ImageKind("AUTOFS", M.AUTOFS_MAGIC, C, "autofs_pb2.AutofsEntry", ("autofs-%u.img",)),
    ImageKind("BINFMT_MISC", M.BINFMT_MISC_MAGIC, C, "binfmt_misc_pb2.BinfmtMiscEntry",
              ("binfmt-misc.img", "binfmt-misc-%u.img")),
    ImageKind("CGROUP", M.CGROUP_MAGIC, C, "cgroup_pb2.CgroupEntry", ("cgroup.img",)),
    ImageKind("APPARMOR", M.APPARMOR_MAGIC, C, "apparmor_pb2.ApparmorEntry", ("apparmor.img",)),
    # Legacy: shared memory pages as CRIU 1.x wrote them (now pagemap-shmem-N.img + pages-N.img).
    ImageKind("SHM_PAGES_OLD", M.SHM_PAGES_OLD_MAGIC, C, "pagemap_pb2.PagemapEntry", ("pages-shmem-%ld.img",),
              undecoded="pages of shared memory in the CRIU 1.x layout"),
    # A service file: the inode -> path cache of fsnotify dumps.
    ImageKind("IRMAP_CACHE", M.IRMAP_CACHE_MAGIC, S, "fh_pb2.IrmapCacheEntry", ("irmap-cache",)),
]


def register_kind(kind: ImageKind) -> None:
    """Add a kind (a plugin's images) to the registry.

    Its crit name and its file names must be new: a file name must map to one kind only.
    """
    for known in KINDS:
        assert known.name != kind.name, f"register_kind: {kind.name} is already registered"
    KINDS.append(kind)


def kind_for_file(file_name: str) -> tuple[ImageKind, tuple[str, ...]] | None:
    """The kind of a file, by its base name, and the name's arguments; None if no kind matches."""
    for kind in KINDS:
        args = kind.match(file_name)
        if args is not None:
            return kind, args
    return None


def kind_by_name(name: str) -> ImageKind | None:
    """The kind crit calls ``name`` ("CORE"), or None."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    return None


def file_name(pattern: str, *args: int | str) -> str:
    """Fill a CRIU file-name format: ``file_name("core-%u.img", 7)`` -> "core-7.img"."""
    parts = _CONVERSION_RE.split(pattern)
    conversions = _CONVERSION_RE.findall(pattern)
    assert len(conversions) == len(args), f"file_name: {pattern} takes {len(conversions)} arguments"
    out = parts[0]
    for conv, arg, literal in zip(conversions, args, parts[1:]):
        out += _FORMATS[conv].format(arg) + literal
    return out
