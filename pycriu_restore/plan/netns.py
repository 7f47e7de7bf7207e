"""The network namespace a checkpointed tree lives in, read from its images (no side effects).

CRIU dumps a network namespace when the tree's root lives in one other than criu's own
(inventory.root_ids.net_ns_id is criu's; ids-PID.img net_ns_id the task's). It is then
named by that id: netdev-ID.img, netns-ID.img, ifaddr-ID.img, route-ID.img, route6-ID.img,
rule-ID.img, nftables-ID.img or iptables-ID.img/ip6tables-ID.img. ``read_net_namespace``
turns them into a ``NetNamespacePlan`` that netns/namespace.py applies in CRIU's order
(criu/net.c prepare_net_ns_first_stage, restore_links, prepare_net_ns_second_stage):

    1. namespace sysctls: net.ipv4.conf.{all,default}, net.ipv6.conf.{all,default},
       net.unix.max_dgram_qlen, net.ipv4.ping_group_range       (netns-ID.img)
    2. links, each followed by its own conf sysctls               (netdev-ID.img)
    3. addresses, 4. routes (IPv4, then IPv6), 5. rules           (raw `ip save` dumps)
    6. firewall rules                                              (nftables-ID.img)

A veth whose peer was outside the checkpoint is re-created with its peer in the restoring
process's namespace, named as ``--external veth[IFNAME]:HOSTNAME`` says (CRIU's
veth_peer_info). Everything else CRIU can restore here (tun, macvlan, bridge, sit links,
iptables, conntrack, a namespace shared with other trees) is refused with exit 3, naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pycriu_restore.images import ImageSet
from pycriu_restore.images.kinds import kind_by_name
from pycriu_restore.netns import ipdump
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature

# criu/net.c devconfs4[], devconfs6[]: the order of the conf4/conf6 SysctlEntry lists.
DEVCONFS4 = (
    "accept_local", "accept_redirects", "accept_source_route", "arp_accept", "arp_announce", "arp_filter",
    "arp_ignore", "arp_notify", "bootp_relay", "disable_policy", "disable_xfrm", "force_igmp_version",
    "forwarding", "igmpv2_unsolicited_report_interval", "igmpv3_unsolicited_report_interval", "log_martians",
    "medium_id", "promote_secondaries", "proxy_arp", "proxy_arp_pvlan", "route_localnet", "rp_filter",
    "secure_redirects", "send_redirects", "shared_media", "src_valid_mark", "tag", "ignore_routes_with_linkdown",
    "drop_gratuitous_arp", "drop_unicast_in_l2_multicast",
)
DEVCONFS6 = (
    "accept_dad", "accept_ra", "accept_ra_defrtr", "accept_ra_from_local", "accept_ra_min_hop_limit",
    "accept_ra_mtu", "accept_ra_pinfo", "accept_ra_rt_info_max_plen", "accept_ra_rtr_pref", "accept_redirects",
    "accept_source_route", "autoconf", "dad_transmits", "disable_ipv6", "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na", "force_mld_version", "force_tllao", "forwarding", "hop_limit",
    "ignore_routes_with_linkdown", "keep_addr_on_down", "max_addresses", "max_desync_factor",
    "mldv1_unsolicited_report_interval", "mldv2_unsolicited_report_interval", "mtu", "ndisc_notify",
    "optimistic_dad", "proxy_ndp", "regen_max_retry", "router_probe_interval", "router_solicitation_delay",
    "router_solicitation_interval", "router_solicitations", "stable_secret", "suppress_frag_ndisc",
    "temp_prefered_lft", "temp_valid_lft", "use_oif_addrs_only", "use_optimistic", "use_tempaddr",
)
UNIX_CONFS = ("max_dgram_qlen",)  # criu/net.c unix_conf_entries[]
IPV4_SYSCTLS = ("ping_group_range",)  # criu/net.c ipv4_sysctl_entries[]

# images/proto/net.proto NdType, SysctlType
ND_LOOPBACK, ND_VETH = 1, 2
CTL_STR, CTL_32 = 5, 6
# <linux/if.h>: the link flags a request may set; the others (RUNNING, LOWER_UP, ...) are
# the kernel's to report. CRIU sends ifi_flags with ifi_change 0, which sets these the same.
IFF_UP, IFF_DEBUG, IFF_NOARP, IFF_PROMISC, IFF_ALLMULTI, IFF_MULTICAST = 0x1, 0x4, 0x80, 0x100, 0x200, 0x1000
SETTABLE_LINK_FLAGS = IFF_UP | IFF_DEBUG | IFF_NOARP | IFF_PROMISC | IFF_ALLMULTI | IFF_MULTICAST
IFNAMSIZ = 16  # <linux/if.h>, with the NUL

MAX_FIREWALL_BYTES = 16 << 20
NFT_LOCK_TABLE_BYTES = 32  # criu/net.c: char table[32], NUL included, for "inet CRIU-<run id>"
_EXTERNAL_VETH = re.compile(r"^veth\[([^\]]{1,15})\]:([^@]{1,15})(?:@(.+))?$")


@dataclass(frozen=True)
class Sysctl:
    """One /proc/sys/net value to write: ``path`` below /proc/sys, ``value`` as written."""

    path: str  # "net/ipv4/conf/eth0/forwarding"
    value: str


@dataclass(frozen=True)
class NetLink:
    """One link of the namespace, created (veth) or configured (loopback) with its dumped
    ifindex, so that the address and route dumps, which name links by index, still fit."""

    ifindex: int
    name: str
    kind: str  # "loopback" or "veth"
    mtu: int
    flags: int  # the settable ones (SETTABLE_LINK_FLAGS)
    address: bytes | None  # the link-layer address
    host_peer: str | None  # veth: the peer's name in the restoring namespace (--external)
    sysctls: tuple[Sysctl, ...]  # net.ipv4/ipv6.conf.NAME.*, after the link exists


@dataclass(frozen=True)
class NetNamespacePlan:
    """Everything netns/namespace.py applies, in its order."""

    ns_id: int
    sysctls: tuple[Sysctl, ...]
    links: tuple[NetLink, ...]
    addresses: tuple[ipdump.RtnlMessage, ...]
    routes: tuple[ipdump.RtnlMessage, ...]  # route-ID.img then route6-ID.img
    rules: tuple[ipdump.RtnlMessage, ...]
    nftables: str | None  # `nft -f` input, CRIU's network-lock table taken out; None if none


def parse_external_veths(externals: tuple[str, ...]) -> dict[str, str]:
    """``--external veth[IFNAME]:HOSTNAME`` -> {IFNAME: HOSTNAME}; other --external keys are
    not this module's. ``HOSTNAME@BRIDGE`` (attach the host side to a bridge) is refused."""
    out = {}
    for spec in externals:
        if not spec.startswith("veth["):
            continue
        m = _EXTERNAL_VETH.match(spec)
        if m is None:
            raise UnsupportedFeature("--external", f"{spec!r}: expected veth[IFNAME]:HOSTNAME, names of 1-15 chars")
        if m.group(3) is not None:
            raise UnsupportedFeature("--external", f"{spec!r}: attaching the host side to a bridge (@{m.group(3)}) "
                                     "is not restored")
        out[m.group(1)] = m.group(2)
    return out


def tree_net_ns(images: ImageSet) -> int | None:
    """The id of the network namespace the tree lives in, or None if it is the dumper's own.

    Every live task must be in the same one: a tree spread over several namespaces (CRIU
    restores it, creating each in its first task) is refused."""
    root_ns = images.inventory.root_ids.net_ns_id if images.inventory.HasField("root_ids") else 0
    found: dict[int, int] = {}
    for task in images.pstree():
        if not task.threads or not images.exists(f"ids-{task.pid}.img"):
            continue  # a zombie: no ids image
        ids = images.ids(task.pid)
        if ids.net_ns_id:
            found.setdefault(ids.net_ns_id, task.pid)
    ids_seen = sorted(found)
    if len(ids_seen) > 1:
        raise UnsupportedFeature(f"ids-{found[ids_seen[1]]}.img",
                                 f"net_ns_id {ids_seen[1]}, task {found[ids_seen[0]]} is in {ids_seen[0]}: "
                                 "a tree in several network namespaces is not restored")
    if not ids_seen or ids_seen[0] == root_ns:
        return None
    return ids_seen[0]


def restored_net_namespaces(images: ImageSet) -> frozenset[int]:
    """The network namespace ids this restore makes (those with a netns-ID.img): tasks and
    sockets in them are accepted by plan/refusals.py."""
    return frozenset(i for i in _task_net_ns_ids(images) if images.exists(f"netns-{i}.img"))


def _task_net_ns_ids(images: ImageSet) -> set[int]:
    # A zombie has no ids image (plan/build.py): only live tasks name a namespace.
    return {images.ids(t.pid).net_ns_id for t in images.pstree() if t.threads and images.exists(f"ids-{t.pid}.img")}


def read_net_namespace(images: ImageSet, externals: tuple[str, ...] = ()) -> NetNamespacePlan | None:
    """The plan for the tree's own network namespace, or None when it has none."""
    ns_id = tree_net_ns(images)
    if ns_id is None:
        return None
    netns_img = f"netns-{ns_id}.img"
    if not images.exists(netns_img):
        raise UnsupportedFeature(f"ids-{images.pstree()[0].pid}.img",
                                 f"net_ns_id {ns_id} has no {netns_img}: an external network namespace "
                                 "(criu dump --external net[...]) is not restored")
    netns_entries = images.image(netns_img, kind=kind_by_name("NETNS")).entries
    if len(netns_entries) != 1:
        raise InconsistentImages(netns_img, f"{len(netns_entries)} records, expected 1")
    netns = netns_entries[0]
    for kind in ("IPTABLES", "IP6TABLES", "NETNF_CT", "NETNF_EXP"):
        name = kind_by_name(kind).file_names[0] % ns_id  # type: ignore[union-attr]
        if images.exists(name) and images.path(name).stat().st_size:
            raise UnsupportedFeature(name, "iptables rules and conntrack entries of a network namespace are "
                                     "not restored (dump with --network-lock nftables)")
    veths = parse_external_veths(externals)
    sysctls = _netns_sysctls(netns, netns_img)
    links = tuple(_link(e, f"netdev-{ns_id}.img", veths, netns)
                  for e in images.image(f"netdev-{ns_id}.img", kind=kind_by_name("NETDEV")).entries)
    if not any(link.kind == "loopback" for link in links):
        raise InconsistentImages(f"netdev-{ns_id}.img", "no loopback link: every network namespace has one")
    ifindexes = {link.ifindex for link in links}
    addresses = _dump(images, f"ifaddr-{ns_id}.img", ipdump.ADDRESSES)
    routes = _dump(images, f"route-{ns_id}.img", ipdump.ROUTES) + _dump(images, f"route6-{ns_id}.img", ipdump.ROUTES)
    for image, msgs in ((f"ifaddr-{ns_id}.img", addresses), (f"route-{ns_id}.img", routes)):
        for msg in msgs:
            if msg.ifindex and msg.ifindex not in ifindexes:
                raise InconsistentImages(image, f"{msg.summary}: no link with ifindex {msg.ifindex} in "
                                         f"netdev-{ns_id}.img (has {sorted(ifindexes)})")
    rules = _dump(images, f"rule-{ns_id}.img", ipdump.RULES)
    return NetNamespacePlan(ns_id=ns_id, sysctls=sysctls, links=links, addresses=addresses, routes=routes,
                            rules=rules, nftables=_nftables(images, f"nftables-{ns_id}.img"))


def _dump(images: ImageSet, name: str, kind: ipdump.DumpKind) -> tuple[ipdump.RtnlMessage, ...]:
    if not images.exists(name):
        return ()
    path = images.path(name)
    if path.stat().st_size > ipdump.MAX_DUMP_BYTES:
        raise InconsistentImages(name, f"{path.stat().st_size} bytes, more than the {ipdump.MAX_DUMP_BYTES} accepted")
    return ipdump.parse_dump(path.read_bytes(), kind, name)


def _nftables(images: ImageSet, name: str) -> str | None:
    """The `nft -f` input of nftables-ID.img without CRIU's own network-lock table.

    CRIU dumps the ruleset while its lock (``table inet CRIU-<dump run id>``, criu/net.c
    nftables_lock_network) is in place, restores it with the tasks still stopped and deletes
    that table at network-unlock, when the tasks run. pycrestore creates no task in the
    namespace before it is configured, so it leaves the lock table out instead."""
    if not images.exists(name):
        return None
    path = images.path(name)
    if path.stat().st_size > MAX_FIREWALL_BYTES:
        raise InconsistentImages(name, f"{path.stat().st_size} bytes, more than the {MAX_FIREWALL_BYTES} accepted")
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as err:
        raise InconsistentImages(name, f"not text (nft ruleset): {err}") from err
    run_id = images.inventory.dump_criu_run_id
    if run_id:  # criu/netfilter.c nftables_get_table: snprintf into char table[32]
        text = _drop_table(text, "table " + f"inet CRIU-{run_id}"[:NFT_LOCK_TABLE_BYTES - 1])
    return text if text.strip() else None


def _drop_table(text: str, header: str) -> str:
    """``text`` without the block that starts with ``header {`` (nft's own listing layout:
    the table's closing brace alone on its line)."""
    start = text.find(header + " {")
    if start < 0:
        return text
    end = text.find("\n}", start)
    end = len(text) if end < 0 else end + 2
    return text[:start] + text[end:]


def _sysctl_list(entries, names: tuple[str, ...], base: str, image: str, where: str,
                 defaults=None) -> list[Sysctl]:
    """The SysctlEntry list ``entries`` as writes below ``base``, in CRIU's order (net_conf_op):
    values absent at dump (no iarg/sarg) are skipped, so are those equal to the namespace
    default (``defaults``; mtu excepted: disable_ipv6 may change it), accept_redirects last
    (it must follow forwarding)."""
    if len(entries) > len(names):
        raise UnsupportedFeature(image, f"{where}: {len(entries)} sysctls, pycrestore knows {len(names)} "
                                 "(a newer CRIU?)")
    out, last = [], []
    for i, entry in enumerate(entries):
        if entry.type == CTL_32:
            if not entry.HasField("iarg"):
                continue
            value = str(entry.iarg)
        elif entry.type == CTL_STR:
            if not entry.HasField("sarg"):
                continue
            value = entry.sarg
        else:
            raise InconsistentImages(image, f"{where}[{i}] ({names[i]}): sysctl type {entry.type}")
        if defaults is not None and i < len(defaults) and names[i] != "mtu" and _same(entry, defaults[i]):
            continue
        (last if names[i] == "accept_redirects" else out).append(Sysctl(f"{base}/{names[i]}", value))
    return out + last


def _same(a, b) -> bool:
    return a.type == b.type and a.HasField("iarg") == b.HasField("iarg") and a.iarg == b.iarg \
        and a.HasField("sarg") == b.HasField("sarg") and a.sarg == b.sarg


def _netns_sysctls(netns, image: str) -> tuple[Sysctl, ...]:
    """criu/net.c restore_netns_conf: all, then default, for IPv4 and IPv6; then unix, ipv4."""
    if netns.def_conf or netns.all_conf:
        raise UnsupportedFeature(image, "def_conf/all_conf: sysctls in the pre-3.x format are not restored")
    if netns.nsids:
        raise UnsupportedFeature(image, f"nsids = {len(netns.nsids)} entries: ids of other network namespaces "
                                 "are not restored")
    if netns.ext_key:
        raise UnsupportedFeature(image, f"ext_key = {netns.ext_key!r}: an external network namespace is not restored")
    out: list[Sysctl] = []
    out += _sysctl_list(netns.all_conf4, DEVCONFS4, "net/ipv4/conf/all", image, "all_conf4")
    out += _sysctl_list(netns.def_conf4, DEVCONFS4, "net/ipv4/conf/default", image, "def_conf4")
    out += _sysctl_list(netns.all_conf6, DEVCONFS6, "net/ipv6/conf/all", image, "all_conf6")
    out += _sysctl_list(netns.def_conf6, DEVCONFS6, "net/ipv6/conf/default", image, "def_conf6")
    out += _sysctl_list(netns.unix_conf, UNIX_CONFS, "net/unix", image, "unix_conf")
    out += _sysctl_list(netns.ipv4_sysctl, IPV4_SYSCTLS, "net/ipv4", image, "ipv4_sysctl")
    return tuple(out)


def _link(entry, image: str, veths: dict[str, str], netns) -> NetLink:
    """One netdev-ID.img entry; kinds other than loopback and an external veth are refused."""
    where = f"link {entry.name!r} (ifindex {entry.ifindex})"
    if not entry.name or len(entry.name) >= IFNAMSIZ or "/" in entry.name or entry.name in (".", ".."):
        raise InconsistentImages(image, f"{where}: not a link name")
    for field in ("tun", "macvlan", "sit"):
        if entry.HasField(field):
            raise UnsupportedFeature(image, f"{where}: {field} settings: not restored")
    if entry.HasField("master"):
        raise UnsupportedFeature(image, f"{where}: master = {entry.master}: a link enslaved to another "
                                 "(bridge) is not restored")
    if entry.conf:
        raise UnsupportedFeature(image, f"{where}: conf: sysctls in the pre-3.x format are not restored")
    host_peer = None
    if entry.type == ND_LOOPBACK:
        kind, defaults4, defaults6 = "loopback", None, None  # lo exists before the defaults are set (criu)
    elif entry.type == ND_VETH:
        kind, defaults4, defaults6 = "veth", netns.def_conf4, netns.def_conf6
        host_peer = veths.get(entry.name)
        if host_peer is None:
            raise UnsupportedFeature(image, f"{where}: a veth whose peer is outside the checkpoint: name the "
                                     f"peer with --external veth[{entry.name}]:HOSTNAME")
    else:
        raise UnsupportedFeature(image, f"{where}: link type {entry.type}: only loopback and veth are restored")
    sysctls = (_sysctl_list(entry.conf4, DEVCONFS4, f"net/ipv4/conf/{entry.name}", image, f"{where} conf4",
                            defaults4)
               + _sysctl_list(entry.conf6, DEVCONFS6, f"net/ipv6/conf/{entry.name}", image, f"{where} conf6",
                              defaults6))
    return NetLink(ifindex=entry.ifindex, name=entry.name, kind=kind, mtu=entry.mtu,
                   flags=entry.flags & SETTABLE_LINK_FLAGS,
                   address=bytes(entry.address) if entry.HasField("address") else None,
                   host_peer=host_peer, sysctls=tuple(sysctls))
