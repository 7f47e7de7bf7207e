"""Images as crit's JSON: ``image_to_dict`` prints what ``crit show`` prints, ``dict_to_image``
reads it back (what ``crit encode`` does), so that ``dump_image(dict_to_image(d))`` gives the
original file byte for byte.

The shape is ``{"magic": "CORE", "entries": [entry, ...]}``; an entry is the record's set
fields in field-number order, plus ``"extra"`` for the raw payload of pipes-data, sk-queues
(base64) and tcp-stream records (``{"inq": base64, "outq": base64}``). How a value prints depends on the field's type and its crit option
(``proto/opts.proto``):

=================  ================================================================
bytes              base64, as ``base64.encodebytes`` (76-column lines, final newline);
                   ``conv = "unix_name"``: quoted-printable text
enum               the value's name
bool, string       as is
integer, hex       ``"0x1f"``; the option applies to every integer nested below the field
integer, dev       ``"major:minor"`` (odev: the old glibc dev_t encoding)
integer, flags     ``"A | B | 0x40"`` from the named table in flags.py, ``""`` for 0
integer, dict      the name from the named table in flags.py, else the number
repeated, ipadd    ``["10.0.0.1"]`` or ``["fe80::1"]``
other integers     the number
=================  ================================================================

These are the rules of crit's ``lib/pycriu/images/pb2dict.py``, written anew.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import quopri
from typing import Any

from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import Message

from pycriu_restore.images.errors import BadRecord, UnknownImage
from pycriu_restore.images.flags import DICT_TABLES, FLAG_TABLES, format_flags, parse_flags
from pycriu_restore.images.image import Image
from pycriu_restore.images.kinds import ImageKind, kind_by_name
from pycriu_restore.images.schemas import opts_pb2

# The kernel's dev_t encoding (new_encode_dev): minor in the low 20 bits.
KERNEL_MINOR_BITS = 20

_INT_TYPES = frozenset({
    FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32, FD.TYPE_SINT64,
    FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64,
})


def _opts(field: FD) -> opts_pb2.CriuOpts:
    """The crit options of a field (all unset when it has none)."""
    return field.GetOptions().Extensions[opts_pb2.criu]


# --- message -> dict --------------------------------------------------------------------

def _bswap32(word: int) -> int:
    """ntohl on this little-endian host: addresses are stored as network-order u32 words."""
    return int.from_bytes(word.to_bytes(4, "little"), "big")


def _ip_to_text(words: list[int]) -> list[Any]:
    """An ipadd field as crit prints it: one IPv4 (1 word) or IPv6 (4 words) address."""
    if len(words) == 1:
        return [str(ipaddress.IPv4Address(_bswap32(words[0])))]
    if len(words) == 4:
        value = 0
        for word in words:
            value = (value << 32) | _bswap32(word)
        return [ipaddress.IPv6Address(value).compressed]
    return list(words)  # not an address: crit would fail here; keep the numbers


def _value_to_json(field: FD, value: Any, hex_: bool) -> Any:
    """One (non-repeated) value as crit prints it; ``hex_`` is set when a parent is hex."""
    opts = _opts(field)
    hex_ = hex_ or opts.hex
    if field.type == FD.TYPE_MESSAGE:
        return message_to_dict(value, hex_)
    if field.type == FD.TYPE_BYTES:
        if opts.conv == "unix_name":
            text = quopri.encodestring(value)
            try:
                return text.decode()
            except UnicodeDecodeError:
                return text
        return base64.encodebytes(value).decode()
    if field.type == FD.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if field.type in _INT_TYPES:
        if hex_:
            return f"0x{value:x}"
        if opts.odev:
            return f"{os.major(value)}:{os.minor(value)}"
        if opts.dev:
            return f"{value >> KERNEL_MINOR_BITS}:{value & ((1 << KERNEL_MINOR_BITS) - 1)}"
        if opts.flags:
            table = FLAG_TABLES.get(opts.flags)
            return f"0x{value:x}" if table is None else format_flags(value, table)
        if opts.dict:
            return DICT_TABLES[opts.dict][field.name].get(value, value)
        return int(value)
    return value  # bool, string (and floats, which no CRIU schema has)


def message_to_dict(message: Message, hex_: bool = False) -> dict[str, Any]:
    """A message as crit prints it: its set fields, in field-number order."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.is_repeated:
            if _opts(field).ipadd:
                out[field.name] = _ip_to_text(list(value))
            else:
                out[field.name] = [_value_to_json(field, v, hex_) for v in value]
        else:
            out[field.name] = _value_to_json(field, value, hex_)
    return out


def _b64(data: bytes) -> str:
    """Bytes as crit prints them: base64.encodebytes (76-column lines, final newline)."""
    return base64.encodebytes(data).decode()


def _extra_to_json(kind: ImageKind, message: Message, extra: bytes) -> str | dict[str, str]:
    """A record's raw payload as crit prints it: one base64 string, or one per part."""
    if not kind.payload_keys:
        return _b64(extra)
    out, start = {}, 0
    for key, size in zip(kind.payload_keys, kind.payload_sizes(message)):
        out[key] = _b64(extra[start:start + size])
        start += size
    return out


def image_to_dict(image: Image) -> dict[str, Any]:
    """An image as ``crit show`` prints it: ``{"magic": NAME, "entries": [...]}``."""
    entries = []
    for message, extra in zip(image.entries, image.extras):
        entry = message_to_dict(message)
        if image.kind.payload_fields:
            entry["extra"] = _extra_to_json(image.kind, message, extra or b"")
        entries.append(entry)
    return {"magic": image.kind.name, "entries": entries}


# --- dict -> message --------------------------------------------------------------------

class _BadValue(Exception):
    """A JSON value that does not fit its field; turned into BadRecord with the entry's place."""


def _int_from_json(field: FD, value: Any) -> int:
    """An integer field's value from crit's text forms, or from a plain number."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _BadValue(f"expected a number or crit's text for it, found {value!r}")
    if isinstance(value, int):
        return value
    opts = _opts(field)
    try:
        if opts.dev or opts.odev:
            major, minor = (int(x) for x in value.split(":"))
            return os.makedev(major, minor) if opts.odev else (major << KERNEL_MINOR_BITS) | minor
        if opts.flags and opts.flags in FLAG_TABLES:
            return parse_flags(value, FLAG_TABLES[opts.flags])
        if opts.dict:
            names = {name: number for number, name in DICT_TABLES[opts.dict][field.name].items()}
            if value in names:
                return names[value]
        return int(value, 0)
    except ValueError as err:
        raise _BadValue(f"{value!r} is not a value of this field ({err})") from None


def _ip_from_json(values: list[Any]) -> list[int]:
    """Inverse of _ip_to_text: an address string back to network-order u32 words."""
    try:
        addr = ipaddress.ip_address(values[0])
    except ValueError as err:
        raise _BadValue(str(err)) from None
    packed = addr.packed
    return [int.from_bytes(packed[i:i + 4], "little") for i in range(0, len(packed), 4)]


def _scalar_from_json(field: FD, value: Any) -> Any:
    """A non-message value from JSON, as the protobuf runtime wants it."""
    if field.type == FD.TYPE_BYTES:
        if not isinstance(value, str):
            raise _BadValue(f"expected crit's text for bytes, found {value!r}")
        if _opts(field).conv == "unix_name":
            return quopri.decodestring(value.encode())
        try:
            return base64.decodebytes(value.encode())
        except binascii.Error as err:
            raise _BadValue(f"not base64: {err}") from None
    if field.type == FD.TYPE_ENUM:
        if isinstance(value, str):
            found = field.enum_type.values_by_name.get(value)
            if found is None:
                names = ", ".join(field.enum_type.values_by_name)
                raise _BadValue(f"{value!r} is not one of {names}")
            return found.number
        if isinstance(value, int) and not isinstance(value, bool) and value in field.enum_type.values_by_number:
            return value
        raise _BadValue(f"expected a name of enum {field.enum_type.name}, found {value!r}")
    if field.type == FD.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _BadValue(f"expected true or false, found {value!r}")
        return value
    if field.type == FD.TYPE_STRING:
        if not isinstance(value, str):
            raise _BadValue(f"expected a string, found {value!r}")
        return value
    if field.type in _INT_TYPES:
        return _int_from_json(field, value)
    return value


def _fill(message: Message, d: Any, where: str) -> None:
    """Set ``message``'s fields from crit's dict form; ``where`` names the place for errors."""
    if not isinstance(d, dict):
        raise _BadValue(f"{where}: expected an object, found {d!r}")
    fields = message.DESCRIPTOR.fields_by_name
    for name in d:
        if name not in fields:
            raise _BadValue(f"{where}: {message.DESCRIPTOR.name} has no field {name!r}")
    for field in message.DESCRIPTOR.fields:
        if field.name not in d:
            continue
        value, here = d[field.name], f"{where}.{field.name}"
        try:
            if field.is_repeated:
                if not isinstance(value, list):
                    raise _BadValue(f"expected a list, found {value!r}")
                target = getattr(message, field.name)
                if field.type == FD.TYPE_MESSAGE:
                    for i, item in enumerate(value):
                        _fill(target.add(), item, f"{here}[{i}]")
                elif _opts(field).ipadd and value and isinstance(value[0], str):
                    target.extend(_ip_from_json(value))
                else:
                    target.extend(_scalar_from_json(field, v) for v in value)
            elif field.type == FD.TYPE_MESSAGE:
                sub = getattr(message, field.name)
                sub.SetInParent()  # present even when empty, as {} says
                _fill(sub, value, here)
            else:
                setattr(message, field.name, _scalar_from_json(field, value))
        except _BadValue as err:
            text = str(err)
            raise _BadValue(text if text.startswith(where) else f"{here}: {text}") from None
        except (ValueError, TypeError) as err:  # out of range for the field's type
            raise _BadValue(f"{here}: {err}") from None


def _extra_from_json(kind: ImageKind, value: Any, index: int, source: str) -> bytes:
    """Inverse of _extra_to_json: a record's payload from crit's "extra" (absent: empty)."""
    if value is None:
        return b""
    if kind.payload_keys:
        if not isinstance(value, dict) or set(value) != set(kind.payload_keys):
            keys = ", ".join(kind.payload_keys)
            raise BadRecord(source, f"entry {index}: \"extra\" must be an object with keys {keys}, found {value!r}")
        parts = [value[key] for key in kind.payload_keys]
    else:
        parts = [value]
    out = []
    for part in parts:
        try:
            out.append(base64.decodebytes(part.encode()))
        except (binascii.Error, AttributeError) as err:
            raise BadRecord(source, f"entry {index}: \"extra\" is not base64: {err}") from None
    return b"".join(out)


def dict_to_image(d: dict[str, Any], source: str = "<json>") -> Image:
    """The inverse of image_to_dict: an Image from crit's JSON form.

    ``source`` names the JSON in errors. Raises UnknownImage for an unknown "magic" and
    BadRecord for an entry that does not fit the schema (naming the entry and the field).
    """
    if not isinstance(d, dict) or "magic" not in d or "entries" not in d:
        raise BadRecord(source, 'expected an object with "magic" and "entries"')
    kind = kind_by_name(d["magic"]) if isinstance(d["magic"], str) else None
    if kind is None or kind.message is None or kind.undecoded is not None:
        raise UnknownImage(source, f"magic {d['magic']!r} names no image kind with records")
    if not isinstance(d["entries"], list):
        raise BadRecord(source, f'"entries" must be a list, found {type(d["entries"]).__name__}')
    image = Image(kind)
    for index, entry in enumerate(d["entries"]):
        if not isinstance(entry, dict):
            raise BadRecord(source, f"entry {index}: expected an object, found {entry!r}")
        fields = dict(entry)
        extra_text = fields.pop("extra", None)
        message = kind.record_class(index)()
        try:
            _fill(message, fields, f"entry {index}")
        except _BadValue as err:
            raise BadRecord(source, str(err)) from None
        extra = None
        if kind.payload_fields:
            extra = _extra_from_json(kind, extra_text, index, source)
        elif extra_text is not None:
            raise BadRecord(source, f"entry {index}: {kind.name} entries have no \"extra\"")
        image.entries.append(message)
        image.extras.append(extra)
    return image
