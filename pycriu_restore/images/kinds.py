"""The registry of image kinds: file name -> (crit name, magic, framing, schema, payload rule).

Each CRIU image file is one *kind*, named as crit names it ("CORE", "PAGEMAP"...). A kind
says how the file is framed (:class:`Framing`, drawn in :mod:`pycriu_restore.images.framing`),
which message each record holds, and whether raw bytes follow each record. File names are
CRIU's format strings (``criu/image-desc.c``), e.g. ``core-%u.img``.

Adding a kind is one line in :data:`KINDS` (or a :func:`register_kind` call from a plugin)::

    ImageKind("AMDGPU_KFD", None, Framing.PLUGIN, amdgpu_pb2.CriuKfd, ("amdgpu-kfd-%u.img",)),
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from google.protobuf.message import Message

from pycriu_restore.images import magic as M
from pycriu_restore.images.schemas import (
    amdgpu_pb2,
    net_pb2,
    core_pb2,
    cpuinfo_pb2,
    creds_pb2,
    eventfd_pb2,
    ext_file_pb2,
    fdinfo_pb2,
    fs_pb2,
    ids_pb2,
    inventory_pb2,
    memfd_pb2,
    mm_pb2,
    pagemap_pb2,
    pipe_data_pb2,
    pipe_pb2,
    pstree_pb2,
    regfile_pb2,
    rlimit_pb2,
    sa_pb2,
    seccomp_pb2,
    siginfo_pb2,
    sk_queues_pb2,
    sk_unix_pb2,
    stats_pb2,
    timens_pb2,
    timer_pb2,
    tty_pb2,
    vma_pb2,
)


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


@dataclass(frozen=True)
class ImageKind:
    """One kind of image file.

    ``message`` is the class of every record; ``head``, where set, the class of the first
    record only (pagemap files: a PagemapHead, then PagemapEntry records).

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
    message: type[Message] | None
    file_names: tuple[str, ...]
    head: type[Message] | None = None
    payload_fields: tuple[str, ...] = ()
    payload_keys: tuple[str, ...] = ()
    undecoded: str | None = None
    _regexes: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert self.file_names, f"ImageKind {self.name}: no file name"
        assert (self.framing is Framing.RAW) == (self.message is None), \
            f"ImageKind {self.name}: raw kinds, and only they, have no message"
        assert not self.payload_keys or len(self.payload_keys) == len(self.payload_fields), \
            f"ImageKind {self.name}: one payload key per payload field"
        object.__setattr__(self, "_regexes", tuple(_name_regex(p) for p in self.file_names))

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
    ImageKind("INVENTORY", M.INVENTORY_MAGIC, I, inventory_pb2.InventoryEntry, ("inventory.img",)),
    ImageKind("PSTREE", M.PSTREE_MAGIC, C, pstree_pb2.PstreeEntry, ("pstree.img",)),
    ImageKind("CORE", M.CORE_MAGIC, C, core_pb2.CoreEntry, ("core-%u.img",)),
    ImageKind("IDS", M.IDS_MAGIC, C, ids_pb2.TaskKobjIdsEntry, ("ids-%u.img",)),
    ImageKind("MM", M.MM_MAGIC, C, mm_pb2.MmEntry, ("mm-%u.img",)),
    ImageKind("PAGEMAP", M.PAGEMAP_MAGIC, C, pagemap_pb2.PagemapEntry,
              ("pagemap-%lu.img", "pagemap-shmem-%lu.img"), head=pagemap_pb2.PagemapHead),
    ImageKind("PAGES", M.RAW_IMAGE_MAGIC, R, None, ("pages-%u.img",)),
    ImageKind("FS", M.FS_MAGIC, C, fs_pb2.FsEntry, ("fs-%u.img",)),
    ImageKind("FILES", M.FILES_MAGIC, C, fdinfo_pb2.FileEntry, ("files.img",)),
    ImageKind("FDINFO", M.FDINFO_MAGIC, C, fdinfo_pb2.FdinfoEntry, ("fdinfo-%u.img",)),
    ImageKind("PIPES_DATA", M.PIPES_DATA_MAGIC, C, pipe_data_pb2.PipeDataEntry, ("pipes-data.img",),
              payload_fields=("bytes",)),
    ImageKind("SK_QUEUES", M.SK_QUEUES_MAGIC, C, sk_queues_pb2.SkPacketEntry, ("sk-queues.img",),
              payload_fields=("length",)),
    ImageKind("MEMFD_INODE", M.MEMFD_INODE_MAGIC, C, memfd_pb2.MemfdInodeEntry, ("memfd.img",)),
    ImageKind("TTY_INFO", M.TTY_INFO_MAGIC, C, tty_pb2.TtyInfoEntry, ("tty-info.img",)),
    ImageKind("TTY_DATA", M.TTY_DATA_MAGIC, C, tty_pb2.TtyDataEntry, ("tty-data.img",)),
    ImageKind("TIMENS", M.TIMENS_MAGIC, C, timens_pb2.TimensEntry, ("timens-%u.img",)),
    ImageKind("SECCOMP", M.SECCOMP_MAGIC, C, seccomp_pb2.SeccompEntry, ("seccomp.img",)),
    ImageKind("CPUINFO", M.CPUINFO_MAGIC, C, cpuinfo_pb2.CpuinfoEntry, ("cpuinfo.img",)),
    ImageKind("STATS", M.STATS_MAGIC, S, stats_pb2.StatsEntry, ("stats-%s",)),
    # Network namespace: netdev and netns are records; the rest are raw tool dumps.
    ImageKind("NETDEV", M.NETDEV_MAGIC, C, net_pb2.NetDeviceEntry, ("netdev-%u.img",)),
    ImageKind("NETNS", M.NETNS_MAGIC, C, net_pb2.NetnsEntry, ("netns-%u.img",)),
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
    ImageKind("AMDGPU_KFD", None, P, amdgpu_pb2.CriuKfd, ("amdgpu-kfd-%d.img",)),
    ImageKind("AMDGPU_RENDERD", None, P, amdgpu_pb2.CriuRenderNode, ("amdgpu-renderD-%d.img",)),
    ImageKind("AMDGPU_DMABUF", None, P, amdgpu_pb2.CriuDmabufNode, ("amdgpu-dmabuf_%d.img",)),
    ImageKind("AMDGPU_PAGES", M.RAW_IMAGE_MAGIC, R, None, ("amdgpu-pages-%d-%04x.img",)),
    ImageKind("AMDGPU_DRM_PAGES", M.RAW_IMAGE_MAGIC, R, None, ("amdgpu-drm-pages-%d-%d-%04x.img",)),
    # Legacy: one image per fd type (files.img holds them all since CRIU 3.x).
    ImageKind("REG_FILES", M.REG_FILES_MAGIC, C, regfile_pb2.RegFileEntry, ("reg-files.img",)),
    ImageKind("PIPES", M.PIPES_MAGIC, C, pipe_pb2.PipeEntry, ("pipes.img",)),
    ImageKind("UNIXSK", M.UNIXSK_MAGIC, C, sk_unix_pb2.UnixSkEntry, ("unixsk.img",)),
    ImageKind("EVENTFD_FILE", M.EVENTFD_FILE_MAGIC, C, eventfd_pb2.EventfdFileEntry, ("eventfd.img",)),
    ImageKind("EXT_FILES", M.EXT_FILES_MAGIC, C, ext_file_pb2.ExtFileEntry, ("ext-files.img",)),
    ImageKind("TTY_FILES", M.TTY_FILES_MAGIC, C, tty_pb2.TtyFileEntry, ("tty.img",)),
    # Legacy: per-task state that core-N.img holds since CRIU 1.x.
    ImageKind("VMAS", M.VMAS_MAGIC, C, vma_pb2.VmaEntry, ("vmas-%u.img",)),
    ImageKind("SIGACT", M.SIGACT_MAGIC, C, sa_pb2.SaEntry, ("sigacts-%u.img",)),
    ImageKind("CREDS", M.CREDS_MAGIC, C, creds_pb2.CredsEntry, ("creds-%u.img",)),
    ImageKind("RLIMIT", M.RLIMIT_MAGIC, C, rlimit_pb2.RlimitEntry, ("rlimit-%u.img",)),
    ImageKind("ITIMERS", M.ITIMERS_MAGIC, C, timer_pb2.ItimerEntry, ("itimers-%u.img",)),
    ImageKind("POSIX_TIMERS", M.POSIX_TIMERS_MAGIC, C, timer_pb2.PosixTimerEntry, ("posix-timers-%u.img",)),
    ImageKind("SIGNAL", M.SIGNAL_MAGIC, C, siginfo_pb2.SiginfoEntry, ("signal-s-%u.img", "signal-p-%u.img")),
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
