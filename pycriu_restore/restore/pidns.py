"""``--pid-ns``: restore inside a new pid namespace, under a small init (as criu-ns does).

In a fresh pid namespace no pid is taken, so the checkpointed pids cannot collide with
anything running on the machine. The namespace's pid 1 is a forked copy of pycrestore that
does what an init must: make its mounts private, mount a /proc that shows the new namespace
(so ``nsenter -t PID -p -m`` sees the restored pids), reap orphans, and exit once the
restored root task is gone (a pid namespace dies with its init).

The restored tasks are created by the orchestrator itself after ``setns`` into the
namespace (only ``pid_for_children`` changes), so they stay its children and it can
wait for them; each task joins the init's mount namespace in restore/task.py.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass
from typing import NoReturn

from pycriu_restore.files import close_all_except
from pycriu_restore.linux import mount, namespaces
from pycriu_restore.linux.clone3 import clone3
from pycriu_restore.linux.errors import LinuxError

# How often the init reaps orphans while it waits for the root task to end.
_REAP_INTERVAL_S = 0.5


@dataclass
class PidNamespace:
    """A new pid namespace and its init, seen from the orchestrator.

    Acquire with :meth:`create`, release with :meth:`close` (which does not stop the init:
    it lives as long as the restored tree).
    """

    init_pid: int  # the init's pid in our namespace
    _go_fd: int  # write end: the root task's pid inside the namespace, then close

    @classmethod
    def create(cls, fresh_devpts: bool = False) -> PidNamespace:
        """Fork the init into new pid and mount namespaces and wait until /proc is mounted
        (and, with ``fresh_devpts``, a devpts of its own on /dev/pts: the restored ptys get
        their dumped indexes whatever the host's terminals hold; restore/terminals.py)."""
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        pid = clone3(namespaces.CLONE_NEWPID | namespaces.CLONE_NEWNS, set_tid=[])
        if pid == 0:
            os.close(go_w)
            os.close(ready_r)
            _init_main(go_r, ready_w, fresh_devpts)
        os.close(go_r)
        os.close(ready_w)
        try:
            ready = os.read(ready_r, 256)
        finally:
            os.close(ready_r)
        if ready != b"ok":
            os.waitpid(pid, 0)
            os.close(go_w)
            raise LinuxError(f"--pid-ns: the namespace's init failed: {ready.decode(errors='replace') or 'died'}")
        return cls(init_pid=pid, _go_fd=go_w)

    def ns_fd(self, kind: str) -> int:
        """An fd for the init's namespace of ``kind`` ("pid", "mnt"); the caller closes it."""
        return os.open(f"/proc/{self.init_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)

    def watch(self, inner_root_pid: int) -> None:
        """Tell the init which task it lives for: it exits when that task is gone."""
        os.write(self._go_fd, str(inner_root_pid).encode())
        self.close()

    def close(self) -> None:
        if self._go_fd >= 0:
            os.close(self._go_fd)
            self._go_fd = -1

    def kill(self) -> None:
        """Failure path: end the init (and with it every task left in the namespace)."""
        self.close()
        try:
            os.kill(self.init_pid, 9)
            os.waitpid(self.init_pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _init_main(go_fd: int, ready_fd: int, fresh_devpts: bool) -> NoReturn:
    """Pid 1 of the new namespace. Never returns."""
    _detach_from_caller_fds(keep={go_fd, ready_fd})
    try:
        mount.make_mounts_private()
        mount.mount_proc()
        if fresh_devpts:
            mount.mount_devpts()
        os.write(ready_fd, b"ok")
    except Exception as err:  # noqa: BLE001 - reported to the orchestrator, then exit
        os.write(ready_fd, str(err).encode()[:200])
        os._exit(1)
    os.close(ready_fd)
    data = os.read(go_fd, 64)  # empty: the restore failed; the orchestrator will kill us
    os.close(go_fd)
    if not data:
        os._exit(0)
    try:
        root = os.pidfd_open(int(data))
    except OSError:
        os._exit(0)  # the root is already gone
    while True:
        readable, _, _ = select.select([root], [], [], _REAP_INTERVAL_S)
        _reap_orphans()
        if readable:  # the root task exited: so does the namespace
            os._exit(0)


def _detach_from_caller_fds(keep: set[int]) -> None:
    """Hold no fd of the orchestrator's caller: the init outlives the orchestrator, and a
    caller reading our stdout/stderr pipe to EOF would otherwise wait as long as it lives."""
    close_all_except(keep)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
