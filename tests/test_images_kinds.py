"""The registry of image kinds: magic values, file names, and registration."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pycriu_restore.images import magic as M
from pycriu_restore.images.framing import header_bytes
from pycriu_restore.images.kinds import KINDS, Framing, ImageKind, file_name, kind_for_file, register_kind
from pycriu_restore.images.schemas import pstree_pb2

from conftest import FIXTURES, skip_module_without_fixtures

skip_module_without_fixtures(FIXTURES)  # before the pack is read below


def _fixtures() -> Path:
    path = FIXTURES
    assert (path / "images").is_dir(), f"fixture pack not found at {path} (set PYCRESTORE_FIXTURES)"
    return path


IMAGES = _fixtures() / "images"


@pytest.mark.parametrize("name, kind, args", [
    ("inventory.img", "INVENTORY", ()),
    ("core-31100.img", "CORE", ("31100",)),
    ("pagemap-31100.img", "PAGEMAP", ("31100",)),
    ("pagemap-shmem-1610.img", "PAGEMAP", ("1610",)),
    ("pages-3.img", "PAGES", ("3",)),
    ("stats-dump", "STATS", ("dump",)),
    ("sigacts-7.img", "SIGACT", ("7",)),
    ("tty.img", "TTY_FILES", ()),
    ("tty-info.img", "TTY_INFO", ()),
    ("signal-p-9.img", "SIGNAL", ("9",)),
])
def test_file_names(name: str, kind: str, args: tuple) -> None:
    found = kind_for_file(name)
    assert found is not None and (found[0].name, found[1]) == (kind, args)


@pytest.mark.parametrize("name", ["core.img", "core-x.img", "core-1.img.bak", "stats-dump.img.x", "pages-.img"])
def test_unknown_file_names(name: str) -> None:
    assert kind_for_file(name) is None


def test_file_name_formatting() -> None:
    assert file_name("core-%u.img", 31100) == "core-31100.img"
    assert file_name("stats-%s", "restore") == "stats-restore"
    assert file_name("amdgpu-pages-%u-%04x.img", 5, 0x2a) == "amdgpu-pages-5-002a.img"


def test_header_words_match_the_fixtures() -> None:
    # Every magic in magic.py that a fixture file carries, checked against CRIU's own output.
    seen = set()
    for path in IMAGES.glob("*/*"):
        kind, _ = kind_for_file(path.name)
        header = header_bytes(kind)
        assert path.read_bytes()[:len(header)] == header, path
        seen.add(kind.name)
    assert seen == {"INVENTORY", "PSTREE", "CORE", "IDS", "MM", "PAGEMAP", "PAGES", "FS", "FILES",
                    "FDINFO", "PIPES_DATA", "SK_QUEUES", "MEMFD_INODE", "TIMENS", "SECCOMP", "STATS"}


def test_magic_values() -> None:
    # The values CRIU's magic.h gives for kinds no fixture carries.
    assert struct.pack("<I", M.IMG_SERVICE_MAGIC) == bytes.fromhex("40591055")
    assert (M.SIGACT_MAGIC, M.REG_FILES_MAGIC, M.PIPES_MAGIC, M.UNIXSK_MAGIC, M.TTY_FILES_MAGIC) == \
        (0x55344201, 0x50363636, 0x56513555, 0x54373943, 0x59433025)
    assert len({k.name for k in KINDS}) == len(KINDS)


def test_register_kind() -> None:
    kind = ImageKind("TEST_KIND", None, Framing.PLUGIN, pstree_pb2.PstreeEntry, ("test-kind-%u.img",))
    register_kind(kind)
    try:
        assert kind_for_file("test-kind-4.img") == (kind, ("4",))
        with pytest.raises(AssertionError, match="already registered"):
            register_kind(kind)
    finally:
        KINDS.remove(kind)


# Every file name of CRIU 4.x's criu/image-desc.c (imgset_template), with an example argument,
# and the crit name of its kind. pages-%d (PAGES_OLD) reads as PAGES: the names coincide.
CRIU_FILE_NAMES = {
    "inventory.img": "INVENTORY", "fdinfo-2.img": "FDINFO", "pagemap-7.img": "PAGEMAP",
    "pagemap-shmem-9.img": "PAGEMAP", "reg-files.img": "REG_FILES", "ext-files.img": "EXT_FILES",
    "ns-files.img": "NS_FILES", "eventfd.img": "EVENTFD_FILE", "eventpoll.img": "EVENTPOLL_FILE",
    "eventpoll-tfd.img": "EVENTPOLL_TFD", "signalfd.img": "SIGNALFD", "inotify.img": "INOTIFY_FILE",
    "inotify-wd.img": "INOTIFY_WD", "fanotify.img": "FANOTIFY_FILE", "fanotify-mark.img": "FANOTIFY_MARK",
    "core-7.img": "CORE", "ids-7.img": "IDS", "mm-7.img": "MM", "vmas-7.img": "VMAS", "pipes.img": "PIPES",
    "pipes-data.img": "PIPES_DATA", "fifo.img": "FIFO", "fifo-data.img": "FIFO_DATA", "pstree.img": "PSTREE",
    "sigacts-7.img": "SIGACT", "unixsk.img": "UNIXSK", "inetsk.img": "INETSK", "packetsk.img": "PACKETSK",
    "netlinksk.img": "NETLINK_SK", "sk-queues.img": "SK_QUEUES", "itimers-7.img": "ITIMERS",
    "posix-timers-7.img": "POSIX_TIMERS", "creds-7.img": "CREDS", "utsns-11.img": "UTSNS",
    "ipcns-var-11.img": "IPC_VAR", "ipcns-shm-11.img": "IPCNS_SHM", "ipcns-msg-11.img": "IPCNS_MSG",
    "ipcns-sem-11.img": "IPCNS_SEM", "fs-7.img": "FS", "remap-fpath.img": "REMAP_FPATH",
    "ghost-file-1f.img": "GHOST_FILE", "memfd.img": "MEMFD_INODE", "tcp-stream-3612e.img": "TCP_STREAM",
    "mountpoints-11.img": "MNTS", "netdev-11.img": "NETDEV", "netns-11.img": "NETNS", "ifaddr-11.img": "IFADDR",
    "route-11.img": "ROUTE", "route6-11.img": "ROUTE6", "rule-11.img": "RULE", "iptables-11.img": "IPTABLES",
    "ip6tables-11.img": "IP6TABLES", "nftables-11.img": "NFTABLES", "tmpfs-11.tar.gz.img": "TMPFS_IMG",
    "tmpfs-dev-11.tar.gz.img": "TMPFS_DEV", "autofs-11.img": "AUTOFS", "binfmt-misc-11.img": "BINFMT_MISC",
    "binfmt-misc.img": "BINFMT_MISC", "tty.img": "TTY_FILES", "tty-info.img": "TTY_INFO",
    "tty-data.img": "TTY_DATA", "filelocks.img": "FILE_LOCKS", "rlimit-7.img": "RLIMIT", "pages-1.img": "PAGES",
    "pages-shmem-9.img": "SHM_PAGES_OLD", "signal-s-7.img": "SIGNAL", "signal-p-7.img": "SIGNAL",
    "tunfile.img": "TUNFILE", "cgroup.img": "CGROUP", "timerfd.img": "TIMERFD", "cpuinfo.img": "CPUINFO",
    "seccomp.img": "SECCOMP", "userns-11.img": "USERNS", "netns-ct-11.img": "NETNF_CT",
    "netns-exp-11.img": "NETNF_EXP", "files.img": "FILES", "timens-0.img": "TIMENS", "pidns-11.img": "PIDNS",
    "bpfmap-file.img": "BPFMAP_FILE", "bpfmap-data.img": "BPFMAP_DATA", "apparmor.img": "APPARMOR",
    "pidfd.img": "PIDFD", "stats-dump": "STATS", "irmap-cache": "IRMAP_CACHE",
}


@pytest.mark.parametrize("name, kind", sorted(CRIU_FILE_NAMES.items()))
def test_every_criu_4_file_name_has_a_kind(name: str, kind: str) -> None:
    found = kind_for_file(name)
    assert found is not None, f"{name}: no kind"
    assert found[0].name == kind


def test_magic_values_of_the_other_kinds() -> None:
    # criu/include/magic.h of CRIU 4.2, for the kinds added for files.img's every fd type.
    assert {k.name: k.magic for k in KINDS if k.name in {
        "TCP_STREAM", "INETSK", "EVENTPOLL_FILE", "EVENTPOLL_TFD", "SIGNALFD", "TIMERFD", "INOTIFY_FILE",
        "INOTIFY_WD", "FANOTIFY_FILE", "FANOTIFY_MARK", "FIFO", "FIFO_DATA", "PIDFD", "BPFMAP_DATA",
        "MNTS", "GHOST_FILE", "IRMAP_CACHE"}} == {
        "TCP_STREAM": 0x51465506, "INETSK": 0x56443851, "EVENTPOLL_FILE": 0x45023858,
        "EVENTPOLL_TFD": 0x44433746, "SIGNALFD": 0x57323820, "TIMERFD": 0x50493712,
        "INOTIFY_FILE": 0x48424431, "INOTIFY_WD": 0x54562009, "FANOTIFY_FILE": 0x55096122,
        "FANOTIFY_MARK": 0x56506035, "FIFO": 0x58364939, "FIFO_DATA": 0x59333054, "PIDFD": 0x54435556,
        "BPFMAP_DATA": 0x64324033, "MNTS": 0x55563928, "GHOST_FILE": 0x52583605, "IRMAP_CACHE": 0x57004059,
    }
    assert M.IMG_SERVICE_MAGIC and kind_for_file("irmap-cache")[0].framing is Framing.SERVICE
