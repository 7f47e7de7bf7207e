"""The dumps ``ip addr save``, ``ip route save`` and ``ip rule save`` write, which CRIU keeps
as ifaddr-N.img, route-N.img, route6-N.img and rule-N.img (criu/net.c dump_ifaddr, dump_route,
dump_rule run ``ip`` with the image as its stdout).

Layout (iproute2 ip/ipaddress.c ipadd_save_prep, ip/iproute.c save_route_prep,
ip/iprule.c save_rule_prep): one 32-bit magic word in host byte order, then the netlink
messages of the kernel's dump reply, each padded to 4 bytes (NLMSG_ALIGN):

    +-------+----------------------------------+----------------------------------+---
    | magic | nlmsghdr (16) | ifaddrmsg | attrs | nlmsghdr (16) | ifaddrmsg | attrs | ...
    +-------+----------------------------------+----------------------------------+---

``ip ... restore`` replays each message as a request with NLM_F_REQUEST | NLM_F_CREATE |
NLM_F_ACK and takes EEXIST as success; pycrestore does the same (netns/namespace.py). This
module only splits and checks; pyroute2's message classes decode each message so that a
malformed one is found before anything is created.

pyroute2 is imported only when a dump holds a message: importing it takes ~100 ms, more than
a whole small restore, and most checkpoints have no network namespace of their own.
"""

from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass

from pycriu_restore.plan.errors import InconsistentImages

# The magic words iproute2 writes first (ip/ipaddress.c, ip/iproute.c, ip/iprule.c).
IFADDR_DUMP_MAGIC = 0x47361222
ROUTE_DUMP_MAGIC = 0x45311224
RULE_DUMP_MAGIC = 0x71706986

# <linux/rtnetlink.h>: the message types a dump of each kind holds.
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_NEWRULE = 32
# <linux/netlink.h>
NLMSG_HDRLEN = 16
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

MAX_DUMP_BYTES = 16 << 20  # an image larger than this is refused, not read
_NLMSGHDR = struct.Struct("<IHHII")  # len, type, flags, seq, pid


@dataclass(frozen=True)
class DumpKind:
    """What one kind of ``ip save`` dump holds."""

    magic: int
    msg_type: int
    message: str  # pyroute2 message class, "module:class" (imported on the first message)

    def message_class(self) -> type:
        module, _, name = self.message.partition(":")
        return getattr(importlib.import_module(module), name)


ADDRESSES = DumpKind(IFADDR_DUMP_MAGIC, RTM_NEWADDR, "pyroute2.netlink.rtnl.ifaddrmsg:ifaddrmsg")
ROUTES = DumpKind(ROUTE_DUMP_MAGIC, RTM_NEWROUTE, "pyroute2.netlink.rtnl.rtmsg:rtmsg")
RULES = DumpKind(RULE_DUMP_MAGIC, RTM_NEWRULE, "pyroute2.netlink.rtnl.fibmsg:fibmsg")


@dataclass(frozen=True)
class RtnlMessage:
    """One message of a dump: its raw bytes (replayed as they are, flags aside) and the
    fields the plan and the restore order look at."""

    raw: bytes
    family: int
    ifindex: int  # addresses: ifa_index; routes: RTA_OIF (0 if none); rules: 0
    has_gateway: bool  # routes: RTA_GATEWAY (iproute2 restores these last)
    has_prefsrc: bool  # routes: RTA_PREFSRC
    dst_len: int  # routes and rules: rtm_dst_len
    summary: str  # for messages and docs: "10.200.7.2/24 dev 2"


def parse_dump(data: bytes, kind: DumpKind, image: str) -> tuple[RtnlMessage, ...]:
    """Split an ``ip save`` dump into its messages; raise InconsistentImages naming the image
    and the offset for a wrong magic word, a truncated message or a message of another type.
    An empty image (CRIU writes one when ``ip`` had nothing to say) holds no messages."""
    if not data:
        return ()
    if len(data) > MAX_DUMP_BYTES:
        raise InconsistentImages(image, f"{len(data)} bytes, more than the {MAX_DUMP_BYTES} accepted")
    if len(data) < 4:
        raise InconsistentImages(image, f"{len(data)} bytes: too short for the ip dump magic word")
    (magic,) = struct.unpack_from("<I", data)
    if magic != kind.magic:
        raise InconsistentImages(image, f"magic {magic:#x}, expected {kind.magic:#x} (an `ip save` dump)")
    out = []
    offset = 4
    while offset < len(data):
        if len(data) - offset < NLMSG_HDRLEN:
            raise InconsistentImages(image, f"offset {offset}: {len(data) - offset} bytes left, a netlink header is 16")
        length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < NLMSG_HDRLEN or offset + length > len(data):
            raise InconsistentImages(image, f"offset {offset}: message length {length}, {len(data) - offset} bytes left")
        if msg_type != kind.msg_type:
            raise InconsistentImages(image, f"offset {offset}: message type {msg_type}, expected {kind.msg_type}")
        raw = data[offset:offset + length]
        out.append(_describe(raw, kind, image, offset))
        offset += (length + 3) & ~3
    return tuple(out)


def _describe(raw: bytes, kind: DumpKind, image: str, offset: int) -> RtnlMessage:
    msg = kind.message_class()(raw)
    try:
        msg.decode()
    except Exception as err:  # noqa: BLE001 - pyroute2 raises assorted errors on bad input
        raise InconsistentImages(image, f"offset {offset}: cannot decode: {err}") from err
    family = msg["family"]
    if kind is ADDRESSES:
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        return RtnlMessage(raw, family, msg["index"], False, False, 0,
                           f"{addr}/{msg['prefixlen']} dev {msg['index']}")
    if kind is ROUTES:
        oif = msg.get_attr("RTA_OIF") or 0
        gateway = msg.get_attr("RTA_GATEWAY")
        dst = msg.get_attr("RTA_DST") or "default"
        via = f" via {gateway}" if gateway else ""
        return RtnlMessage(raw, family, oif, gateway is not None, msg.get_attr("RTA_PREFSRC") is not None,
                           msg["dst_len"], f"{dst}/{msg['dst_len']}{via} dev {oif} table {msg.get_attr('RTA_TABLE')}")
    return RtnlMessage(raw, family, 0, False, False, msg["dst_len"],
                       f"priority {msg.get_attr('FRA_PRIORITY') or 0} table {msg.get_attr('FRA_TABLE')}")


def as_request(message: RtnlMessage, seq: int, flags: int) -> bytes:
    """The message as a request: ``flags`` and ``seq`` in its header, the rest unchanged."""
    length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(message.raw)
    return _NLMSGHDR.pack(length, msg_type, flags, seq, 0) + message.raw[NLMSG_HDRLEN:]
