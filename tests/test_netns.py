"""A process in a network namespace of its own, checkpointed by upstream CRIU 4.2 during the
test, restored by pycrestore with its namespace (docs/netns.md), and reached over the veth.

The test builds what a container runtime would: ``unshare --net`` runs a small TCP echo
server in a new network namespace; a veth pair joins it to ours (``pcrnh0`` here, ``eth0``
there), with 10.200.77.1/24 and 10.200.77.2/24 and a default route inside. CRIU dumps it
with ``--external veth[eth0]:pcrnh0`` and its nftables network lock; pycrestore restores the
namespace (lo, the veth with its ifindex and MAC, the address, the routes, the rules, the
sysctls), and a TCP echo from our address to the restored one passes through the veth.
Only this machine's own veth carries traffic. Afterwards the tree is killed by pid and the
namespace and the veth are gone.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycriu_restore.images import ImageSet
from pycriu_restore.plan.errors import UnsupportedFeature
from pycriu_restore.plan.netns import read_net_namespace
from realprogs import Dumped, dumped_program, link_exists, require_program, restored, wait_for, wait_link_gone

PID = 49000
HOST_LINK, NS_LINK = "pcrnh0", "eth0"
HOST_ADDR, NS_ADDR, PREFIX = "10.200.77.1", "10.200.77.2", 24
PORT = 7777

_ECHO = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT}))
s.listen(8)
open("ready", "w").write("1")
while True:
    c, _ = s.accept()
    c.sendall(c.recv(4096))
    c.close()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _wire(workdir: Path) -> None:
    """The veth pair, its addresses and the route inside, as a runtime's network setup would."""
    _ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", NS_LINK, "netns", str(PID))
    inside = ["nsenter", "-t", str(PID), "-n", "ip"]
    for args in (["link", "set", "lo", "up"], ["addr", "add", f"{NS_ADDR}/{PREFIX}", "dev", NS_LINK],
                 ["link", "set", NS_LINK, "up"], ["route", "add", "default", "via", HOST_ADDR]):
        subprocess.run([*inside, *args], check=True, capture_output=True, timeout=10)
    _host_side_up()
    assert _echo(b"before the dump") == b"before the dump"


def _host_side_up() -> None:
    _ip("addr", "add", f"{HOST_ADDR}/{PREFIX}", "dev", HOST_LINK)
    _ip("link", "set", HOST_LINK, "up")


def _echo(data: bytes) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((NS_ADDR, PORT), timeout=3) as c:
                c.sendall(data)
                return c.recv(4096)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the veth's carrier comes up a moment after both ends are up


@pytest.fixture(scope="module")
def netns_echo() -> Dumped:
    require_program("unshare", "nsenter", "ip")
    assert not link_exists(HOST_LINK), f"{HOST_LINK} exists before the test: a leftover"
    try:
        with dumped_program("netns-echo", PID, ["unshare", "--net", "--", sys.executable, "-c", _ECHO],
                            ready=lambda w: (w / "ready").exists(), prepare=_wire,
                            dump_options=(f"--external=veth[{NS_LINK}]:{HOST_LINK}", "--network-lock=nftables")
                            ) as dumped:
            wait_link_gone(HOST_LINK)  # the namespace died with the dumped task
            yield dumped
    finally:
        if link_exists(HOST_LINK):
            _ip("link", "del", HOST_LINK)


def test_netns_images_are_read(netns_echo: Dumped) -> None:
    plan = read_net_namespace(ImageSet.open(netns_echo.images), (f"veth[{NS_LINK}]:{HOST_LINK}",))
    assert plan is not None
    assert [(link.name, link.kind, link.host_peer) for link in plan.links] == [
        ("lo", "loopback", None), (NS_LINK, "veth", HOST_LINK)]
    summaries = [m.summary for m in plan.addresses + plan.routes]
    assert f"{NS_ADDR}/{PREFIX} dev 2" in summaries
    assert any(s.startswith(f"default/0 via {HOST_ADDR}") for s in summaries)
    assert plan.nftables is None  # only CRIU's own lock table was in nftables-N.img


def test_netns_veth_without_external_is_refused(netns_echo: Dumped) -> None:
    with pytest.raises(UnsupportedFeature, match=r"veth\[eth0\]:HOSTNAME"):
        read_net_namespace(ImageSet.open(netns_echo.images))


def test_netns_echo_through_restored_veth(netns_echo: Dumped) -> None:
    try:
        with restored(netns_echo, f"--external=veth[{NS_LINK}]:{HOST_LINK}") as result:
            assert result.returncode == 0, result.stderr
            assert Path(f"/proc/{PID}/ns/net").resolve() != Path("/proc/self/ns/net").resolve()
            assert link_exists(HOST_LINK), "the host side of the veth was not made"
            inside = subprocess.run(["nsenter", "-t", str(PID), "-n", "ip", "-o", "addr", "show", "dev", NS_LINK],
                                    capture_output=True, text=True, timeout=10).stdout
            assert f"{NS_ADDR}/{PREFIX}" in inside
            _host_side_up()  # the host side is the caller's to configure, as with CRIU
            assert _echo(b"after the restore") == b"after the restore"
        wait_link_gone(HOST_LINK)  # the tree is killed: its namespace and the veth go with it
    finally:
        if link_exists(HOST_LINK):
            _ip("link", "del", HOST_LINK)


def test_netns_taken_host_name_is_refused(netns_echo: Dumped) -> None:
    _ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", HOST_LINK + "p")  # a name taken here
    try:
        with restored(netns_echo, f"--external=veth[{NS_LINK}]:{HOST_LINK}") as result:
            assert result.returncode == 4, result.stderr
            assert HOST_LINK in result.stderr and "exists" in result.stderr
            assert not Path(f"/proc/{PID}").exists()
    finally:
        _ip("link", "del", HOST_LINK)
    wait_for("no leftover", lambda: not link_exists(HOST_LINK) and not link_exists(HOST_LINK + "p"))


def test_netns_with_pid_ns(netns_echo: Dumped, tmp_path: Path) -> None:
    """--pid-ns and a network namespace together: the namespace's init is made first, the
    tree's root is cloned into both new namespaces, and the echo still passes."""
    import os
    import signal

    from conftest import pid_max_at_least, wait_gone

    pidfile = tmp_path / "root.pid"
    init = None
    try:
        with pid_max_at_least(65536):
            result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(netns_echo.images),
                                     "-d", "--pid-ns", "--pidfile", str(pidfile),
                                     f"--external=veth[{NS_LINK}]:{HOST_LINK}"],
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            root = int(pidfile.read_text())
            init = _ns_init(root)
            assert _nspid(root) == [root, PID], "the root is not PID in a pid namespace of its own"
            assert Path(f"/proc/{root}/ns/net").resolve() != Path("/proc/self/ns/net").resolve()
            assert Path(f"/proc/{root}/ns/pid").resolve() != Path("/proc/self/ns/pid").resolve()
            _host_side_up()
            assert _echo(b"pid and net namespaces") == b"pid and net namespaces"
    finally:
        if init is not None:
            os.kill(init, signal.SIGKILL)  # the pid namespace's init: every task in it goes too
            assert wait_gone(init)
        wait_link_gone(HOST_LINK)
        if link_exists(HOST_LINK):
            _ip("link", "del", HOST_LINK)


def _nspid(pid: int) -> list[int]:
    """The task's pid in each pid namespace it is in, ours first (proc(5): NSpid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(n) for n in line.split()[1:]]
    raise AssertionError(f"/proc/{pid}/status has no NSpid")


def _ns_init(pid: int) -> int:
    """Our pid of the init (pid 1) of ``pid``'s pid namespace."""
    import os

    ns = os.readlink(f"/proc/{pid}/ns/pid")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns and _nspid(int(entry))[-1] == 1:
                    return int(entry)
            except (OSError, AssertionError):
                continue
    raise AssertionError(f"no init found for the pid namespace of {pid}")
