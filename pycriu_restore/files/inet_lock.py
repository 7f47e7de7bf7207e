"""The tree-wide part of inet sockets: --tcp-established, the network lock, and the release.

files/inet.py makes each socket inside the task that holds it. Three things need the whole
tree and happen in the orchestrator, in this order (CRIU: criu/cr-restore.c, criu/net.c,
criu/sk-tcp.c, criu/pie/restorer.c ``rst_tcp_socks_all``):

    PREFLIGHT   ConnectionLock.for_plan: an ESTABLISHED TCP connection without
                --tcp-established is refused (exit 3), as CRIU's "Connected TCP socket in
                image"; a connection whose peer is outside the tree needs the lock, so nft
                must be there (exit 4 otherwise)
    before FORK lock(): an nftables table drops every packet of the connections, both ways
    FORK        each task rebuilds its connections in repair mode: silent, nothing is sent
    RESUME      release(), once every task is restored: unlock (our table, and the lock a
                CRIU dump on this host left behind), then for every inet socket, reached
                with pidfd_getfd, files/inet.py finish_socket: repair off (one window probe),
                the never-sent data, the dumped SO_REUSEADDR
    on failure  unlock(); the half-made sockets die with their tasks, silently (repair mode)

Why a lock, when repaired sockets send nothing: a peer *outside* the tree keeps sending
(retransmissions, keepalives). Until the restored socket exists, this host answers each of
those segments with a reset, and the peer drops the connection. CRIU's dump locks each
connection and leaves the lock in place for its restore to remove; images restored on
another host, or after the dump's lock was removed, need one of their own for the restore's
duration. This is it.

Why nftables: one table, created and deleted in one atomic ``nft -f`` each, named for this
restore (``inet pycrestore-<pid>``), so nothing is left half-removed and nothing of anyone
else is touched; CRIU's own nftables lock is the same shape (criu/netfilter.c). It needs the
``nft`` command (Debian package ``nftables``). A network namespace of the tree's own was the
other way, and is not taken: the restored tree must be reachable where it was (tcpecho is
checked by a fresh connection to 127.0.0.1:41100 from the host), and CRIU restores a tree
that had the host's namespace in the host's namespace.

Without nft, connections whose two ends are both in the tree are restored without a lock:
both stay silent in repair mode until release, and nobody else sends to them. A connection
with an outside peer is then refused (exit 4) rather than restored into a reset.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

from pycriu_restore.errors import EXIT_ENVIRONMENT, EXIT_RESTORE, PycrestoreError
from pycriu_restore.files.inet import InetSocket, InetSocketFd
from pycriu_restore.linux import pidfd
from pycriu_restore.plan.errors import UnsupportedFeature

log = logging.getLogger("pycrestore")

# inventory.img network_lock_method (CRIU's enum network_lock_method, criu/include/cr_options.h).
NETWORK_LOCK_IPTABLES = 0
NETWORK_LOCK_NFTABLES = 1
NETWORK_LOCK_SKIP = 2
# soccr/soccr.h SOCCR_MARK: packets CRIU itself sends carry it and pass its lock.
SOCCR_MARK = 0xC114
_NFT_TIMEOUT_S = 30


class NetworkLockUnavailable(PycrestoreError):
    """The connections need a network lock and this machine cannot install one."""

    exit_code = EXIT_ENVIRONMENT


class NetworkLockFailed(PycrestoreError):
    """nft refused the lock (before anything was forked)."""

    exit_code = EXIT_ENVIRONMENT


class ConnectionReleaseFailed(PycrestoreError):
    """A restored socket could not be put in its final state (the tree is then killed)."""

    exit_code = EXIT_RESTORE


@dataclass(frozen=True)
class HeldSocket:
    """An inet socket and the task/fd that holds it (the first holder, if several do)."""

    pid: int  # checkpointed pid
    spec: InetSocketFd

    @property
    def sock(self) -> InetSocket:
        return self.spec.sock

    @property
    def where(self) -> str:
        return f"pid {self.pid} fd {self.spec.fd}"


class ConnectionLock:
    """Acquire/release pair around the part of a restore where connections are half-made:
    ``lock()`` before the first fork, ``release()`` once every task is restored, ``unlock()``
    on the failure path (harmless after release, and twice)."""

    def __init__(self, sockets: list[HeldSocket], outside_peer: list[HeldSocket], nft: str | None,
                 dump_lock_method: int, dump_run_id: str) -> None:
        self.sockets = sockets  # every inet socket of the tree, one per FileEntry id
        self.connections = [h for h in sockets if h.sock.is_connection]
        self.outside_peer = outside_peer
        self._nft = nft
        self._dump_lock_method = dump_lock_method
        self._dump_run_id = dump_run_id
        self.table = f"pycrestore-{os.getpid()}"
        self._locked = False  # our table exists

    # --- PREFLIGHT -------------------------------------------------------------------------

    @classmethod
    def for_plan(cls, plan, images, tcp_established: bool) -> ConnectionLock:
        """Collect the plan's inet sockets and check that its connections may be restored.

        Raises UnsupportedFeature (exit 3) naming the first connection (and the count) without
        ``tcp_established``; NetworkLockUnavailable (exit 4) if a connection has a peer outside
        the tree and there is no nft. Changes nothing.
        """
        sockets: list[HeldSocket] = []
        seen: set[int] = set()
        for task in plan.tasks:
            for spec in task.files:
                if isinstance(spec, InetSocketFd) and spec.file_id not in seen:
                    seen.add(spec.file_id)
                    sockets.append(HeldSocket(task.pid, spec))
        connections = [h for h in sockets if h.sock.is_connection]
        if connections and not tcp_established:
            first = connections[0]
            more = f"; and {len(connections) - 1} more" if len(connections) > 1 else ""
            raise UnsupportedFeature("files.img", f"{first.where}: {first.sock.describe()} in state ESTABLISHED: "
                                                  f"restored only with --tcp-established{more}")
        ends = {_tuple(h.sock) for h in connections}
        outside = [h for h in connections if _tuple(h.sock, reverse=True) not in ends]
        nft = shutil.which("nft")
        if outside and nft is None:
            h = outside[0]
            raise NetworkLockUnavailable(
                f"{h.where}: {h.sock.describe()}: its peer is not in the images, so its packets must be "
                f"dropped while it is restored (else this host resets it), and there is no nft command for "
                f"that lock (Debian package nftables)")
        inventory = images.inventory
        method = inventory.network_lock_method if inventory.HasField("network_lock_method") else NETWORK_LOCK_IPTABLES
        return cls(sockets, outside, nft, method, inventory.dump_criu_run_id)

    # --- before FORK -----------------------------------------------------------------------

    def lock(self) -> None:
        """Drop every packet of the connections, both ways, in both hooks (no-op without any,
        or without nft when every peer is in the tree: see the module docstring)."""
        if not self.connections:
            return
        if self._nft is None:
            log.info("no nft: %d connection(s) restored without a network lock (both ends of each are "
                     "in the tree and stay silent in repair mode until the end)", len(self.connections))
            return
        rules = []
        for h in self.connections:
            for src, sport, dst, dport in (_tuple(h.sock), _tuple(h.sock, reverse=True)):
                ip = "ip" if ipaddress.ip_address(src).version == 4 else "ip6"
                rules.append(f"{ip} saddr {src} tcp sport {sport} {ip} daddr {dst} tcp dport {dport} drop")
        body = "\n".join(f"\t\t{r}" for r in dict.fromkeys(rules))
        script = (f"table inet {self.table} {{\n"
                  f"\tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n{body}\n\t}}\n"
                  f"\tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n{body}\n\t}}\n"
                  f"}}\n")
        self._run_nft(script, "lock")
        self._locked = True
        log.info("network locked: nft table inet %s drops the packets of %d TCP socket(s)", self.table,
                 len(self.connections))

    # --- RESUME ----------------------------------------------------------------------------

    def release(self, pids: dict[int, int]) -> None:
        """Every task is restored (stopped, not yet detached): unlock the network, then put every
        inet socket in its final state (files/inet.py finish_socket). ``pids`` maps the
        checkpointed pids to ours (they differ under --pid-ns).

        CRIU's order: the network is unlocked before repair mode ends, so that the window
        probe each connection sends on leaving it reaches the peer.
        """
        from pycriu_restore.files import inet

        self.unlock()
        if self.connections:
            self._remove_dump_lock()
        for h in self.sockets:
            try:
                fd = pidfd.getfd(pids[h.pid], h.spec.fd)
            except OSError as err:
                raise ConnectionReleaseFailed(f"{h.where}: {h.sock.describe()}: pidfd_getfd: {err.strerror}") from err
            try:
                inet.finish_socket(fd, h.sock)
            except OSError as err:
                step = "leaving TCP repair mode" if h.sock.is_connection else "setting SO_REUSEADDR"
                raise ConnectionReleaseFailed(f"{h.where}: {h.sock.describe()}: {step}: "
                                              f"{err.strerror or err}") from err
            finally:
                os.close(fd)

    def unlock(self) -> None:
        """Delete our table if it exists. Never raises: it runs on failure paths too."""
        if not self._locked:
            return
        try:
            self._run_nft(f"delete table inet {self.table}\n", "unlock")
            self._locked = False
        except NetworkLockFailed as err:
            log.warning("%s (delete it with: nft delete table inet %s)", err, self.table)

    def _remove_dump_lock(self) -> None:
        """Remove what ``criu dump --tcp-established`` left on this host for these connections
        (CRIU's network_unlock at the end of its restore); nothing if the images came from
        elsewhere. Failures are not errors: the rules are simply not there."""
        if self._dump_lock_method == NETWORK_LOCK_NFTABLES and self._nft and self._dump_run_id:
            table = f"CRIU-{self._dump_run_id}"
            listed = subprocess.run([self._nft, "list", "table", "inet", table], capture_output=True, text=True,
                                    timeout=_NFT_TIMEOUT_S)
            if listed.returncode == 0:
                self._run_nft(f"delete table inet {table}\n", "remove the dump's lock")
                log.info("removed the dump's network lock: nft table inet %s", table)
        elif self._dump_lock_method == NETWORK_LOCK_IPTABLES:
            # CRIU's IPTABLES_CONN_CMD (criu/netfilter.c): per connection, INPUT from the peer
            # and OUTPUT to it; deleted the same way as criu's restore does.
            for h in self.connections:
                src, sport, dst, dport = _tuple(h.sock)
                tool = shutil.which("iptables" if ipaddress.ip_address(src).version == 4 else "ip6tables")
                if tool is None:
                    return
                for chain, (s, sp, d, dp) in (("INPUT", (dst, dport, src, sport)), ("OUTPUT", (src, sport, dst, dport))):
                    subprocess.run([tool, "-w", "-t", "filter", "-D", chain, "--protocol", "tcp", "-m", "mark", "!",
                                    "--mark", str(SOCCR_MARK), "--source", s, "--sport", str(sp), "--destination", d,
                                    "--dport", str(dp), "-j", "DROP"], capture_output=True, timeout=_NFT_TIMEOUT_S)

    def _run_nft(self, script: str, what: str) -> None:
        assert self._nft is not None, "_run_nft: no nft"
        try:
            done = subprocess.run([self._nft, "-f", "-"], input=script, capture_output=True, text=True,
                                  timeout=_NFT_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise NetworkLockFailed(f"network {what}: {self._nft}: {err}") from err
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise NetworkLockFailed(f"network {what}: nft exited with {done.returncode}: {first}")


def _tuple(sk: InetSocket, reverse: bool = False) -> tuple[str, int, str, int]:
    """(src, sport, dst, dport) of a connection as the packets carry it; an IPv4-mapped IPv6
    address travels as IPv4 (CRIU does the same)."""
    src, dst = _wire(sk.family, sk.src_addr), _wire(sk.family, sk.dst_addr)
    if reverse:
        return dst, sk.dst_port, src, sk.src_port
    return src, sk.src_port, dst, sk.dst_port


def _wire(family: int, addr: str) -> str:
    if family == socket.AF_INET6:
        mapped = ipaddress.IPv6Address(addr).ipv4_mapped
        if mapped is not None:
            return str(mapped)
    return str(ipaddress.ip_address(addr))
