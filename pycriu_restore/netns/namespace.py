"""Make the tree's network namespace, configure it, and hold it until the tree lives in it.

Who holds what (CRIU creates the namespace in its root task and configures it from the
criu process through /proc/ROOT/ns/net; pycrestore's orchestrator does both itself, because
it already holds the root's creation in its hands):

    orchestrator                                  new network namespace
    ------------                                  ---------------------
    host_fd = open /proc/self/ns/net
    unshare(CLONE_NEWNET) ----------------------> exists; ns_fd = open /proc/self/ns/net
      sysctls, links (veth peer -> host_fd),      configured from inside: a netlink socket
      addresses, routes, rules, nft               belongs to the namespace it was made in
    setns(host_fd)  (back home)
    ...
    entered(): setns(ns_fd); clone3(root); setns(host_fd)  -> the root and its children live there
    close(): drop both fds; the tasks keep the namespace alive, and it (with its veth, whose
             host side goes with it) disappears with the last of them

Acquire with :meth:`NetNamespace.create`, release with :meth:`close` on every path: on a
failed restore, closing the fds of a namespace no task entered destroys it and its links.
The orchestrator is single-threaded here, and network namespaces are per thread anyway.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pycriu_restore.linux import namespaces
from pycriu_restore.netns import ipdump
from pycriu_restore.plan.netns import SETTABLE_LINK_FLAGS, NetLink, NetNamespacePlan, Sysctl
from pycriu_restore.restore.errors import EnvironmentMismatch, RestoreFailed

log = logging.getLogger("pycrestore")

NLMSG_ERROR, NLMSG_DONE = 2, 3  # <linux/netlink.h>
NLM_F_DUMP = 0x300
RTM_DELRULE, RTM_GETRULE = 33, 34  # <linux/rtnetlink.h>
_NLMSGERR = struct.Struct("<IHHIIi")  # nlmsghdr + the error's int
REPLAY_FLAGS = ipdump.NLM_F_REQUEST | ipdump.NLM_F_CREATE | ipdump.NLM_F_EXCL | ipdump.NLM_F_ACK
NFT_TIMEOUT_S = 30.0


class NetnsFailed(RestoreFailed):
    """A step of the namespace's configuration failed (exit 5)."""

    def __init__(self, step: str, cause: str) -> None:
        super().__init__(0, f"netns: {step}", cause)


@dataclass
class NetNamespace:
    """A configured network namespace no task lives in yet, seen from the orchestrator."""

    plan: NetNamespacePlan
    ns_fd: int
    host_fd: int

    @classmethod
    def create(cls, plan: NetNamespacePlan) -> NetNamespace:
        """Create the namespace and apply ``plan`` in CRIU's order; come back to our own.

        Raises EnvironmentMismatch when a host-side veth name is taken, NetnsFailed when
        the kernel refuses a step; in both cases nothing is left behind."""
        host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        ns_fd = -1
        try:
            for link in plan.links:  # before anything exists: a clear error, not EEXIST
                if link.host_peer is not None and os.path.exists(f"/sys/class/net/{link.host_peer}"):
                    raise EnvironmentMismatch(f"--external veth[{link.name}]:{link.host_peer}: a link named "
                                              f"{link.host_peer!r} exists here already")
            namespaces.unshare(namespaces.CLONE_NEWNET)
            try:
                ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                _configure(plan, host_fd)
            finally:
                namespaces.setns(host_fd, namespaces.CLONE_NEWNET)
        except BaseException:
            if ns_fd >= 0:
                os.close(ns_fd)
            os.close(host_fd)
            raise
        return cls(plan=plan, ns_fd=ns_fd, host_fd=host_fd)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The orchestrator inside the namespace for the block (the root's clone3): a child
        made there lives there, and so do all of its own children."""
        namespaces.setns(self.ns_fd, namespaces.CLONE_NEWNET)
        try:
            yield
        finally:
            namespaces.setns(self.host_fd, namespaces.CLONE_NEWNET)

    def close(self) -> None:
        for fd in (self.ns_fd, self.host_fd):
            if fd >= 0:
                os.close(fd)
        self.ns_fd = self.host_fd = -1


def _configure(plan: NetNamespacePlan, host_fd: int) -> None:
    """Apply the plan; the caller is inside the new namespace (criu/net.c order)."""
    for sysctl in plan.sysctls:  # prepare_net_ns_first_stage: restore_netns_conf
        _write_sysctl(sysctl)
    for link in plan.links:  # restore_links: each link, then its own conf
        _make_link(link, host_fd)
        for sysctl in link.sysctls:
            _write_sysctl(sysctl)
    with _rtnl_socket() as sock:  # prepare_net_ns_second_stage
        for msg in plan.addresses:
            _replay(sock, msg, "address")
        # iproute2 ip route restore: local routes, then local networks, then gateways
        # (ip/iproute.c restore_handler), so that each finds the one it depends on.
        for pass_ in range(3):
            for msg in plan.routes:
                if _route_pass(msg) == pass_:
                    _replay(sock, msg, "route")
        if plan.rules:
            # criu/net.c restore_ip_dump: drop the three rules a new namespace starts with
            # (kernel fib_default_rules_init), or the dumped ones would be added twice.
            _flush_rules(sock)
            for msg in plan.rules:
                _replay(sock, msg, "rule")
    if plan.nftables is not None:
        _nft(plan.nftables)


def _route_pass(msg: ipdump.RtnlMessage) -> int:
    if not msg.has_gateway and (not msg.has_prefsrc or not msg.dst_len):
        return 0
    if not msg.has_gateway and msg.has_prefsrc:
        return 1
    return 2


def _write_sysctl(sysctl: Sysctl) -> None:
    """Write one /proc/sys value of the namespace we are in, unless it already holds it."""
    path = f"/proc/sys/{sysctl.path}"
    try:
        with open(path) as f:
            if f.read().strip() == sysctl.value.strip():
                return
        with open(path, "w") as f:
            f.write(sysctl.value)
    except OSError as err:
        raise NetnsFailed("sysctl", f"{path} = {sysctl.value!r}: {err.strerror}") from err


def _make_link(link: NetLink, host_fd: int) -> None:
    """Configure lo, or create a veth with its dumped ifindex and its peer in our namespace."""

    ipr = IPRoute()
    try:
        attrs: dict[str, object] = {"mtu": link.mtu}
        if link.address is not None and link.kind != "loopback":
            attrs["address"] = ":".join(f"{b:02x}" for b in link.address)
        if link.kind == "loopback":
            ipr.link("set", index=link.ifindex, **attrs)
        else:
            ipr.link("add", index=link.ifindex, ifname=link.name, kind="veth",
                     peer={"ifname": link.host_peer, "net_ns_fd": host_fd}, **attrs)
        # Up (and promisc, noarp...) last, once mtu and address are set, as CRIU's ifi_flags.
        ipr.link("set", index=link.ifindex, flags=link.flags, change=SETTABLE_LINK_FLAGS)
    except NetlinkError as err:
        if err.code == errno.EEXIST and link.host_peer is not None:
            raise EnvironmentMismatch(f"--external veth[{link.name}]:{link.host_peer}: the name is taken") from err
        raise NetnsFailed("link", f"{link.kind} {link.name!r} (ifindex {link.ifindex}): {err}") from err
    finally:
        ipr.close()


@contextlib.contextmanager
def _rtnl_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)  # NETLINK_ROUTE
    try:
        sock.bind((0, 0))
        yield sock
    finally:
        sock.close()


_seq = [1000]


def _talk(sock: socket.socket, request: bytes) -> int:
    """Send one request, return the errno of its ack (0: done)."""
    _seq[0] += 1
    seq = _seq[0]
    request = request[:8] + struct.pack("<I", seq) + request[12:]
    sock.send(request)
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type, _flags, got_seq, _pid = struct.unpack_from("<IHHII", data, offset)
            if msg_type == NLMSG_ERROR and got_seq == seq:
                (code,) = struct.unpack_from("<i", data, offset + 16)
                return -code
            offset += max((length + 3) & ~3, 16)


def _replay(sock: socket.socket, msg: ipdump.RtnlMessage, what: str) -> None:
    """One dumped message as a NEW request; EEXIST is success (ip ... restore does the same:
    the kernel made lo's addresses, link routes and IPv6 link-local ones by itself)."""
    code = _talk(sock, ipdump.as_request(msg, 0, REPLAY_FLAGS))
    if code not in (0, errno.EEXIST):
        raise NetnsFailed(what, f"{msg.summary}: the kernel answered {errno.errorcode.get(code, code)} "
                          f"({os.strerror(code)})")


def _flush_rules(sock: socket.socket) -> None:
    """Delete every IPv4 rule the new namespace holds (criu: ip rule flush; ip rule del table
    local): each dumped rule sent back as RTM_DELRULE matches exactly that rule."""
    _seq[0] += 1
    # nlmsghdr + struct fib_rule_hdr (<linux/fib_rules.h>, 12 bytes), family AF_INET
    request = struct.pack("<IHHII", 16 + 12, RTM_GETRULE, ipdump.NLM_F_REQUEST | NLM_F_DUMP, _seq[0], 0)
    sock.send(request + struct.pack("<BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0))
    rules, done = [], False
    while not done:
        data = sock.recv(65536)
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type, _flags, _seq_got, _pid = struct.unpack_from("<IHHII", data, offset)
            if msg_type in (NLMSG_DONE, NLMSG_ERROR):
                done = True
                break
            if msg_type == ipdump.RTM_NEWRULE:
                rules.append(data[offset:offset + length])
            offset += max((length + 3) & ~3, 16)
    for raw in rules:
        request = struct.pack("<IHHII", len(raw), RTM_DELRULE, ipdump.NLM_F_REQUEST | ipdump.NLM_F_ACK, 0, 0)
        code = _talk(sock, request + raw[16:])
        if code not in (0, errno.ENOENT):
            raise NetnsFailed("rule", f"removing a default rule of the new namespace: {os.strerror(code)}")


def _nft(ruleset: str) -> None:
    """``nft -f -`` in the namespace we are in (criu/net.c restore_nftables)."""
    nft = shutil.which("nft")
    if nft is None:
        raise EnvironmentMismatch("nftables-N.img holds rules: restoring them needs nft (Debian: nftables)")
    done = subprocess.run([nft, "-f", "-"], input=ruleset, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    if done.returncode != 0:
        raise NetnsFailed("nftables", f"nft -f exited {done.returncode}: {done.stderr.strip()[:300]}")
