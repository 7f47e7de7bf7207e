"""The byte layout of CRIU image files: magic words, then length-prefixed protobuf records.

File layouts (every integer little-endian, the byte order of the x86-64 host that dumped)::

    record image (core-N.img, files.img, ... : Framing.COMMON)
        +------------------+------------+--------+--------------+--------+--------------+--
        | IMG_COMMON_MAGIC | kind magic | u32 n0 | n0 bytes of  | u32 n1 | n1 bytes ... |
        |   0x54564319     |  e.g. CORE |        | proto2 msg 0 |        |              |
        +------------------+------------+--------+--------------+--------+--------------+--
        records run to the end of the file; a file with no record is valid (empty).

    service image (stats-dump, stats-restore : Framing.SERVICE)
        the same, with IMG_SERVICE_MAGIC 0x55105940 as the first word.

    inventory.img (Framing.INVENTORY)
        | INVENTORY_MAGIC 0x58313116 | u32 n | n bytes of InventoryEntry |   (no common magic)

    records with a raw payload (pipes-data.img, sk-queues.img, tcp-stream-N.img, ...)
        | u32 n | n bytes of the record | k raw bytes |  ...  where k = the sum of fields of
        the record (PipeDataEntry.bytes; TcpStreamEntry.inq_len + outq_len: the receive queue,
        then the send queue); crit shows them as the entry's "extra".

    plugin image (amdgpu-kfd-N.img, amdgpu-renderD-N.img : Framing.PLUGIN)
        | u64 n | n bytes of one proto2 message |     (CRIU plugins frame their own files)

    raw image (pages-N.img : Framing.RAW)
        no header: page contents, 4096 bytes per page, in pagemap order.

The first record of a pagemap image is a PagemapHead, every later one a PagemapEntry
(:attr:`ImageKind.head`). Magic values: :mod:`pycriu_restore.images.magic`.

Versions: images v1.1 (``CRTOOLS_IMAGES_V1_1``, inventory ``img_version`` 2), which CRIU has
written from 1.x through 4.x; pycrestore is tested on CRIU 4.2's output. Schemas are proto2 and
unknown fields are kept: a record from a newer CRIU decodes, and is written back byte for byte.

All sizes read from a file are untrusted: each is checked against the bytes left in the file
and against the MAX_* bounds below before anything is allocated.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from google.protobuf.message import DecodeError, EncodeError, Message

from pycriu_restore.images import magic as M
from pycriu_restore.images.errors import BadMagic, BadRecord, ImageError, ImageTruncated, MissingImage
from pycriu_restore.images.kinds import Framing, ImageKind

# The version of the image format in inventory.img that pycrestore reads (CRIU's magic.h).
CRTOOLS_IMAGES_V1_1 = 2
ACCEPTED_IMG_VERSIONS = (CRTOOLS_IMAGES_V1_1,)

# Bounds on sizes read from files. The largest CRIU record is an mm with every VMA of a
# process (about 60 bytes per VMA); the largest payloads are pipe and socket queues.
MAX_RECORD_BYTES = 64 << 20
MAX_PAYLOAD_BYTES = 256 << 20
MAX_PLUGIN_MESSAGE_BYTES = 256 << 20

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Record:
    """One decoded record: where it starts (its length word), its message and raw payload."""

    offset: int
    message: Message
    payload: bytes | None


def header_bytes(kind: ImageKind) -> bytes:
    """The magic words a file of this kind starts with (b"" for plugin and raw images)."""
    if kind.framing is Framing.INVENTORY:
        return _U32.pack(kind.magic)
    if kind.framing is Framing.COMMON:
        return _U32.pack(M.IMG_COMMON_MAGIC) + _U32.pack(kind.magic)
    if kind.framing is Framing.SERVICE:
        return _U32.pack(M.IMG_SERVICE_MAGIC) + _U32.pack(kind.magic)
    return b""


def _expected_words(kind: ImageKind) -> tuple[tuple[str, int], ...]:
    """The header words of a kind, each with its magic.h name, for error messages."""
    if kind.framing is Framing.INVENTORY:
        return (("INVENTORY_MAGIC", kind.magic),)
    first = ("IMG_COMMON_MAGIC", M.IMG_COMMON_MAGIC) if kind.framing is Framing.COMMON \
        else ("IMG_SERVICE_MAGIC", M.IMG_SERVICE_MAGIC)
    return (first, (f"{kind.name} magic", kind.magic))


def _read_exact(f: BinaryIO, path: str, size: int, offset: int, what: str) -> bytes:
    """Read exactly ``size`` bytes at the current position (``offset``) or raise ImageTruncated."""
    try:
        data = f.read(size)
    except OSError as err:
        raise ImageError(path, f"cannot read {what}: {err.strerror or err}", offset) from err
    if len(data) != size:
        raise ImageTruncated(path, f"file ends {len(data)} bytes into {what} of {size} bytes", offset)
    return data


def _check_header(f: BinaryIO, path: str, kind: ImageKind, file_bytes: int) -> int:
    """Read and check the magic words; return the offset of the first record."""
    offset = 0
    for name, expected in _expected_words(kind):
        if file_bytes - offset < 4:
            raise ImageTruncated(
                path, f"file is {file_bytes} bytes, shorter than the {len(header_bytes(kind))}-byte "
                f"header of a {kind.name} image", offset)
        (found,) = _U32.unpack(_read_exact(f, path, 4, offset, "a magic word"))
        if found != expected:
            raise BadMagic(path, f"magic word is {found:#010x}, expected {name} {expected:#010x}", offset)
        offset += 4
    return offset


def _decode(path: str, cls: type[Message], data: bytes, offset: int, what: str) -> Message:
    """Decode ``data`` as ``cls``; a corrupt or incomplete message raises BadRecord."""
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as err:
        raise BadRecord(
            path, f"{what} ({len(data)} bytes) does not decode as {cls.DESCRIPTOR.name}: {err}", offset
        ) from err
    if not msg.IsInitialized():
        missing = ", ".join(msg.FindInitializationErrors())
        raise BadRecord(path, f"{what} ({cls.DESCRIPTOR.name}) lacks required fields: {missing}", offset)
    return msg


def _open(path: str) -> tuple[BinaryIO, int]:
    """Open an image file for reading; return it and its size in bytes."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller's finally
    except FileNotFoundError as err:
        raise MissingImage(path, "no such file") from err
    except OSError as err:
        raise ImageError(path, f"cannot open: {err.strerror or err}") from err
    try:
        return f, os.fstat(f.fileno()).st_size
    except OSError as err:
        f.close()
        raise ImageError(path, f"cannot stat: {err.strerror or err}") from err


def iter_records(path: str | os.PathLike[str], kind: ImageKind) -> Iterator[Record]:
    """Yield the records of an image file one at a time, checking the framing as it goes.

    ``kind`` must be a record kind (not RAW). Raises BadMagic, ImageTruncated, BadRecord or
    MissingImage, each naming the file and the byte offset; nothing else escapes.
    """
    path = os.fspath(path)
    if kind.framing is Framing.RAW:
        raise ImageError(path, f"{kind.name} images hold raw data, not records")
    if kind.undecoded is not None:
        raise ImageError(path, f"{kind.name} images are not decoded by pycrestore: {kind.undecoded}")
    f, file_bytes = _open(path)
    with f:
        if kind.framing is Framing.PLUGIN:
            yield _read_plugin_record(f, path, kind, file_bytes)
            return
        offset = _check_header(f, path, kind, file_bytes)
        index = 0
        while offset < file_bytes:
            left = file_bytes - offset
            if left < 4:
                raise ImageTruncated(path, f"file ends {left} bytes into the 4-byte length of record {index}",
                                     offset)
            (size,) = _U32.unpack(_read_exact(f, path, 4, offset, f"the length of record {index}"))
            if size > MAX_RECORD_BYTES:
                raise BadRecord(path, f"record {index} claims {size} bytes, more than the "
                                f"{MAX_RECORD_BYTES}-byte limit", offset)
            if size > left - 4:
                raise ImageTruncated(path, f"record {index} of {size} bytes runs past the end of the file "
                                     f"({left - 4} bytes left)", offset)
            data = _read_exact(f, path, size, offset + 4, f"record {index}")
            message = _decode(path, kind.record_class(index), data, offset, f"record {index}")
            record_offset, offset = offset, offset + 4 + size
            payload = None
            if kind.payload_fields:
                payload_bytes = sum(kind.payload_sizes(message))
                counted_by = "+".join(kind.payload_fields)
                left = file_bytes - offset
                if payload_bytes > MAX_PAYLOAD_BYTES:
                    raise BadRecord(path, f"record {index} announces a payload of {payload_bytes} bytes, "
                                    f"more than the {MAX_PAYLOAD_BYTES}-byte limit", record_offset)
                if payload_bytes > left:
                    raise ImageTruncated(path, f"payload of record {index} ({counted_by}="
                                         f"{payload_bytes}) runs past the end of the file ({left} bytes left)",
                                         offset)
                payload = _read_exact(f, path, payload_bytes, offset, f"the payload of record {index}")
                offset += payload_bytes
            yield Record(record_offset, message, payload)
            index += 1


def _read_plugin_record(f: BinaryIO, path: str, kind: ImageKind, file_bytes: int) -> Record:
    """Read the one message of a plugin image: u64 size, then exactly that many bytes."""
    if file_bytes < 8:
        raise ImageTruncated(path, f"file is {file_bytes} bytes, shorter than the 8-byte size of a "
                             f"{kind.name} image", 0)
    (size,) = _U64.unpack(_read_exact(f, path, 8, 0, "the message size"))
    if size > MAX_PLUGIN_MESSAGE_BYTES:
        raise BadRecord(path, f"message claims {size} bytes, more than the "
                        f"{MAX_PLUGIN_MESSAGE_BYTES}-byte limit", 0)
    follow = file_bytes - 8
    if size > follow:
        raise ImageTruncated(path, f"message of {size} bytes runs past the end of the file "
                             f"({follow} bytes follow the size)", 0)
    if size < follow:
        raise BadRecord(path, f"message of {size} bytes leaves trailing bytes ({follow} bytes follow the size)", 0)
    data = _read_exact(f, path, size, 8, "the message")
    return Record(0, _decode(path, kind.record_class(0), data, 0, "the message"), None)


def encode_records(kind: ImageKind, messages: Sequence[Message], payloads: Sequence[bytes | None],
                   source: str) -> bytes:
    """Frame records into the bytes of a file of ``kind`` (the inverse of iter_records).

    ``payloads[i]`` is the raw payload after record i: required, and exactly as long as the
    record says, for kinds with a payload field; None otherwise. ``source`` names the image in
    errors. Raises BadRecord for a message of the wrong type, a missing required field, or a
    payload that does not match its record.
    """
    if kind.framing is Framing.RAW:
        raise ImageError(source, f"{kind.name} images hold raw data, not records")
    if kind.undecoded is not None:
        raise ImageError(source, f"{kind.name} images are not encoded by pycrestore: {kind.undecoded}")
    if len(messages) != len(payloads):
        raise AssertionError(f"encode_records: {len(messages)} messages but {len(payloads)} payloads")
    if kind.framing is Framing.PLUGIN and len(messages) != 1:
        raise BadRecord(source, f"a {kind.name} image holds exactly one message, not {len(messages)}")
    parts = [header_bytes(kind)]
    for index, (message, payload) in enumerate(zip(messages, payloads)):
        cls = kind.record_class(index)
        if message.DESCRIPTOR.full_name != cls.DESCRIPTOR.full_name:
            raise BadRecord(source, f"entry {index} is a {message.DESCRIPTOR.name}, "
                            f"expected {cls.DESCRIPTOR.name} in a {kind.name} image")
        try:
            data = message.SerializeToString()
        except EncodeError as err:
            missing = ", ".join(message.FindInitializationErrors())
            raise BadRecord(source, f"entry {index} ({cls.DESCRIPTOR.name}) lacks required fields: "
                            f"{missing}") from err
        if kind.framing is Framing.PLUGIN:
            parts.append(_U64.pack(len(data)))
        else:
            if len(data) > MAX_RECORD_BYTES:
                raise BadRecord(source, f"entry {index} encodes to {len(data)} bytes, more than the "
                                f"{MAX_RECORD_BYTES}-byte limit")
            parts.append(_U32.pack(len(data)))
        parts.append(data)
        if not kind.payload_fields:
            if payload is not None:
                raise BadRecord(source, f"entry {index}: {kind.name} records carry no payload, "
                                f"found {len(payload)} bytes")
            continue
        expected = sum(kind.payload_sizes(message))
        found = -1 if payload is None else len(payload)
        if found != expected:
            raise BadRecord(source, f"entry {index}: payload is {'missing' if payload is None else f'{found} bytes'}, "
                            f"expected {expected} ({'+'.join(kind.payload_fields)})")
        parts.append(payload)
    return b"".join(parts)
