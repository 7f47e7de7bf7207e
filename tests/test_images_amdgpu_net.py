"""Schemas of the amdgpu plugin images and the network namespace images.

No fixture holds these images (the fixtures were dumped without a GPU and in the initial
net namespace), so the tests pin the schemas to upstream's facts instead:

* every field's number, wire type and label against a table copied from CRIU's
  plugins/amdgpu/criu-amdgpu.proto and images/{netdev,sysctl,tun,macvlan,sit}.proto, so a
  renumbered or retyped field fails here rather than silently misreading real images;
* hand-encoded wire bytes for a few records, built without the schema;
* realistic records (two GPUs, BOs above 4 GiB, opaque priv_data) that survive a
  serialize/parse round trip;
* the amdgpu plugin's own framing (8-byte size_t length, then one message or raw bytes),
  through a small local reader/writer: the real one belongs to images/framing.

The generated modules must exist: run `python tools/build_inplace.py protos` first.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

try:
    from pycriu_restore.images.proto import amdgpu_pb2, net_pb2, opts_pb2
except ImportError as err:  # pragma: no cover - only when the schemas were never compiled
    raise ImportError(
        f"generated schema modules missing ({err}); run `python tools/build_inplace.py protos`"
    ) from err

GiB = 1 << 30

# Field types as they appear in the upstream .proto files.
U32 = FieldDescriptor.TYPE_UINT32
U64 = FieldDescriptor.TYPE_UINT64
I32 = FieldDescriptor.TYPE_INT32
BYTES = FieldDescriptor.TYPE_BYTES
STRING = FieldDescriptor.TYPE_STRING
BOOL = FieldDescriptor.TYPE_BOOL
MSG = FieldDescriptor.TYPE_MESSAGE
ENUM = FieldDescriptor.TYPE_ENUM

REQ = "required"
OPT = "optional"
REP = "repeated"

# (field name, number, type, label, message/enum type name or None), in upstream order.
Row = tuple[str, int, int, str, str | None]

# plugins/amdgpu/criu-amdgpu.proto (criu-dev, 2025-11, commit 9e404e2083).
AMDGPU_UPSTREAM: dict[str, list[Row]] = {
    "DevIolink": [
        ("type", 1, U32, REQ, None),
        ("node_to_id", 2, U32, REQ, None),
    ],
    "KfdDeviceEntry": [
        ("node_id", 1, U32, REQ, None),
        ("gpu_id", 2, U32, REQ, None),
        ("cpu_cores_count", 3, U32, REQ, None),
        ("simd_count", 4, U32, REQ, None),
        ("mem_banks_count", 5, U32, REQ, None),
        ("caches_count", 6, U32, REQ, None),
        ("io_links_count", 7, U32, REQ, None),
        ("max_waves_per_simd", 8, U32, REQ, None),
        ("lds_size_in_kb", 9, U32, REQ, None),
        ("gds_size_in_kb", 10, U32, REQ, None),
        ("num_gws", 11, U32, REQ, None),
        ("wave_front_size", 12, U32, REQ, None),
        ("array_count", 13, U32, REQ, None),
        ("simd_arrays_per_engine", 14, U32, REQ, None),
        ("cu_per_simd_array", 15, U32, REQ, None),
        ("simd_per_cu", 16, U32, REQ, None),
        ("max_slots_scratch_cu", 17, U32, REQ, None),
        ("vendor_id", 18, U32, REQ, None),
        ("device_id", 19, U32, REQ, None),
        ("domain", 20, U32, REQ, None),
        ("drm_render_minor", 21, U32, REQ, None),
        ("hive_id", 22, U64, REQ, None),
        ("num_sdma_engines", 23, U32, REQ, None),
        ("num_sdma_xgmi_engines", 24, U32, REQ, None),
        ("num_sdma_queues_per_engine", 25, U32, REQ, None),
        ("num_cp_queues", 26, U32, REQ, None),
        ("fw_version", 27, U32, REQ, None),
        ("capability", 28, U32, REQ, None),
        ("sdma_fw_version", 29, U32, REQ, None),
        ("vram_public", 30, U32, REQ, None),
        ("vram_size", 31, U64, REQ, None),
        ("iolinks", 32, MSG, REP, "DevIolink"),
    ],
    "KfdBoEntry": [
        ("addr", 1, U64, REQ, None),
        ("size", 2, U64, REQ, None),
        ("offset", 3, U64, REQ, None),
        ("alloc_flags", 4, U32, REQ, None),
        ("gpu_id", 5, U32, REQ, None),
        ("handle", 6, U32, REQ, None),
    ],
    "CriuKfd": [
        ("pid", 1, U32, REQ, None),
        ("num_of_gpus", 2, U32, REQ, None),
        ("num_of_cpus", 3, U32, REQ, None),
        ("device_entries", 4, MSG, REP, "KfdDeviceEntry"),
        ("num_of_bos", 5, U64, REQ, None),
        ("bo_entries", 6, MSG, REP, "KfdBoEntry"),
        ("num_of_objects", 7, U32, REQ, None),
        ("shared_mem_size", 8, U64, REQ, None),
        ("shared_mem_magic", 9, U32, REQ, None),
        ("priv_data", 10, BYTES, REQ, None),
    ],
    "DrmBoEntry": [
        ("addr", 1, U64, REQ, None),
        ("size", 2, U64, REQ, None),
        ("offset", 3, U64, REQ, None),
        ("alloc_flags", 4, U64, REQ, None),
        ("alignment", 5, U64, REQ, None),
        ("preferred_domains", 6, U32, REQ, None),
        ("handle", 7, U32, REQ, None),
        ("is_import", 8, U32, REQ, None),
        ("num_of_vms", 9, U32, REQ, None),
        ("vm_entries", 10, MSG, REP, "DrmVmEntry"),
    ],
    "DrmVmEntry": [
        ("addr", 1, U64, REQ, None),
        ("size", 2, U64, REQ, None),
        ("offset", 3, U64, REQ, None),
        ("flags", 4, U64, REQ, None),
    ],
    "CriuRenderNode": [
        ("gpu_id", 1, U32, REQ, None),
        ("id", 2, U32, REQ, None),
        ("drm_render_minor", 3, U32, REQ, None),
        ("num_of_bos", 4, U64, REQ, None),
        ("bo_entries", 5, MSG, REP, "DrmBoEntry"),
    ],
    "CriuDmabufNode": [
        ("gem_handle", 1, U32, REQ, None),
    ],
}

# images/sysctl.proto, tun.proto, macvlan.proto, sit.proto, netdev.proto (criu-dev, 2025);
# NetnsEntry.unix_conf = 9 as used by criu/net.c.
NET_UPSTREAM: dict[str, list[Row]] = {
    "SysctlEntry": [
        ("type", 1, ENUM, REQ, "SysctlType"),
        ("iarg", 2, I32, OPT, None),
        ("sarg", 3, STRING, OPT, None),
    ],
    "TunLinkEntry": [
        ("flags", 1, U32, REQ, None),
        ("owner", 2, I32, REQ, None),
        ("group", 3, I32, REQ, None),
        ("vnethdr", 4, U32, REQ, None),
        ("sndbuf", 5, U32, REQ, None),
    ],
    "MacvlanLinkEntry": [
        ("mode", 1, U32, REQ, None),
        ("flags", 2, U32, OPT, None),
    ],
    "SitEntry": [
        ("link", 1, U32, OPT, None),
        ("local", 2, U32, REP, None),
        ("remote", 3, U32, REP, None),
        ("ttl", 4, U32, OPT, None),
        ("tos", 5, U32, OPT, None),
        ("pmtudisc", 6, BOOL, OPT, None),
        ("proto", 7, U32, OPT, None),
        ("flags", 8, U32, OPT, None),
        ("encap_type", 9, U32, OPT, None),
        ("encap_flags", 10, U32, OPT, None),
        ("encap_sport", 11, U32, OPT, None),
        ("encap_dport", 12, U32, OPT, None),
        ("rd_prefixlen", 13, U32, OPT, None),
        ("rd_prefix", 14, U32, REP, None),
        ("relay_prefixlen", 15, U32, OPT, None),
        ("relay_prefix", 16, U32, REP, None),
    ],
    "NetDeviceEntry": [
        ("type", 1, ENUM, REQ, "NdType"),
        ("ifindex", 2, U32, REQ, None),
        ("mtu", 3, U32, REQ, None),
        ("flags", 4, U32, REQ, None),
        ("name", 5, STRING, REQ, None),
        ("tun", 6, MSG, OPT, "TunLinkEntry"),
        ("address", 7, BYTES, OPT, None),
        ("conf", 8, I32, REP, None),
        ("conf4", 9, MSG, REP, "SysctlEntry"),
        ("conf6", 10, MSG, REP, "SysctlEntry"),
        ("macvlan", 11, MSG, OPT, "MacvlanLinkEntry"),
        ("peer_ifindex", 12, U32, OPT, None),
        ("peer_nsid", 13, U32, OPT, None),
        ("master", 14, U32, OPT, None),
        ("sit", 15, MSG, OPT, "SitEntry"),
    ],
    "NetnsId": [
        ("target_ns_id", 1, U32, REQ, None),
        ("netnsid_value", 2, I32, REQ, None),
    ],
    "NetnsEntry": [
        ("def_conf", 1, I32, REP, None),
        ("all_conf", 2, I32, REP, None),
        ("def_conf4", 3, MSG, REP, "SysctlEntry"),
        ("all_conf4", 4, MSG, REP, "SysctlEntry"),
        ("def_conf6", 5, MSG, REP, "SysctlEntry"),
        ("all_conf6", 6, MSG, REP, "SysctlEntry"),
        ("nsids", 7, MSG, REP, "NetnsId"),
        ("ext_key", 8, STRING, OPT, None),
        ("unix_conf", 9, MSG, REP, "SysctlEntry"),
        ("ipv4_sysctl", 10, MSG, REP, "SysctlEntry"),
    ],
}

NET_ENUMS_UPSTREAM: dict[str, dict[str, int]] = {
    "SysctlType": {"CTL_STR": 5, "CTL_32": 6},
    "NdType": {
        "LOOPBACK": 1, "VETH": 2, "TUN": 3, "EXTLINK": 4,
        "VENET": 5, "BRIDGE": 6, "MACVLAN": 7, "SIT": 8,
    },
}

# Fields that must print as hex in crit-style output (addresses, mmap offsets, flag words).
AMDGPU_HEX_FIELDS = {
    "KfdBoEntry": {"addr", "offset", "alloc_flags"},
    "DrmBoEntry": {"addr", "offset", "alloc_flags", "preferred_domains"},
    "DrmVmEntry": {"addr", "offset", "flags"},
    "CriuKfd": {"shared_mem_magic"},
}
NET_HEX_FIELDS = {"NetDeviceEntry": {"flags"}, "TunLinkEntry": {"flags"}}
NET_IPADD_FIELDS = {"SitEntry": {"local", "remote", "rd_prefix", "relay_prefix"}}

def _schema_rows(desc: Descriptor) -> list[Row]:
    """The schema's fields of one message as table rows, in declaration order."""
    rows: list[Row] = []
    for field in desc.fields:
        ref = None
        if field.type == MSG:
            ref = field.message_type.name
        elif field.type == ENUM:
            ref = field.enum_type.name
        label = REP if field.is_repeated else REQ if field.is_required else OPT
        rows.append((field.name, field.number, field.type, label, ref))
    return rows


def _option(desc: Descriptor, field_name: str) -> Any:
    """The crit-style (criu) option message of one field (default instance when unset)."""
    return desc.fields_by_name[field_name].GetOptions().Extensions[opts_pb2.criu]


# --- field tables ---------------------------------------------------------------------


@pytest.mark.parametrize(("module", "table"), [(amdgpu_pb2, AMDGPU_UPSTREAM), (net_pb2, NET_UPSTREAM)],
                         ids=["amdgpu", "net"])
def test_every_message_of_the_schema_is_in_the_upstream_table(module: Any, table: dict[str, list[Row]]) -> None:
    """No message was added or dropped relative to upstream."""
    assert set(module.DESCRIPTOR.message_types_by_name) == set(table)


@pytest.mark.parametrize(
    ("module", "message", "expected"),
    [(amdgpu_pb2, name, rows) for name, rows in AMDGPU_UPSTREAM.items()]
    + [(net_pb2, name, rows) for name, rows in NET_UPSTREAM.items()],
    ids=[f"amdgpu.{name}" for name in AMDGPU_UPSTREAM] + [f"net.{name}" for name in NET_UPSTREAM],
)
def test_field_numbers_types_and_labels_match_upstream(module: Any, message: str, expected: list[Row]) -> None:
    """Each field has upstream's number, type and label; nothing more, nothing less."""
    actual = _schema_rows(module.DESCRIPTOR.message_types_by_name[message])
    assert sorted(actual, key=lambda r: r[1]) == sorted(expected, key=lambda r: r[1])


@pytest.mark.parametrize(("enum", "values"), list(NET_ENUMS_UPSTREAM.items()))
def test_net_enum_values_match_upstream(enum: str, values: dict[str, int]) -> None:
    """Enum value names (JSON shows them) and numbers (the wire carries them) are upstream's."""
    desc = net_pb2.DESCRIPTOR.enum_types_by_name[enum]
    assert {v.name: v.number for v in desc.values} == values


def test_repeated_scalars_are_unpacked() -> None:
    """proto2 default, as upstream: one key per element (e.g. conf, sit local/remote)."""
    for module in (amdgpu_pb2, net_pb2):
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            for field in desc.fields:
                assert not field.is_packed, f"{desc.name}.{field.name} is packed"
    netns = net_pb2.NetnsEntry(def_conf=[1, 2])
    assert netns.SerializeToString() == _vfield(1, 1) + _vfield(1, 2)


def test_amdgpu_addresses_offsets_and_flags_carry_the_hex_option() -> None:
    """Addresses and flag words print as 0x... in crit-style output; sizes stay decimal."""
    for message, hex_fields in AMDGPU_HEX_FIELDS.items():
        desc = amdgpu_pb2.DESCRIPTOR.message_types_by_name[message]
        for name in hex_fields:
            assert _option(desc, name).hex, f"{message}.{name} should be hex"
        for name in ("size",):
            if name in desc.fields_by_name:
                assert not _option(desc, name).hex, f"{message}.{name} should stay decimal"


def test_net_options_match_upstream() -> None:
    """netdev/tun flags are hex and the sit addresses are ipadd, as in CRIU's schemas."""
    for message, names in NET_HEX_FIELDS.items():
        desc = net_pb2.DESCRIPTOR.message_types_by_name[message]
        assert all(_option(desc, n).hex for n in names), message
    for message, names in NET_IPADD_FIELDS.items():
        desc = net_pb2.DESCRIPTOR.message_types_by_name[message]
        assert all(_option(desc, n).ipadd for n in names), message
    assert not _option(net_pb2.NetDeviceEntry.DESCRIPTOR, "mtu").hex


# --- wire bytes built without the schema ----------------------------------------------


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _vfield(number: int, value: int) -> bytes:
    """A varint field: key (number << 3 | wire type 0), then the value."""
    return _varint(number << 3) + _varint(value)


def _lfield(number: int, payload: bytes) -> bytes:
    """A length-delimited field: key (number << 3 | wire type 2), length, payload."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_kfd_bo_entry_parses_hand_encoded_upstream_bytes() -> None:
    """A BO encoded by hand with upstream's numbers decodes to the same values."""
    wire = (
        _vfield(1, 0x7F3A_0000_0000)  # addr
        + _vfield(2, 6 * GiB)  # size, past 32 bits
        + _vfield(3, 0xD000_0000_1000)  # offset
        + _vfield(4, 0xD000_0001)  # alloc_flags
        + _vfield(5, 0xC2E1)  # gpu_id
        + _vfield(6, 7)  # handle
    )
    bo = amdgpu_pb2.KfdBoEntry.FromString(wire)
    assert (bo.addr, bo.size, bo.offset, bo.alloc_flags, bo.gpu_id, bo.handle) == (
        0x7F3A_0000_0000, 6 * GiB, 0xD000_0000_1000, 0xD000_0001, 0xC2E1, 7)
    assert bo.IsInitialized()
    assert bo.SerializeToString() == wire  # fields are written in number order


def test_drm_bo_entry_parses_hand_encoded_upstream_bytes() -> None:
    """alignment is field 5 and vm_entries field 10, with {addr, size, offset, flags} inside."""
    vm = _vfield(1, 0x8000_0000) + _vfield(2, 2 * GiB) + _vfield(3, 0) + _vfield(4, 0x1E)
    wire = (
        _vfield(1, 0x8000_0000) + _vfield(2, 2 * GiB) + _vfield(3, 0x1_0000_0000)
        + _vfield(4, 1 << 40) + _vfield(5, 0x10000) + _vfield(6, 4) + _vfield(7, 3)
        + _vfield(8, 1) + _vfield(9, 1) + _lfield(10, vm)
    )
    bo = amdgpu_pb2.DrmBoEntry.FromString(wire)
    assert bo.alloc_flags == 1 << 40
    assert bo.alignment == 0x10000
    assert (bo.preferred_domains, bo.handle, bo.is_import, bo.num_of_vms) == (4, 3, 1, 1)
    assert [(v.addr, v.size, v.offset, v.flags) for v in bo.vm_entries] == [(0x8000_0000, 2 * GiB, 0, 0x1E)]
    assert bo.SerializeToString() == wire


def test_net_device_entry_parses_hand_encoded_upstream_bytes() -> None:
    """A veth record with conf4 sysctls, encoded by hand, decodes field by field."""
    sysctl = _vfield(1, 6) + _vfield(2, 1)  # CTL_32, iarg 1
    wire = (
        _vfield(1, 2)  # VETH
        + _vfield(2, 4) + _vfield(3, 1500) + _vfield(4, 0x1043)
        + _lfield(5, b"eth0") + _lfield(7, bytes.fromhex("02425a0b0c0d"))
        + _lfield(9, sysctl) + _vfield(12, 9) + _vfield(13, 0)
    )
    dev = net_pb2.NetDeviceEntry.FromString(wire)
    assert dev.type == net_pb2.VETH
    assert (dev.ifindex, dev.mtu, dev.flags, dev.name) == (4, 1500, 0x1043, "eth0")
    assert dev.address == bytes.fromhex("02425a0b0c0d")
    assert [(c.type, c.iarg) for c in dev.conf4] == [(net_pb2.CTL_32, 1)]
    assert (dev.peer_ifindex, dev.HasField("peer_nsid"), dev.peer_nsid) == (9, True, 0)
    assert dev.SerializeToString() == wire


def test_required_fields_are_required() -> None:
    """upstream marks these `required`: a record without them is not initialized."""
    bo = amdgpu_pb2.KfdBoEntry(addr=0x1000, size=4096, offset=0, alloc_flags=0, gpu_id=1)
    assert not bo.IsInitialized()  # handle missing
    assert "handle" in bo.FindInitializationErrors()
    dev = net_pb2.NetDeviceEntry(type=net_pb2.LOOPBACK, ifindex=1, mtu=65536, flags=0x49)
    assert dev.FindInitializationErrors() == ["name"]


# --- realistic records ----------------------------------------------------------------


def _mi300_like_node(node_id: int, gpu_id: int, render_minor: int, peer_node: int) -> Any:
    """A KFD topology node with plausible properties of a large data-centre GPU."""
    return amdgpu_pb2.KfdDeviceEntry(
        node_id=node_id, gpu_id=gpu_id, cpu_cores_count=0, simd_count=1216,
        mem_banks_count=1, caches_count=498, io_links_count=2, max_waves_per_simd=8,
        lds_size_in_kb=64, gds_size_in_kb=0, num_gws=64, wave_front_size=64,
        array_count=32, simd_arrays_per_engine=1, cu_per_simd_array=10, simd_per_cu=4,
        max_slots_scratch_cu=32, vendor_id=0x1002, device_id=0x74A1, domain=0,
        drm_render_minor=render_minor, hive_id=0xA1B2_C3D4_E5F6_0718,
        num_sdma_engines=2, num_sdma_xgmi_engines=14, num_sdma_queues_per_engine=8,
        num_cp_queues=24, fw_version=151, capability=0x2B4A_E280, sdma_fw_version=19,
        vram_public=1, vram_size=192 * GiB,
        iolinks=[amdgpu_pb2.DevIolink(type=2, node_to_id=0),
                 amdgpu_pb2.DevIolink(type=11, node_to_id=peer_node)],
    )


def _kfd_image() -> Any:
    """CriuKfd of a process using two GPUs, with VRAM BOs larger than 4 GiB."""
    gpus = (0xC2E1, 0x5F3A)
    bos = []
    for i, (gpu, size) in enumerate([(gpus[0], 8 * GiB), (gpus[0], 2 * 1024 * 1024),
                                     (gpus[1], 5 * GiB + 4096), (gpus[1], 4096)]):
        bos.append(amdgpu_pb2.KfdBoEntry(
            addr=0x7FF0_0000_0000 + i * 16 * GiB, size=size,
            offset=0xD000_0000_0000 + (i << 32), alloc_flags=0xD000_0001 if i % 2 == 0 else 0x8000_0002,
            gpu_id=gpu, handle=i + 1))
    return amdgpu_pb2.CriuKfd(
        pid=31900, num_of_gpus=2, num_of_cpus=1,
        device_entries=[_mi300_like_node(1, gpus[0], 128, 2), _mi300_like_node(2, gpus[1], 129, 1)],
        num_of_bos=len(bos), bo_entries=bos, num_of_objects=57,
        shared_mem_size=2 * 1024 * 1024, shared_mem_magic=0x6B6B6B6B,
        priv_data=hashlib.sha256(b"kfd priv").digest() * 512 + b"\x00\xff" * 7,
    )


def test_criu_kfd_round_trips_with_two_gpus_and_big_bos() -> None:
    """Every value, including 64-bit sizes and opaque priv_data, survives serialize/parse."""
    kfd = _kfd_image()
    wire = kfd.SerializeToString()
    back = amdgpu_pb2.CriuKfd.FromString(wire)
    assert back == kfd
    assert back.IsInitialized()
    assert [bo.size for bo in back.bo_entries] == [8 * GiB, 2 * 1024 * 1024, 5 * GiB + 4096, 4096]
    assert back.device_entries[1].vram_size == 192 * GiB
    assert back.device_entries[0].hive_id == 0xA1B2_C3D4_E5F6_0718
    assert back.priv_data == kfd.priv_data and len(back.priv_data) == 32 * 512 + 14
    assert [link.node_to_id for link in back.device_entries[0].iolinks] == [0, 2]


def test_32_bit_fields_reject_64_bit_values() -> None:
    """alloc_flags and gpu_id are uint32 upstream: a value past 32 bits is refused, not truncated."""
    with pytest.raises(ValueError):
        amdgpu_pb2.KfdBoEntry(alloc_flags=1 << 32)
    with pytest.raises(ValueError):
        amdgpu_pb2.KfdDeviceEntry(gpu_id=1 << 32)


def test_render_node_and_dmabuf_round_trip() -> None:
    """A render node with a shared BO mapped twice, and the dma-buf that refers to it."""
    vms = [amdgpu_pb2.DrmVmEntry(addr=0x8000_0000 + i * 8 * GiB, size=6 * GiB, offset=0, flags=0xE)
           for i in range(2)]
    node = amdgpu_pb2.CriuRenderNode(
        gpu_id=0xC2E1, id=17, drm_render_minor=128, num_of_bos=2,
        bo_entries=[
            amdgpu_pb2.DrmBoEntry(addr=vms[0].addr, size=6 * GiB, offset=0x1_0010_0000,
                                  alloc_flags=0x0000_0400_0000_0001, alignment=2 * 1024 * 1024,
                                  preferred_domains=4, handle=1, is_import=0, num_of_vms=2,
                                  vm_entries=vms),
            amdgpu_pb2.DrmBoEntry(addr=0, size=4096, offset=0x1_0020_0000, alloc_flags=0,
                                  alignment=4096, preferred_domains=2, handle=2, is_import=1,
                                  num_of_vms=0),
        ])
    back = amdgpu_pb2.CriuRenderNode.FromString(node.SerializeToString())
    assert back == node and back.IsInitialized()
    assert back.bo_entries[0].vm_entries[1].addr == 0x8000_0000 + 8 * GiB
    assert back.bo_entries[0].alloc_flags == 0x0000_0400_0000_0001

    dmabuf = amdgpu_pb2.CriuDmabufNode(gem_handle=2)
    assert dmabuf.SerializeToString() == b"\x08\x02"
    assert amdgpu_pb2.CriuDmabufNode.FromString(b"\x08\x02").gem_handle == 2


def test_netdev_and_netns_round_trip() -> None:
    """Loopback, veth, tun, macvlan and sit links, and a namespace's sysctls and nsids."""
    conf4 = [net_pb2.SysctlEntry(type=net_pb2.CTL_32, iarg=v) for v in (1, 0, 1)] + [
        net_pb2.SysctlEntry(type=net_pb2.CTL_32)]  # sysctl absent on the dumping kernel
    conf6 = [net_pb2.SysctlEntry(type=net_pb2.CTL_32, iarg=-1),
             net_pb2.SysctlEntry(type=net_pb2.CTL_STR, sarg="fe80::1:2:3:4")]
    links = [
        net_pb2.NetDeviceEntry(type=net_pb2.LOOPBACK, ifindex=1, mtu=65536, flags=0x49, name="lo",
                               conf4=conf4, conf6=conf6),
        net_pb2.NetDeviceEntry(type=net_pb2.VETH, ifindex=4, mtu=1500, flags=0x11043, name="eth0",
                               address=bytes.fromhex("02425a0b0c0d"), peer_ifindex=5, peer_nsid=0,
                               master=3, conf4=conf4),
        net_pb2.NetDeviceEntry(type=net_pb2.TUN, ifindex=6, mtu=1500, flags=0x1003, name="tap0",
                               tun=net_pb2.TunLinkEntry(flags=0x1002, owner=-1, group=-1,
                                                        vnethdr=10, sndbuf=0x7FFF_FFFF)),
        net_pb2.NetDeviceEntry(type=net_pb2.MACVLAN, ifindex=7, mtu=1500, flags=0x1003, name="mv0",
                               macvlan=net_pb2.MacvlanLinkEntry(mode=4)),
        net_pb2.NetDeviceEntry(type=net_pb2.SIT, ifindex=8, mtu=1480, flags=0x91, name="sit1",
                               sit=net_pb2.SitEntry(link=4, local=[0x0100_000A], remote=[0x0200_000A],
                                                    ttl=64, pmtudisc=True, proto=41)),
    ]
    for link in links:
        back = net_pb2.NetDeviceEntry.FromString(link.SerializeToString())
        assert back == link and back.IsInitialized(), link.name
    assert not net_pb2.NetDeviceEntry.FromString(links[0].SerializeToString()).conf4[3].HasField("iarg")
    assert net_pb2.NetDeviceEntry.FromString(links[1].SerializeToString()).HasField("peer_nsid")

    netns = net_pb2.NetnsEntry(
        def_conf4=conf4, all_conf4=conf4, def_conf6=conf6, all_conf6=conf6,
        nsids=[net_pb2.NetnsId(target_ns_id=11, netnsid_value=0)],
        unix_conf=[net_pb2.SysctlEntry(type=net_pb2.CTL_32, iarg=512)])
    back = net_pb2.NetnsEntry.FromString(netns.SerializeToString())
    assert back == netns and not back.HasField("ext_key")
    assert back.unix_conf[0].iarg == 512
    assert back.all_conf6[1].sarg == "fe80::1:2:3:4"

    external = net_pb2.NetnsEntry(ext_key="extern-net")
    assert external.SerializeToString() == _lfield(8, b"extern-net")


# --- the amdgpu plugin's framing --------------------------------------------------------
#
# A minimal local stand-in for the real reader in images/framing (another module's job):
# it only has to show the layout this schema is read with.

SIZE_T = struct.Struct("<Q")  # size_t on x86_64, written in host (little-endian) order


def _write_plugin_image(payload: bytes) -> bytes:
    """Plugin framing: 8-byte length, then exactly that many bytes."""
    return SIZE_T.pack(len(payload)) + payload


def _read_plugin_image(data: bytes) -> bytes:
    """Inverse of _write_plugin_image; refuses a header that disagrees with the file."""
    if len(data) < SIZE_T.size:
        raise ValueError(f"{len(data)} bytes, expected at least the {SIZE_T.size}-byte header")
    (length,) = SIZE_T.unpack_from(data)
    body = data[SIZE_T.size:]
    if length != len(body):
        raise ValueError(f"header says {length} bytes, file holds {len(body)}")
    return body


def test_kfd_image_framing_is_size_t_then_one_message() -> None:
    """amdgpu-kfd-<id>.img: the first 8 bytes are the message length, little-endian."""
    kfd = _kfd_image()
    payload = kfd.SerializeToString()
    image = _write_plugin_image(payload)
    assert image[:8] == len(payload).to_bytes(8, "little")
    assert len(image) == 8 + len(payload)
    assert amdgpu_pb2.CriuKfd.FromString(_read_plugin_image(image)) == kfd


def test_render_and_dmabuf_images_use_the_same_framing() -> None:
    """amdgpu-renderD-<id>.img and amdgpu-dmabuf_<id>.img: same header, other messages."""
    node = amdgpu_pb2.CriuRenderNode(gpu_id=1, id=2, drm_render_minor=128, num_of_bos=0)
    assert amdgpu_pb2.CriuRenderNode.FromString(_read_plugin_image(_write_plugin_image(
        node.SerializeToString()))) == node
    assert _write_plugin_image(amdgpu_pb2.CriuDmabufNode(gem_handle=9).SerializeToString()) == (
        b"\x02\x00\x00\x00\x00\x00\x00\x00\x08\x09")


def test_pages_image_header_is_the_sum_of_that_gpus_bo_sizes() -> None:
    """amdgpu-pages-<id>-<gpu_id %04x>.img: header = total size of the GPU's BOs, then their bytes."""
    gpu_id = 0x5F3A
    sizes = [4096, 3 * 4096, 4096]
    contents = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    image = _write_plugin_image(b"".join(contents))
    name = f"amdgpu-pages-{17}-{gpu_id:04x}.img"
    assert name == "amdgpu-pages-17-5f3a.img"
    assert SIZE_T.unpack_from(image)[0] == sum(sizes)
    body = _read_plugin_image(image)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    assert [body[o:o + s] for o, s in zip(offsets, sizes)] == contents


def test_framing_reader_rejects_a_short_file() -> None:
    """The header promises more bytes than the file holds: an error, not a short message."""
    image = _write_plugin_image(_kfd_image().SerializeToString())
    with pytest.raises(ValueError, match="header says"):
        _read_plugin_image(image[:-1])
    with pytest.raises(ValueError, match="8-byte header"):
        _read_plugin_image(image[:5])

