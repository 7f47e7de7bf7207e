"""Terminals, before the first fork: ``--shell-job``, the caller's session, free pty indexes.

A program started from a shell runs in the shell's session, on the shell's terminal; the
shell and the terminal's master (an xterm, sshd) are not dumped with it. CRIU dumps such a
tree only with ``--shell-job`` and restores it only with ``--shell-job`` too, meaning
(criu/pstree.c prepare_pstree_for_shell_job, criu/tty.c pty_open_unpaired_slave):

* the tree joins the restorer's session: the dumped session id (and the root's process
  group, if the root did not lead one) is replaced by the restorer's own everywhere;
* every fd on the outside terminal gets the restorer's stdin, with the dumped terminal
  settings applied to it; and if the root does not lead its session, its group becomes
  the terminal's foreground group.

Without ``--shell-job`` such images are refused (exit 3), naming the task and the fd.

The caller's terminal reaches the root task like every shared object (files/tty.py,
``CallerTerminal``): the orchestrator puts its stdin at the object's parked fd number just
before forking the root, which keeps that number open (restore/task.py keeps the parked
fds), and closes its own copy once the tree is forked.

Ptys whose master is in the images are recreated with their dumped index (files/tty.py).
Under ``--pid-ns`` the namespace's init mounts a devpts of its own, where every index is
free; otherwise the index must be free on the host's devpts, checked here (exit 4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass

from pycriu_restore.files import tty
from pycriu_restore.plan.errors import UnsupportedFeature
from pycriu_restore.plan.model import RestorePlan, Task
from pycriu_restore.restore.errors import EnvironmentMismatch
from pycriu_restore.restore.shared import SharedFds

CALLER_STDIN = 0


@dataclass
class Terminals:
    """What the orchestrator does for the plan's terminals; see the module docstring."""

    fresh_devpts: bool = False  # --pid-ns with ptys: the init mounts a devpts of its own
    caller_fd: int | None = None  # --shell-job: the parked number the caller's stdin goes to
    _held: bool = False

    @contextlib.contextmanager
    def caller_terminal_held(self) -> Iterator[None]:
        """The caller's stdin at ``caller_fd`` while the root is forked (nothing to do without
        one). The number is above every fd of the images, so normally free here; checked."""
        if self.caller_fd is None:
            yield
            return
        try:
            fcntl.fcntl(self.caller_fd, fcntl.F_GETFD)
        except OSError:
            pass
        else:
            raise AssertionError(f"caller_terminal_held: fd {self.caller_fd} is already open in the orchestrator")
        os.dup2(CALLER_STDIN, self.caller_fd, inheritable=False)
        try:
            yield
        finally:
            os.close(self.caller_fd)


def prepare_terminals(plan: RestorePlan, shell_job: bool, new_pid_ns: bool) -> tuple[RestorePlan, Terminals]:
    """Check the plan's terminals against the options and this machine; return the plan as
    it will be restored (sessions moved for --shell-job) and what to do at fork time."""
    external = tty.external_fds(plan)
    root = plan.root
    outside_session = root.sid != root.pid
    if not shell_job:
        found = [f"pid {pid} fd {f.fd}: terminal {f.path} (pty {f.index}), whose master is not in the images"
                 for pid, f in external]
        if outside_session:
            found.append(f"pid {root.pid}: session {root.sid}, whose leader is not in the images "
                         "(the root task does not lead its session)")
        if found:
            raise UnsupportedFeature("tty-info.img" if external else "pstree.img",
                                     "; ".join(found) + ": the tree ran on a terminal or in a session outside it; "
                                     "restore with --shell-job to give it the caller's, as CRIU's --shell-job does")
    terminals = Terminals(fresh_devpts=new_pid_ns and bool(tty.pairs(plan)))
    if shell_job:
        if external and not os.isatty(CALLER_STDIN):
            raise EnvironmentMismatch(f"--shell-job: stdin is not a terminal, and pid {external[0][0]} fd "
                                      f"{external[0][1].fd} needs the caller's terminal (CRIU: \"Don't have tty "
                                      "to inherit session from\")")
        if outside_session:
            if new_pid_ns:
                raise UnsupportedFeature("pstree.img", f"--shell-job with --pid-ns: the root task {root.pid} does "
                                         "not lead its session, and a task of a new pid namespace cannot join the "
                                         "caller's session by its id")
            plan = _join_caller_session(plan)
        if external:
            caller = next(obj for obj in plan.shared if obj.kind == "TTY" and isinstance(obj.spec, tty.CallerTerminal))
            terminals.caller_fd = SharedFds.layout(plan).get("TTY", tty.CALLER_KEY)[0]
            plan = _with_spec(plan, caller, dataclasses.replace(caller.spec, held_fd=terminals.caller_fd))
    if not new_pid_ns:
        for pair in tty.pairs(plan):
            if os.path.exists(pair.control_path):
                raise EnvironmentMismatch(f"{pair.control_path} exists: pty index {pair.index} is in use on this "
                                          f"machine, and the restored pty must get its dumped index (as CRIU's); "
                                          "close that terminal or restore with --pid-ns (a devpts of its own)")
    return plan, terminals


def _with_spec(plan: RestorePlan, obj, spec) -> RestorePlan:
    shared = tuple(dataclasses.replace(o, spec=spec) if o is obj else o for o in plan.shared)
    return dataclasses.replace(plan, shared=shared)


def _join_caller_session(plan: RestorePlan) -> RestorePlan:
    """CRIU's prepare_pstree_for_shell_job: the root's outside session becomes ours, and
    so does its process group if the root does not lead one."""
    current_sid, current_pgid = os.getsid(0), os.getpgrp()
    root = plan.root
    moves: dict[str, dict[int, int]] = {"sid": {}, "pgid": {}}
    if root.sid != current_sid:
        _check_unused(plan, current_sid, "session")
        moves["sid"][root.sid] = current_sid
        moves["pgid"][root.sid] = current_sid
    root_pgid = moves["pgid"].get(root.pgid, root.pgid)
    if root.pgid != root.pid and root_pgid != current_pgid:
        if current_pgid != current_sid:
            _check_unused(plan, current_pgid, "process group")
        moves["pgid"][root.pgid] = current_pgid
        moves["pgid"][root_pgid] = current_pgid

    def moved(task: Task) -> Task:
        return dataclasses.replace(task, sid=moves["sid"].get(task.sid, task.sid),
                                   pgid=moves["pgid"].get(task.pgid, task.pgid))

    return dataclasses.replace(plan, tasks=tuple(moved(t) for t in plan.tasks))


def _check_unused(plan: RestorePlan, ident: int, what: str) -> None:
    for task in plan.tasks:
        if ident in (task.pid, task.sid, task.pgid):
            raise EnvironmentMismatch(f"--shell-job: our {what} {ident} is also pid/sid/pgid of task {task.pid} "
                                      "in the images (CRIU: \"Current sid intersects\")")
