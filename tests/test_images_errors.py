"""Every way an image file can be broken raises an ImageError subclass whose message names
the file, the byte offset and the cause (found versus expected); no protobuf or OS error
escapes."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from pycriu_restore.images import (
    BadMagic,
    BadRecord,
    Image,
    ImageError,
    ImageSet,
    ImageTruncated,
    MissingImage,
    NotACheckpoint,
    UnknownImage,
    UnsupportedVersion,
    dict_to_image,
    dump_image,
    load_image,
)
from pycriu_restore.images import magic as M
from pycriu_restore.images.framing import MAX_RECORD_BYTES
from pycriu_restore.images.kinds import Framing, ImageKind, kind_by_name
from pycriu_restore.images.schemas import pipe_data_pb2, pstree_pb2

from conftest import FIXTURES, skip_module_without_fixtures

skip_module_without_fixtures(FIXTURES)  # before the pack is read below


def _fixtures() -> Path:
    path = FIXTURES
    assert (path / "images").is_dir(), f"fixture pack not found at {path} (set PYCRESTORE_FIXTURES)"
    return path


IMAGES = _fixtures() / "images"
COMMON_CORE = struct.pack("<II", M.IMG_COMMON_MAGIC, M.CORE_MAGIC)
COMMON_PSTREE = struct.pack("<II", M.IMG_COMMON_MAGIC, M.PSTREE_MAGIC)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _expect(err: ImageError, path: Path, offset: int | None, *words: str) -> None:
    """The error names the file and offset first, then says each of ``words``."""
    text = str(err)
    where = str(path) if offset is None else f"{path}: offset {offset}"
    assert text.startswith(where + ": "), text
    assert err.path == str(path) and err.offset == offset
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"


def test_empty_file_is_truncated_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "core-1.img", b"")
    with pytest.raises(ImageTruncated) as info:
        load_image(path)
    _expect(info.value, path, 0, "file is 0 bytes", "8-byte header", "CORE")


def test_truncated_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "core-1.img", (IMAGES / "counter/core-31100.img").read_bytes()[:6])
    with pytest.raises(ImageTruncated) as info:
        load_image(path)
    _expect(info.value, path, 4, "file is 6 bytes", "header")


def test_wrong_kind_magic(tmp_path: Path) -> None:
    # A core image under a pstree name: the second word is CORE's, not PSTREE's.
    path = _write(tmp_path, "pstree.img", (IMAGES / "counter/core-31100.img").read_bytes())
    with pytest.raises(BadMagic) as info:
        load_image(path)
    _expect(info.value, path, 4, f"{M.CORE_MAGIC:#010x}", f"expected PSTREE magic {M.PSTREE_MAGIC:#010x}")


def test_wrong_common_magic(tmp_path: Path) -> None:
    data = bytearray((IMAGES / "counter/core-31100.img").read_bytes())
    data[0] ^= 0xFF
    path = _write(tmp_path, "core-1.img", bytes(data))
    with pytest.raises(BadMagic) as info:
        load_image(path)
    _expect(info.value, path, 0, "expected IMG_COMMON_MAGIC 0x54564319")


def test_inventory_with_common_header_is_bad_magic(tmp_path: Path) -> None:
    path = _write(tmp_path, "inventory.img", COMMON_CORE + b"\x00\x00\x00\x00")
    with pytest.raises(BadMagic) as info:
        load_image(path)
    _expect(info.value, path, 0, "0x54564319", "expected INVENTORY_MAGIC 0x58313116")


def test_truncated_record_length(tmp_path: Path) -> None:
    path = _write(tmp_path, "core-1.img", COMMON_CORE + b"\x10\x00")
    with pytest.raises(ImageTruncated) as info:
        load_image(path)
    _expect(info.value, path, 8, "2 bytes into the 4-byte length of record 0")


def test_record_length_past_eof(tmp_path: Path) -> None:
    path = _write(tmp_path, "core-1.img", COMMON_CORE + struct.pack("<I", 1000) + b"\x08\x01" * 5)
    with pytest.raises(ImageTruncated) as info:
        load_image(path)
    _expect(info.value, path, 8, "record 0 of 1000 bytes runs past the end of the file (10 bytes left)")


def test_real_file_cut_short(tmp_path: Path) -> None:
    data = (IMAGES / "counter/core-31100.img").read_bytes()
    path = _write(tmp_path, "core-1.img", data[:100])
    with pytest.raises(ImageTruncated) as info:
        load_image(path)
    _expect(info.value, path, 8, f"record 0 of {len(data) - 12} bytes", "88 bytes left")


def test_oversized_record_length(tmp_path: Path) -> None:
    path = _write(tmp_path, "core-1.img", COMMON_CORE + struct.pack("<I", 0xFFFFFFFF))
    with pytest.raises(BadRecord) as info:
        load_image(path)
    _expect(info.value, path, 8, "claims 4294967295 bytes", f"{MAX_RECORD_BYTES}-byte limit")


def test_undecodable_record(tmp_path: Path) -> None:
    path = _write(tmp_path, "pstree.img", COMMON_PSTREE + struct.pack("<I", 3) + b"\xff\xff\xff")
    with pytest.raises(BadRecord) as info:
        load_image(path)
    _expect(info.value, path, 8, "record 0 (3 bytes) does not decode as PstreeEntry")
    assert isinstance(info.value.__cause__, DecodeError)


def test_record_missing_required_fields(tmp_path: Path) -> None:
    record = pstree_pb2.PstreeEntry(pid=5).SerializePartialToString()
    path = _write(tmp_path, "pstree.img", COMMON_PSTREE + struct.pack("<I", len(record)) + record)
    with pytest.raises(BadRecord) as info:
        load_image(path)
    _expect(info.value, path, 8, "record 0 (PstreeEntry) lacks required fields: ppid, pgid, sid")


def test_bad_second_record_reports_its_offset(tmp_path: Path) -> None:
    data = (IMAGES / "pipes/pstree.img").read_bytes()
    (first,) = struct.unpack_from("<I", data, 8)
    second = 8 + 4 + first
    corrupt = data[:second + 4] + b"\xff" * (len(data) - second - 4)
    path = _write(tmp_path, "pstree.img", corrupt)
    with pytest.raises(BadRecord) as info:
        load_image(path)
    _expect(info.value, path, second, "record 1")


def test_payload_past_eof(tmp_path: Path) -> None:
    data = (IMAGES / "pipes/pipes-data.img").read_bytes()
    path = _write(tmp_path, "pipes-data.img", data[:-5])
    with pytest.raises(ImageTruncated) as info:
        load_image(path)
    _expect(info.value, path, len(data) - 39, "payload of record 0 (bytes=39)", "(34 bytes left)")


def test_unknown_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "corefile-1.img", COMMON_CORE)
    with pytest.raises(UnknownImage) as info:
        load_image(path)
    _expect(info.value, path, None, "'corefile-1.img' matches no CRIU image kind")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingImage) as info:
        load_image(tmp_path / "core-1.img")
    _expect(info.value, tmp_path / "core-1.img", None, "no such file")


def test_os_error_is_wrapped(tmp_path: Path) -> None:
    (tmp_path / "core-1.img").mkdir()
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "core-1.img")
    assert isinstance(info.value.__cause__, OSError)
    _expect(info.value, tmp_path / "core-1.img", None, "cannot")


def test_raw_image_has_no_records() -> None:
    with pytest.raises(ImageError, match="raw data, not records"):
        load_image(IMAGES / "counter/pages-1.img")


def test_directory_without_inventory(tmp_path: Path) -> None:
    shutil.copy(IMAGES / "counter/pstree.img", tmp_path)
    with pytest.raises(NotACheckpoint) as info:
        ImageSet.open(tmp_path)
    _expect(info.value, tmp_path, None, "no inventory.img")
    with pytest.raises(NotACheckpoint, match="not a directory"):
        ImageSet.open(tmp_path / "absent")


def test_unsupported_image_version(tmp_path: Path) -> None:
    image = load_image(IMAGES / "counter/inventory.img")
    image.entries[0].img_version = 1
    _write(tmp_path, "inventory.img", dump_image(image))
    with pytest.raises(UnsupportedVersion) as info:
        ImageSet.open(tmp_path)
    _expect(info.value, tmp_path / "inventory.img", None, "img_version is 1, pycrestore reads 2")


# --- the plugin framing (u64 size + one message) ------------------------------------------

PLUGIN_KIND = ImageKind("TEST_PLUGIN", None, Framing.PLUGIN, pstree_pb2.PstreeEntry, ("test-plugin-%u.img",))


def test_plugin_framing_round_trip(tmp_path: Path) -> None:
    entry = pstree_pb2.PstreeEntry(pid=1, ppid=0, pgid=1, sid=1, threads=[1, 2])
    data = dump_image(Image(PLUGIN_KIND, [entry]))
    assert data[:8] == struct.pack("<Q", entry.ByteSize())
    path = _write(tmp_path, "test-plugin-1.img", data)
    assert load_image(path, PLUGIN_KIND).entries == [entry]


@pytest.mark.parametrize("tail, error, words", [
    (b"", ImageTruncated, "message of 12 bytes runs past the end of the file (8 bytes follow the size)"),
    (b"\x00" * 8, BadRecord, "message of 12 bytes leaves trailing bytes (20 bytes follow the size)"),
])
def test_plugin_framing_errors(tmp_path: Path, tail: bytes, error: type, words: str) -> None:
    entry = pstree_pb2.PstreeEntry(pid=1, ppid=0, pgid=1, sid=1, threads=[1, 2])
    good = dump_image(Image(PLUGIN_KIND, [entry]))
    data = good[:-4] if not tail else good + tail
    path = _write(tmp_path, "test-plugin-1.img", data)
    with pytest.raises(error) as info:
        load_image(path, PLUGIN_KIND)
    _expect(info.value, path, 0, words)


# --- writing -----------------------------------------------------------------------------

def test_dump_rejects_payload_mismatch() -> None:
    image = load_image(IMAGES / "pipes/pipes-data.img")
    image.extras[0] = image.extras[0][:-1]
    with pytest.raises(BadRecord, match=r"entry 0: payload is 38 bytes, expected 39 \(bytes\)"):
        dump_image(image)


def test_dump_rejects_wrong_message_type_and_missing_fields() -> None:
    kind = kind_by_name("PSTREE")
    with pytest.raises(BadRecord, match="entry 0 is a PipeDataEntry, expected PstreeEntry"):
        dump_image(Image(kind, [pipe_data_pb2.PipeDataEntry(pipe_id=1, bytes=0)]))
    with pytest.raises(BadRecord, match="lacks required fields: ppid, pgid, sid"):
        dump_image(Image(kind, [pstree_pb2.PstreeEntry(pid=1)]))


def test_dict_to_image_errors() -> None:
    with pytest.raises(UnknownImage, match="x.json: magic 'NOPE' names no image kind"):
        dict_to_image({"magic": "NOPE", "entries": []}, "x.json")
    with pytest.raises(BadRecord, match=r"x.json: entry 0\.pid: expected a number"):
        dict_to_image({"magic": "PSTREE", "entries": [{"pid": [1]}]}, "x.json")
    with pytest.raises(BadRecord, match='entry 0: PSTREE entries have no "extra"'):
        dict_to_image({"magic": "PSTREE", "entries": [{"pid": 1, "extra": ""}]}, "x.json")
