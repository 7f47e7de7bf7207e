"""crit's display rules that the fixtures do not exercise: dev, odev, ipadd, dict misses,
quoted-printable unix names, nested hex, unknown flag bits. Each is checked against the value
crit's pb2dict would print, and for the way back to the same message."""

from __future__ import annotations

import base64
import os

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pycriu_restore.images.crit_json import _BadValue, _fill, message_to_dict
from pycriu_restore.images.flags import MMAP_FLAGS, format_flags, parse_flags
from pycriu_restore.images.schemas import opts_pb2, sk_unix_pb2, vma_pb2


def _rules_message():
    """A message type built at run time with one field per crit option."""
    f = descriptor_pb2.FileDescriptorProto(name="pycrestore_test_rules.proto",
                                           package="pycrestore.test", syntax="proto2",
                                           dependency=["pycriu_restore/images/proto/opts.proto"])
    inner = f.message_type.add(name="Inner")
    inner.field.add(name="a", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    msg = f.message_type.add(name="Rules")
    specs = [
        ("rdev", 1, "TYPE_UINT32", "LABEL_OPTIONAL", {"dev": True}),
        ("odev", 2, "TYPE_UINT64", "LABEL_OPTIONAL", {"odev": True}),
        ("addr", 3, "TYPE_UINT32", "LABEL_REPEATED", {"ipadd": True}),
        ("family", 4, "TYPE_UINT32", "LABEL_OPTIONAL", {"dict": "sk"}),
        ("nested", 5, "TYPE_MESSAGE", "LABEL_OPTIONAL", {"hex": True}),
        ("raw", 6, "TYPE_BYTES", "LABEL_OPTIONAL", {}),
        ("uname", 7, "TYPE_BYTES", "LABEL_OPTIONAL", {"conv": "unix_name"}),
        ("neg", 8, "TYPE_SINT64", "LABEL_OPTIONAL", {}),
    ]
    for name, number, type_, label, opts in specs:
        field = msg.field.add(name=name, number=number,
                              type=getattr(descriptor_pb2.FieldDescriptorProto, type_),
                              label=getattr(descriptor_pb2.FieldDescriptorProto, label))
        if type_ == "TYPE_MESSAGE":
            field.type_name = ".pycrestore.test.Inner"
        field.options.Extensions[opts_pb2.criu].CopyFrom(opts_pb2.CriuOpts(**opts))
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(f.name)
    except KeyError:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pycrestore.test.Rules"))


Rules = _rules_message()


def test_rules_print_as_crit_does() -> None:
    m = Rules(rdev=(136 << 20) | 5, odev=os.makedev(8, 1), addr=[0x0100007F], family=1,
              raw=b"\x00\x01" * 40, uname=b"\x00abc=", neg=-3)
    m.nested.a = 255
    d = message_to_dict(m)
    assert d["raw"].count("\n") == 2 and len(d["raw"].split("\n")[0]) == 76
    assert d == {
        "rdev": "136:5",
        "odev": "8:1",
        "addr": ["127.0.0.1"],
        "family": "UNIX",
        "nested": {"a": "0xff"},
        # crit's bytes form is base64.encodebytes: 76-column lines, newline-terminated
        "raw": base64.encodebytes(b"\x00\x01" * 40).decode(),
        "uname": "=00abc=3D",
        "neg": -3,
    }
    back = Rules()
    _fill(back, d, "entry 0")
    assert back == m


def test_ipv6_and_dict_miss_round_trip() -> None:
    m = Rules(addr=[0x000080FE, 0, 0, 0x01000000], family=99)
    d = message_to_dict(m)
    assert d == {"addr": ["fe80::1"], "family": 99}
    back = Rules()
    _fill(back, d, "entry 0")
    assert back == m


def test_unknown_flag_bits_survive() -> None:
    assert format_flags(0x22 | 0x40000, MMAP_FLAGS) == "MAP_PRIVATE | MAP_ANON | 0x40000"
    assert parse_flags("MAP_PRIVATE | MAP_ANON | 0x40000", MMAP_FLAGS) == 0x40022
    assert format_flags(0, MMAP_FLAGS) == "" and parse_flags("", MMAP_FLAGS) == 0
    with pytest.raises(ValueError, match="MAP_BOGUS"):
        parse_flags("MAP_PRIVATE | MAP_BOGUS", MMAP_FLAGS)


def test_vma_flags_fields() -> None:
    vma = vma_pb2.VmaEntry(start=0x1000, end=0x3000, pgoff=0, shmid=0, prot=0x5,
                           flags=0x22, status=(1 << 0) | (1 << 9), fd=-1)
    d = message_to_dict(vma)
    assert (d["start"], d["prot"], d["flags"], d["status"], d["fd"]) == \
        ("0x1000", "PROT_READ | PROT_EXEC", "MAP_PRIVATE | MAP_ANON",
         "VMA_AREA_REGULAR | VMA_ANON_PRIVATE", -1)


@pytest.mark.parametrize("bad, where", [
    ({"ino": "twelve"}, "entry 3.ino"),
    ({"shutdown": "SIDEWAYS"}, "entry 3.shutdown"),
    ({"deleted": "yes"}, "entry 3.deleted"),
    ({"opts": {"so_sndbuf": 1, "so_bogus": 2}}, "so_bogus"),
    ({"peer": 1 << 40}, "entry 3.peer"),
    ({"colour": 1}, "colour"),
])
def test_bad_values_name_the_field(bad: dict, where: str) -> None:
    with pytest.raises(_BadValue, match=where.replace(".", r"\.")):
        _fill(sk_unix_pb2.UnixSkEntry(), bad, "entry 3")
