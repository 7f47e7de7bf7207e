"""Restore the criu-4.2-more creds and posixtimer workloads and check them with their verify.py.

creds dropped privileges before the dump (fsuid/fsgid 1000, groups, capabilities down to
CAP_NET_BIND_SERVICE with the bounding set, securebits 0xf, no_new_privs); posixtimer runs a
POSIX timer (id 0, 20 ms, signal 34) under a seccomp filter (uname -> EPERM). Both checks
run in our pid namespace and in a new one. Tampered copies of the images prove each field
is applied: the workload or /proc then shows the tampered value and verify.py fails.
Every test installs first, kills what it restored by pid and waits until /proc/PID is gone.
Runs as root; the pids (40200, 40400) need kernel.pid_max above 32768.
"""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import FIXTURES_MORE, kill_and_wait, pid_max_at_least, needs_fixtures_more
from pycriu_restore.images import dump_image, load_image
from packs import MORE, restore_cli

pytestmark = needs_fixtures_more

IMAGES = FIXTURES_MORE / "images"
PIDS = {"creds": 40200, "posixtimer": 40400}


@pytest.fixture(autouse=True)
def _pid_max():
    with pid_max_at_least(65536):
        yield
    for pid in PIDS.values():
        assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} is still in use after the test"


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


@pytest.mark.parametrize("pid_ns", [False, True], ids=["host-pids", "pid-ns"])
@pytest.mark.parametrize("name", sorted(PIDS))
def test_restore_and_verify(name, pid_ns, tmp_path):
    MORE.install(name)
    pidfile = tmp_path / "pid"
    result = restore_cli(IMAGES / name, pidfile, *(["--pid-ns"] if pid_ns else []))
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    init = int(result.stderr.split("init ")[1].split(")")[0]) if pid_ns else None
    try:
        if not pid_ns:
            assert pid == PIDS[name]
        check = MORE.verify(name, pid_for_ns=pid if pid_ns else None)
        assert check.returncode == 0 and check.stdout.startswith(f"PASS {name}"), check.stdout + check.stderr
        status = proc_status(pid)
        if name == "creds":
            assert (status["Uid"].split(), status["Groups"], status["CapBnd"], status["NoNewPrivs"]) == (
                ["0", "0", "0", "1000"], "100 1000", "0000000000000400", "1")
        else:
            assert (status["Seccomp"], status["Seccomp_filters"]) == ("2", "1")
    finally:
        kill_and_wait(pid)
    if init is not None:
        kill_and_wait(init)  # leaves with the restored task; by pid if it has not yet


def _tamper_groups(core):
    core.entries[0].thread_core.creds.groups[:] = [100]


def _tamper_interval(core):
    core.entries[0].tc.timers.posix[0].insec = 40_000_000


def _tamper_seccomp(core):
    core.entries[0].thread_core.ClearField("seccomp_mode")
    core.entries[0].thread_core.ClearField("seccomp_filter")


@pytest.mark.parametrize("name, tamper, shows", [
    ("creds", _tamper_groups, ("Groups", "100")),
    ("posixtimer", _tamper_interval, None),
    ("posixtimer", _tamper_seccomp, ("Seccomp", "0")),
], ids=["groups", "timer-interval", "no-seccomp"])
def test_tampered_field_is_applied(name, tamper, shows, tmp_path):
    """Each field reaches the task: a changed value shows in /proc and verify.py fails."""
    images = tmp_path / name
    shutil.copytree(IMAGES / name, images)
    core_path = images / f"core-{PIDS[name]}.img"
    core = load_image(core_path)
    tamper(core)
    core_path.write_bytes(dump_image(core))
    MORE.install(name)
    pidfile = tmp_path / "pid"
    result = restore_cli(images, pidfile)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        if shows is not None:
            assert proc_status(pid)[shows[0]] == shows[1]
        check = MORE.verify(name)
        assert check.returncode == 1 and check.stdout.startswith(f"FAIL {name}"), check.stdout + check.stderr
    finally:
        kill_and_wait(pid)
