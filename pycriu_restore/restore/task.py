"""What a new task does for itself, still running Python, before it is taken over by ptrace.

Right after clone3 the task is a copy of its parent (the orchestrator for the root, the
parent task for the others). It turns itself into the checkpointed task's shell, in this
order (CRIU's restore task does the same in C, research/criu-restore-internals.md §1.2):

 1. wait until the orchestrator has seized it (so no stop can be missed);
 2. close every inherited fd but its own status pipe, the parked shared objects and the
    pipes of the tasks below it in the tree;
 3. root only: join the new mount namespace (``--pid-ns``: it has its own /proc) and enter a
    new time namespace whose clocks continue from the dump (children inherit both);
 4. session and process group: setsid for a session leader, setpgid for a group leader;
 5. root only: create every shared object (pipes, socketpairs, memfds, shared open files) at
    its parked fd (restore/shared.py), so that all tasks inherit the same objects;
 5b. what belongs to the session (files/registry.py after_session): the session leader takes
    its controlling terminal, the foreground group's leader sets the group;
 6. fork its children with their pids (clone3 set_tid); they start again at 1 (a zombie
    child exits at once, and the parent waits for it without reaping it: restore/zombie.py);
 7. oom_score_adj and loginuid (/proc/self); umask;
 8. install every fd of the image at its number, each by the module of its kind
    (files/registry.py), in an order that puts an fd after those it needs (an epoll set
    after its targets): shared objects are dups of the parked fds, files only this task
    holds are opened now;
 9. put each device mapping's fd (from its plugin, update_vma_map) at its service fd, then
    open the files the blob needs at the others (pages image, exe, mapped files);
 9b. cwd, then root (chdir, chroot): last, since every path above is opened whole
    (plan/reroot.py puts them under --root);
10. close the parked fds, report "ready" on the status pipe (after the device mappings' new
    offsets, if any), and stop itself with SIGSTOP.

The orchestrator then never lets it run Python again: it points the registers at the blob.
Any failure is written to the status pipe as one JSON line and the task exits; it never
returns into its parent's code.
"""

from __future__ import annotations

import json
import os
import resource
import signal
from dataclasses import dataclass
from typing import NoReturn

from pycriu_restore import faults, files
from pycriu_restore.files import close_all_except, registry
from pycriu_restore.files import inherited as inherited_fd
from pycriu_restore.files import owner as fd_owner
from pycriu_restore.files.fdlayout import FdLayout, ServiceFds
from pycriu_restore.linux import namespaces
from pycriu_restore.linux.clone3 import clone3
from pycriu_restore.plan.model import RestorePlan, Task, TimeOffsets
from pycriu_restore.plugins.api import Plugin, RestoreContext
from pycriu_restore.restore.shared import SharedFds, close_parked, create_shared_objects
from pycriu_restore.restore.zombie import collect_zombies, exit_as_zombie, hold_child_exits

READY = b"R"
# The status pipe's one other record of a task that succeeded: before READY, one JSON line
# {"device_vmas": {"<VMA start>": new pgoff, ...}} when the task has device mappings (their
# offsets come from its plugins, which only the task can ask: restore/orchestrator.py maps
# them there). A failure is one JSON line without this key, and no READY.
DEVICE_VMAS = "device_vmas"
# Exit codes of a task that failed before the blob (the JSON line says why).
CHILD_FAILED = 111
CHILD_NOT_TAKEN_OVER = 112

_NSEC_PER_SEC = 1_000_000_000

@dataclass(frozen=True)
class TaskLink:
    """The two pipes between the orchestrator and one task, as the task sees them."""

    go_fd: int  # read end: one byte arrives once the orchestrator has seized the task
    status_fd: int  # write end: READY, or one JSON line describing the failure
    service: ServiceFds


@dataclass(frozen=True)
class TreeSetup:
    """Everything the tasks of one restore need from the orchestrator, shared by all."""

    plan: RestorePlan
    links: dict[int, TaskLink]  # checkpointed pid -> its pipes
    parked: SharedFds
    mntns_fd: int | None = None  # --pid-ns: the mount namespace with the new /proc (root joins)
    # Plugins and their context, inherited through fork: their task-side hooks run here.
    plugins: tuple[Plugin, ...] = ()
    plugin_ctx: RestoreContext | None = None
    # The orchestrator's ends of every task's pipes. The root drops its copies before it
    # waits for its go: if the orchestrator dies first, that read must end (EOF), not block.
    orchestrator_fds: frozenset[int] = frozenset()


class ChildStepFailed(Exception):
    """A step of the in-task preparation failed; carried to the orchestrator as JSON."""

    def __init__(self, step: str, cause: str, path: str | None = None) -> None:
        super().__init__(f"{step}: {cause}")
        self.step, self.cause, self.path = step, cause, path


def run_child(task: Task, tree: TreeSetup) -> NoReturn:
    """The body of a freshly cloned task. Never returns: it stops for the orchestrator or exits."""
    link = tree.links[task.pid]
    status_fd = link.status_fd
    is_root = task is tree.plan.root
    layout = tree.parked.fd_layout
    try:
        if not is_root:
            # Drop the parent's status pipe (inherited at fork) at once: the orchestrator
            # reads the parent's report to its end, and we would hold that end open.
            _close_quietly(layout.status_fd)
            _close_siblings_pipes(tree, task)
        else:
            # Before the first fd is moved up: every number of the layout must be allowed.
            _step("RLIMIT_NOFILE", lambda: _allow_fds(layout))
            files.set_temp_base(layout.temp_base)  # children inherit both
        if task.is_zombie:
            # Never seized, so no go to wait for: it exits before its parent reports ready,
            # which waits for it (restore/zombie.py says why then).
            _set_session(task)
            _step("become a zombie", lambda: exit_as_zombie(task, status_fd, READY))
        if is_root:
            for fd in tree.orchestrator_fds:
                _close_quietly(fd)
        if os.read(link.go_fd, 1) != b"g":  # EOF: the orchestrator died before it seized us
            os._exit(CHILD_NOT_TAKEN_OVER)
        faults.point("task.start")
        below = _descendants(tree.plan, task)
        status_fd = _keep_only(link, tree, below, keep_mntns=is_root)
        if is_root:
            if tree.mntns_fd is not None:
                _step("join mount namespace", lambda: namespaces.setns(layout.mntns_fd, namespaces.CLONE_NEWNS))
                os.close(layout.mntns_fd)
            if tree.plan.timens is not None:
                _step("time namespace", lambda: _enter_time_namespace(tree.plan.timens))
        _set_session(task)
        if is_root:
            faults.point("task.shared_objects")
            _step("create shared objects", lambda: create_shared_objects(tree.plan, tree.parked))
            inherited_fd.release()  # parked now; the children must not inherit the hand-over copies
        # After setsid/setpgid and the shared objects, before the forks: children inherit a
        # controlling terminal only if their session leader took it first (files/tty.py).
        for kind in registry.all_kinds():
            _step(f"{kind.fd_type} session state", lambda kind=kind: kind.after_session(task, tree.plan, tree.parked.get))
        zombies = [child.pid for child in tree.plan.children(task) if child.is_zombie]
        if zombies:  # before the forks: no zombie may be reaped, no SIGCHLD left (restore/zombie.py)
            old_mask = _step("hold SIGCHLD", hold_child_exits)
        for child in tree.plan.children(task):
            faults.point("task.fork")
            pid = _step(f"fork task {child.pid}", lambda child=child: clone3(0, [child.pid]))
            if pid == 0:
                run_child(child, tree)  # never returns
        if zombies:
            _step(f"wait for zombies {zombies}", lambda: collect_zombies(zombies, old_mask))
        for pid in below:  # the children have their copies now
            os.close(tree.links[pid].go_fd)
            os.close(tree.links[pid].status_fd)
        _restore_proc_attrs(task)  # after the forks: children inherit both, and set their own
        os.umask(task.umask)  # before the fds: a unix socket's file is made with it
        _install_fds(task, tree)
        for owner in task.fd_owners:  # once every fd is in place (files/owner.py)
            _step(f"owner of fd {owner.fd} (F_SETOWN {owner.pid})", lambda owner=owner: fd_owner.restore(owner))
        # Before the plugins close what they kept: a device VMA maps through their files.
        device_offsets = _map_device_vmas(task, link.service, tree)
        for plugin in tree.plugins:  # e.g. the amdgpu channel: never left in the restored task
            plugin.close_inherited_fds()
        _open_service_files(task, link.service, tree.parked)
        # cwd and root last: every path of the images (fds, mapped files) was opened by its
        # whole path; from here on nothing needs /proc or a path outside the new root.
        _restore_fs(task)
        close_parked(tree.parked)
        report = memoryview(ready_report(device_offsets))
        while report:  # beyond PIPE_BUF (many device VMAs) a write may be partial
            report = report[os.write(status_fd, report):]
        os.close(status_fd)
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(CHILD_NOT_TAKEN_OVER)  # only reached if the orchestrator let us continue
    except ChildStepFailed as err:
        _report(status_fd, {"step": err.step, "cause": err.cause, "path": err.path})
    except BaseException as err:  # noqa: BLE001 - anything must become a report, never a return
        _report(status_fd, {"step": "prepare", "cause": f"{type(err).__name__}: {err}", "path": None})
    os._exit(CHILD_FAILED)


def _allow_fds(layout: FdLayout) -> None:
    """Raise this task's RLIMIT_NOFILE soft limit to what the fd layout needs (the hard limit
    bounds it, as for CRIU's service fds); the blob sets the restored task's own limits later."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = layout.nofile_needed
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise ChildStepFailed("RLIMIT_NOFILE", f"the images' fds and the restore's own need {need} fds "
                                  f"(service fds from {layout.parked_base}), the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _close_siblings_pipes(tree: TreeSetup, task: Task) -> None:
    """Close the go and status pipes of our siblings and their subtrees, inherited at fork.

    The parent holds them, at their own numbers, until it has forked all its children. The
    orchestrator reads each task's report to its end, so a sibling forked after us must not
    keep ours open while it waits for its go (nor we its): with three children or more,
    the report of the first would never end. Ancestors' pipes are closed already (their
    numbers may hold other fds now), so only the parent's other subtrees are touched.
    """
    parent = next(t for t in tree.plan.tasks if t.pid == task.ppid)
    mine = {task.pid, *_descendants(tree.plan, task)}
    for pid in _descendants(tree.plan, parent):
        if pid not in mine:
            _close_quietly(tree.links[pid].go_fd)
            _close_quietly(tree.links[pid].status_fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _descendants(plan: RestorePlan, task: Task) -> list[int]:
    out, queue = [], list(plan.children(task))
    while queue:
        t = queue.pop(0)
        out.append(t.pid)
        queue.extend(plan.children(t))
    return out


def _step(name: str, action) -> object:
    try:
        return action()
    except OSError as err:
        raise ChildStepFailed(name, err.strerror or str(err), getattr(err, "filename", None)) from err
    except Exception as err:  # the linux/ layer raises PycrestoreError subclasses
        raise ChildStepFailed(name, str(err)) from err


def _keep_only(link: TaskLink, tree: TreeSetup, below: list[int], keep_mntns: bool) -> int:
    """Close every inherited fd except ours, the parked objects and the pipes of tasks below."""
    layout = tree.parked.fd_layout
    keep = {os.dup2(link.status_fd, layout.status_fd, inheritable=False)}
    if keep_mntns and tree.mntns_fd is not None:
        keep.add(os.dup2(tree.mntns_fd, layout.mntns_fd, inheritable=False))
    keep.update(tree.parked.all)
    keep.update(inherited_fd.handed_over())  # the root's, until create_shared_objects (files/inherited.py)
    for plugin in tree.plugins:
        keep.update(plugin.inherited_fds())
    for pid in below:
        keep.update((tree.links[pid].go_fd, tree.links[pid].status_fd))
    close_all_except(keep)
    return layout.status_fd


def _set_session(task: Task) -> None:
    """A session leader starts its session; a group leader its group; others inherit both."""
    faults.point("task.session")
    if task.sid == task.pid:
        _step("setsid", os.setsid)
    elif task.pgid == task.pid:
        _step("setpgid", lambda: os.setpgid(0, 0))
    if os.getsid(0) != task.sid:
        raise ChildStepFailed("session", f"session is {os.getsid(0)}, the images say {task.sid} (helper tasks are not supported)")


def _enter_time_namespace(t: TimeOffsets) -> None:
    """New time namespace whose monotonic and boottime clocks read as they did at dump.

    The offsets are written before any process is in the namespace (time_namespaces(7)),
    then the task joins it with setns: allowed because it is single-threaded.
    """
    import time

    now_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    now_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    mono_off = t.monotonic_sec * _NSEC_PER_SEC + t.monotonic_nsec - now_mono
    boot_off = t.boottime_sec * _NSEC_PER_SEC + t.boottime_nsec - now_boot
    namespaces.unshare(namespaces.CLONE_NEWTIME)
    namespaces.set_timens_offsets(mono_off, boot_off)
    fd = os.open("/proc/self/ns/time_for_children", os.O_RDONLY)
    try:
        namespaces.setns(fd, namespaces.CLONE_NEWTIME)
    finally:
        os.close(fd)


def _restore_proc_attrs(task: Task) -> None:
    """oom_score_adj and loginuid, which only /proc sets (proc(5)); as CRIU does, by the task
    itself: the kernel lets a task write only its own loginuid. Lowering oom_score_adj needs
    CAP_SYS_RESOURCE and setting loginuid CAP_AUDIT_CONTROL, which the task still has here."""
    if task.oom_score_adj is not None:
        _step("oom_score_adj", lambda: _write_proc_self("oom_score_adj", task.oom_score_adj))
    if task.loginuid is not None:
        _step("loginuid", lambda: _write_proc_self("loginuid", task.loginuid))


def _write_proc_self(name: str, value: int) -> None:
    fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _restore_fs(task: Task) -> None:
    """cwd, then root. Both are whole paths as the dumper saw them (under --root, under that
    root: plan/reroot.py): chdir first, so that the cwd of a task dumped in a chroot is found,
    and chroot keeps it (CRIU: restore_fs fchdir()s to the cwd and fchroot()s to the root)."""
    faults.point("task.fs")
    _step(f"chdir {task.cwd}", lambda: os.chdir(task.cwd))
    if task.root != "/":
        _step(f"chroot {task.root}", lambda: os.chroot(task.root))


def _install_fds(task: Task, tree: TreeSetup) -> None:
    """Install each fd of the image at its number, by the module of its kind (files/registry.py).

    Order: by fd number, except that an fd waits for the fds it depends on (an epoll set
    for the fds it watches), as CRIU's epoll waits for its targets to be open.
    """
    ctx = registry.InstallContext(task=task, parked=tree.parked.get, plugins=tree.plugins,
                                  plugin_ctx=tree.plugin_ctx)
    # Fds a plugin keeps open until now (the amdgpu channel) must not be installed over.
    held = {fd for plugin in tree.plugins for fd in plugin.inherited_fds()}
    for spec in _dependency_order(task):
        kind = registry.kind_of(spec)
        if spec.fd in held:
            raise ChildStepFailed(f"fd {spec.fd}", f"the number is held by a plugin's channel {sorted(held)}: "
                                  "an image fd that high is not restored with this plugin")
        faults.point("task.install_fd", kind.fd_type)
        _step(_describe(kind, spec), lambda spec=spec, kind=kind: kind.install(spec, ctx))


def _dependency_order(task: Task) -> list:
    """The task's fd specs by number, each after the fds its kind says it needs."""
    by_fd = {spec.fd: spec for spec in task.files}
    done: set[int] = set()
    out: list = []

    def visit(spec, path: tuple[int, ...]) -> None:
        if spec.fd in done:
            return
        if spec.fd in path:
            raise ChildStepFailed(f"fd {spec.fd}", f"fds depend on each other in a cycle: {list(path)}")
        for need in registry.kind_of(spec).depends_on(spec):
            if need not in by_fd:
                raise ChildStepFailed(f"fd {spec.fd}", f"needs fd {need}, which the task's image does not hold")
            visit(by_fd[need], path + (spec.fd,))
        done.add(spec.fd)
        out.append(spec)

    for spec in task.files:
        visit(spec, ())
    return out


def _describe(kind: registry.FileKind, spec) -> str:
    """The step's name: ``open fd 3 (/var/log/x)`` for a file with a path, else ``EVENTFD fd 6``."""
    path = getattr(spec, "path", None)
    return f"open fd {spec.fd} ({path})" if path else f"{kind.fd_type} fd {spec.fd}"


def _open_service_files(task: Task, service: ServiceFds, parked: SharedFds) -> None:
    """Open the pages image, the exe and every mapped file at their service fds; a memfd or
    shared anonymous memory is a dup of the one object the root parked (restore/shared.py)."""
    faults.point("task.service_files")
    wanted = [(task.pages_path, os.O_RDONLY, service.pages), (task.mm.exe.path, os.O_RDONLY, service.exe)]
    wanted += [(path, flags, fd) for (path, flags), fd in service.mapped.items()]
    for path, flags, fd in wanted:
        key = (path, flags)
        shared = (("MEMFD", service.memfds[key]) if key in service.memfds
                  else ("SHMEM", service.shmems[key]) if key in service.shmems else None)

        def open_at(path=path, flags=flags, fd=fd, shared=shared) -> None:
            tmp = os.dup(parked.get(*shared)[0]) if shared is not None else os.open(path, flags | os.O_CLOEXEC)
            os.dup2(tmp, fd, inheritable=False)
            os.close(tmp)

        _step(f"open {path}", open_at)


def _map_device_vmas(task: Task, service: ServiceFds, tree: TreeSetup) -> dict[int, int]:
    """Put the fd of each device mapping at its service fd; return each one's new pgoff.

    CRIU's open_filemap for a VMA_EXT_PLUGIN VMA: once the task's files (and so the
    device's buffers) are restored, the first plugin whose update_vma_map answers gives
    the new offset and the fd to map through (DRM maps a buffer only through the file that
    made it); without an fd, the device is opened by its path. Unlike CRIU, a device VMA
    no plugin answers for fails the restore: at its old offset it would map another buffer,
    or none.
    """
    out: dict[int, int] = {}
    for vma in task.vmas:
        if vma.file is None or not vma.file.plugin:
            continue
        path, where = vma.file.path, f"device VMA {vma.start:#x}-{vma.end:#x} ({vma.file.path})"
        answer = None
        for plugin in tree.plugins:
            answer = _step(where, lambda plugin=plugin, vma=vma: plugin.update_vma_map(
                tree.plugin_ctx, task, vma.file.path, vma.start, vma.pgoff))
            if answer is not None:
                break
        if answer is None:
            names = ", ".join(p.name for p in tree.plugins) or "none loaded"
            raise ChildStepFailed(where, f"no plugin maps it (update_vma_map of {names} answered None for "
                                  f"offset {vma.pgoff:#x}): mapped at its old offset it would show another buffer")
        new_pgoff, fd = answer
        page = resource.getpagesize()  # mmap(2): the offset is a multiple of the page size
        if not isinstance(new_pgoff, int) or new_pgoff < 0 or new_pgoff % page:
            if fd is not None:
                _close_quietly(fd)
            raise ChildStepFailed(where, f"the plugin answered offset {new_pgoff!r}, expected a multiple of "
                                  f"{page} bytes")
        slot = service.plugin[vma.start]

        def put(fd=fd, slot=slot, path=path, flags=vma.file.open_flags) -> None:
            src = os.open(path, flags | os.O_CLOEXEC) if fd is None else fd
            try:
                os.dup2(src, slot, inheritable=False)
            finally:
                os.close(src)  # the plugin's fd is ours to close (CRIU's core closes it too)

        _step(where, put)
        out[vma.start] = new_pgoff
    return out


def ready_report(device_offsets: dict[int, int]) -> bytes:
    """What a task that is ready writes: READY, after its device VMAs' offsets if it has any."""
    if not device_offsets:
        return READY
    line = json.dumps({DEVICE_VMAS: {str(start): pgoff for start, pgoff in device_offsets.items()}})
    return line.encode() + b"\n" + READY


def parse_ready(report: bytes) -> dict[int, int] | None:
    """The device VMA offsets of a ready report (empty if none), or None if ``report`` is
    not one that says ready (a failure: read it with its JSON)."""
    if report == READY:
        return {}
    line, sep, rest = report.partition(b"\n")
    if not sep or rest != READY:
        return None
    try:
        record = json.loads(line.decode())
        return {int(start): int(pgoff) for start, pgoff in record[DEVICE_VMAS].items()}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _report(status_fd: int, failure: dict) -> None:
    try:
        os.write(status_fd, json.dumps(failure).encode() + b"\n")
    except OSError:
        pass  # the orchestrator is gone; O_EXITKILL ends us anyway
