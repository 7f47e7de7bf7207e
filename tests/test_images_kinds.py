"""The registry of image kinds: magic values, file names, and registration."""

from __future__ import annotations

import os
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
