"""The restore, start to finish: images -> plan -> tasks -> blob -> running processes.

``restore(images_dir, options)`` runs the stages of restore/timeline.py in order. It is
the only code that holds tasks under ptrace, and all of it runs on one thread (the tracer
identity belongs to a thread). Each stage either finishes or raises; on any failure every
task made so far is killed and reaped (``Rollback``), so a failed restore leaves nothing
running, and no pidfile is written.

For one task (research/criu-restore-internals.md §1, §2.2, §2.5 for CRIU's equivalent):

    FORK       clone3(set_tid) -> task prepares fds/fs/session/timens -> SIGSTOP, seized
    BOOTSTRAP  read its maps, pick a region free in both layouts, inject mmap(region),
               write blob + args + sigframe there, rip = blob entry
    MEMORY     PTRACE_CONT: the blob rebuilds the address space and process state, then
               int3; read its status record
    RESUME     PTRACE_SYSCALL through the blob's rt_sigreturn: registers are now the
               application's; munmap(region) through the blob's syscall gadget

A tree goes through each stage task by task (the blobs run in parallel), and all tasks are
detached together at the very end.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from pycriu_restore.blob.bootstrap import Bootstrap, RuntimeLayout, bootstrap_size, build_bootstrap
from pycriu_restore.blob import abi
from pycriu_restore.blob.kernel_frame import fresh_task_frame
from pycriu_restore.blob.status import decode_status
from pycriu_restore.images import ImageSet
from pycriu_restore.linux import ptrace, selfctl, syscalls
from pycriu_restore.linux.waitstatus import StopKind
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import UnsupportedFeature
from pycriu_restore.plan.model import RestorePlan, Task, TaskState
from pycriu_restore.plan.reroot import reroot
from pycriu_restore.files.inet_lock import ConnectionLock
from pycriu_restore.plan.netns import read_net_namespace
from pycriu_restore.plugins.api import Plugin, RestoreContext, load_plugins, missing_plugins, plugins_apply
from pycriu_restore import faults, interruption
from pycriu_restore.linux.errors import LinuxError
from pycriu_restore.restore.errors import RestoreFailed
from pycriu_restore.restore.notify import CARRIES_PID, Notify
from pycriu_restore.restore.fill_tids import assign_fill_tids, usable_cpus
from pycriu_restore.restore.layout import choose_bootstrap_base, runtime_layout
from pycriu_restore.restore.pidns import PidNamespace
from pycriu_restore.restore.cpucap import DEFAULT_CPU_CAP, CpuCap, check_cpu
from pycriu_restore.restore.preflight import check_plan
from pycriu_restore.restore.privileges import check_privileges
from pycriu_restore.restore.sched import apply_sched
from pycriu_restore.restore.terminals import prepare_terminals
from pycriu_restore.restore.timeline import Stage, Timeline
from pycriu_restore.restore.tree import Rollback, SpawnedTask, spawn_tree
from pycriu_restore.tracee import Tracee

if TYPE_CHECKING:  # imported where a tree has a namespace of its own: pyroute2 takes ~100 ms to load
    from pycriu_restore.netns.namespace import NetNamespace

log = logging.getLogger("pycrestore")

# mmap(2) arguments for the bootstrap region (<asm-generic/mman-common.h>, <linux/mman.h>).
PROT_RWX = 0x1 | 0x2 | 0x4
MAP_PRIVATE_ANON_FIXED_NOREPLACE = 0x02 | 0x20 | 0x100000


@dataclass(frozen=True)
class RestoreOptions:
    """What the caller may choose (the CLI's flags)."""

    pid_ns: bool = False  # restore in a new pid namespace under a small init
    # Called with each task's Tracee after the blob is gone and before the task runs: the
    # registers and memory are the application's. For inspection (tests, teaching, debugging).
    before_detach: Callable[[Tracee], None] | None = None
    # Called as each stage after FORK begins, with the pids made so far (ours). For watching
    # a restore from outside, and for tests that break one in the middle.
    on_stage: Callable[[Stage, list[int]], None] | None = None
    # Plugins (plugins/api.py): None loads every installed one (entry points) if plugins_apply().
    plugins: tuple[Plugin, ...] | None = None
    gpu_backend: str = "kfd"  # amdgpu plugin: "kfd" (real /dev/kfd) or "sim" (simgpu)
    parallel_gpu: bool = True  # amdgpu plugin: fill VRAM beside the blobs (False: each task waits for its fill)
    gpu_bytes_per_s: float | None = None  # simgpu: per-GPU copy bandwidth cap (models PCIe/SDMA)
    cpu_cap: CpuCap = DEFAULT_CPU_CAP  # CRIU's --cpu-cap: what the CPU check compares
    tcp_established: bool = False  # CRIU's --tcp-established: rebuild ESTABLISHED TCP connections
    shell_job: bool = False  # CRIU's --shell-job: the tree takes the caller's session and terminal
    # CRIU's --external KEY[...]:VALUE; netns/ reads veth[IFNAME]:HOSTNAME (plan/netns.py).
    external: tuple[str, ...] = ()
    # CRIU's --restore-sibling (rpc rst_sibling): the root is forked with CLONE_PARENT, so it
    # becomes a child of our parent (the RPC client), not ours.
    restore_sibling: bool = False
    # CRIU's --inherit-fd fd[N]:RESOURCE, as (N, RESOURCE): our fd N takes the place of the
    # file named RESOURCE (files/inherited.py). The first pair for a RESOURCE counts.
    inherit_fd: tuple[tuple[int, str], ...] = ()
    # CRIU's --root DIR: every path of the images under DIR, and DIR the tasks' "/"
    # (plan/reroot.py). None or "/": as dumped.
    root: str | None = None
    # CRIU's notify points (restore/notify.py), called on this thread with the point and,
    # where CRIU sends one, the root's pid in our namespace. Raising aborts the restore.
    on_notify: Callable[[Notify, int | None], None] | None = None


@dataclass
class Restored:
    """A restore that succeeded: the tasks run, detached."""

    plan: RestorePlan
    pids: dict[int, int]  # checkpointed pid -> pid in the caller's namespace
    timeline: Timeline
    init_pid: int | None = None  # --pid-ns: the namespace's init, in the caller's namespace
    plugins: tuple[Plugin, ...] = ()  # as they ended (e.g. the simgpu device, for checks)

    @property
    def root_pid(self) -> int:
        return self.pids[self.plan.root.pid]


def _os_errors_named(func: Callable[..., Restored]) -> Callable[..., Restored]:
    """The last boundary for an OSError that no layer below translated (a system call of the
    orchestrator itself, or an injected fault: faults.py): by the time it gets here every
    task has been killed, and it leaves as a LinuxError (exit 5) that names it."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> Restored:
        try:
            return func(*args, **kwargs)
        except OSError as err:
            raise LinuxError(f"restore: {err}", errno=err.errno) from err

    return wrapper


@_os_errors_named
def restore(images_dir: str, options: RestoreOptions = RestoreOptions()) -> Restored:
    """Restore the checkpoint in ``images_dir``; return once every task runs.

    Raises an ImageError/PlanError for bad images, EnvironmentMismatch when the machine
    does not match (pid in use, file changed), RestoreFailed when a task failed; in every
    case nothing restored is left running. Needs root (pids, ptrace, namespaces).
    """
    timeline = Timeline()
    with timeline.stage(Stage.PLAN, images_dir):
        images = ImageSet.open(images_dir)
        inherit = {}  # RESOURCE -> our fd
        for fd, key in options.inherit_fd:
            inherit.setdefault(key, fd)
        plan = build_plan(images, frozenset(inherit))
        if options.root is not None:
            plan = reroot(plan, options.root)
        for key in sorted(set(inherit) - set(plan.inherited)):
            log.warning("--inherit-fd fd[%d]:%s: no fd of the checkpoint has that file (pycrestore takes "
                        "pipe:[INO], socket:[INO], file[MNT:INODE] and paths without the leading /); fd unused",
                        inherit[key], key)
        # The tree's own network namespace, if it has one (plan/netns.py; None: ours).
        netns_plan = read_net_namespace(images, options.external)
    with timeline.stage(Stage.PREFLIGHT):
        # --shell-job may move the tree into our session: the plan as restored (restore/terminals.py).
        plan, terminals = prepare_terminals(plan, options.shell_job, options.pid_ns)
        check_plan(plan, new_pid_ns=options.pid_ns)
        check_privileges(plan)  # the creds the images ask for must be ours to give
        # Before the first fork: state this CPU cannot hold is refused here, not found
        # missing in a running process (restore/cpucap.py).
        cpu = check_cpu(plan, fresh_task_frame().xfeatures, options.cpu_cap)
        for warning in cpu.warnings:
            log.warning("%s", warning)
        for note in cpu.notes:
            log.info("%s", note)
        # Connections need --tcp-established, and a lock if a peer is outside (files/inet_lock.py).
        connections = ConnectionLock.for_plan(plan, images, options.tcp_established)
        if netns_plan is not None and connections.connections:
            # The lock's table would be made in our namespace, not in the tree's.
            raise UnsupportedFeature(f"netns-{netns_plan.ns_id}.img", "established TCP connections in a "
                                     "network namespace of the tree's own are not restored")
    if options.plugins is not None:
        plugins = options.plugins
    else:  # the installed ones, looked up only where the images hold something of a plugin's
        plugins = tuple(load_plugins()) if plugins_apply(images, plan) else ()
    missing = missing_plugins(images, plugins)
    if missing:  # as CRIU's "Missing required plugin": its state would be lost without a word
        loaded = ", ".join(p.criu_name or p.name for p in plugins) or "none"
        raise UnsupportedFeature("inventory.img", f"the dump used CRIU plugin {', '.join(missing)}, which no "
                                 f"pycrestore plugin restores (loaded: {loaded}): its state would be lost")
    ctx = RestoreContext(images=images, plan=plan,
                         options={"gpu_backend": options.gpu_backend, "parallel_gpu": options.parallel_gpu,
                                  "gpu_bytes_per_s": options.gpu_bytes_per_s})

    rollback = Rollback()
    pidns: PidNamespace | None = None
    netns: NetNamespace | None = None
    failed = True
    # While tasks are held, their orphans come to us rather than to init: the task of a
    # killed parent is then ours to reap, and a failed restore returns with nothing left,
    # not even a zombie waiting for init. Put back before the tree runs.
    was_subreaper = selfctl.child_subreaper()
    selfctl.set_child_subreaper(True)
    try:
        _notify_point(options, Notify.PRE_RESTORE, None)
        for plugin in plugins:  # RESTORE_INIT: before any fork, so the tasks inherit its IPC
            plugin.restore_init(ctx)
        with timeline.stage(Stage.FORK, f"{len(plan.tasks)} task(s)"):
            connections.lock()  # before the first connection exists: none of its packets may pass
            if options.pid_ns:
                pidns = rollback.pidns = PidNamespace.create(fresh_devpts=terminals.fresh_devpts)
            if netns_plan is not None:  # links, addresses, routes, rules: all before a task runs in it
                from pycriu_restore.netns import namespace

                netns = namespace.NetNamespace.create(netns_plan)

            def post_forking() -> None:  # the orchestrator forks nothing after the root
                for plugin in plugins:
                    plugin.post_forking(ctx)

            # In the tree's network namespace (if any) for the root's clone3: it and its children live there.
            with terminals.caller_terminal_held(), (netns.entered() if netns else contextlib.nullcontext()):
                tree = spawn_tree(plan, rollback, pidns, plugins, ctx, after_root_fork=post_forking,
                                  restore_sibling=options.restore_sibling,
                                  inherited={key: inherit[key] for key in plan.inherited})
            spawned = tree.tasks  # the zombies have exited already: they need nothing more
        root_pid = next(s.pid for s in spawned if s.task.pid == plan.root.pid)
        _notify_point(options, Notify.SETUP_NAMESPACES, root_pid)
        _notify_point(options, Notify.POST_SETUP_NAMESPACES, root_pid)
        _notify(options, Stage.BOOTSTRAP, spawned)
        with timeline.stage(Stage.BOOTSTRAP):
            # Each blob fills its pages with threads of its own; their tids (restore/fill_tids.py).
            fill_tids = assign_fill_tids(plan, [s.task for s in spawned], usable_cpus())
            bootstraps = [_enter_blob(s, fill_tids[s.task.pid]) for s in spawned]
            for s, b in zip(spawned, bootstraps):
                for note in b.notes:
                    log.warning("task %d: %s", s.task.pid, note)
        pages = sum(v.nr_present_pages for t in plan.tasks for v in t.vmas)
        _notify(options, Stage.MEMORY, spawned)
        fill = max((b.fill_threads for b in bootstraps), default=1)  # the blobs' own threads (step FILL_PAGES)
        with timeline.stage(Stage.MEMORY, f"{pages} pages" + (f", up to {fill} fill threads a task" if fill > 1 else "")):
            # Every blob runs at once; none is released before all have finished, as
            # CRIU's restore stages do (a task must not run while another is half-made).
            for s in spawned:
                s.tracee.cont()
            for s, b in zip(spawned, bootstraps):
                _wait_blob(s, b)
                apply_sched(s)  # every thread exists now, and none runs until detach
        _notify_point(options, Notify.POST_RESTORE, root_pid)
        _notify(options, Stage.RESUME, spawned)
        with timeline.stage(Stage.RESUME):
            for s, b in zip(spawned, bootstraps):
                _leave_blob(s, b)
                # RESUME_DEVICES_LATE: the task's memory is final; devices may start now
                # (amdgpu: wait for the VRAM fill, then resume the GPU queues).
                for plugin in plugins:
                    plugin.resume_devices_late(ctx, s.pid)
                if options.before_detach is not None:
                    options.before_detach(s.tracee)
            # Every task is restored: unlock the network, then TCP repair off (files/inet_lock.py).
            if netns is not None:  # CRIU's network_unlock: the script runs before the unlock
                _notify_point(options, Notify.NETWORK_UNLOCK, None)
            connections.release({s.task.pid: s.pid for s in spawned})
            _notify_point(options, Notify.PRE_RESUME, root_pid)  # the last moment tasks are held
            selfctl.set_child_subreaper(was_subreaper)  # the running tree's orphans go where they would
            for s in spawned:  # all together, at the very end, parents first
                if s.task.state is TaskState.STOPPED:
                    # As CRIU's finalize_restore: queued while the task is still held, the
                    # stop signal is taken as soon as it runs untraced, and it stops in T.
                    # Its parent, detached before it, gets the stop's SIGCHLD as CRIU's does.
                    os.kill(s.pid, s.task.stop_signo)
                for thread in s.threads:
                    thread.detach()
                s.tracee.detach()
        interruption.commit()  # every task runs: a stop signal from now on does not undo that
        failed = False
    except BaseException:
        rollback.kill_all()
        raise
    finally:
        with interruption.deferred():  # a stop signal waits until all is released (interruption.py)
            selfctl.set_child_subreaper(was_subreaper)
            connections.unlock()  # after release() a no-op; on failure the lock goes with the tree
            if netns is not None:  # the tasks hold it now; on failure it goes with its links
                netns.close()
            for plugin in plugins:
                plugin.cleanup(ctx, failed)
    if pidns is not None:
        pidns.watch(plan.root.pid)
    rollback.forget()
    _notify_point(options, Notify.POST_RESUME, root_pid)
    ours = {**{s.task.pid: s.pid for s in spawned}, **tree.zombies}
    return Restored(plan=plan, pids={t.pid: ours[t.pid] for t in plan.tasks}, timeline=timeline,
                    init_pid=pidns.init_pid if pidns else None, plugins=plugins)


def _notify(options: RestoreOptions, stage: Stage, spawned: list[SpawnedTask]) -> None:
    if options.on_stage is not None:
        options.on_stage(stage, [s.pid for s in spawned])


def _notify_point(options: RestoreOptions, point: Notify, root_pid: int | None) -> None:
    if options.on_notify is not None:
        options.on_notify(point, root_pid if point in CARRIES_PID else None)


def _enter_blob(spawned: SpawnedTask, fill_tids: tuple[int, ...] = ()) -> Bootstrap:
    """Map the bootstrap region in the stopped task, fill it, and point the task at the blob.

    ``fill_tids``: one tid per fill worker the blob makes in step FILL_PAGES (none: the
    leader fills alone)."""
    tracee = spawned.tracee
    task = _with_device_offsets(spawned)
    runtime: RuntimeLayout = dataclasses.replace(
        runtime_layout(tracee), keep_exe=_same_file(f"/proc/{tracee.pid}/exe", task.mm.exe.path),
        fill_tids=fill_tids)
    size = bootstrap_size(task, runtime)
    base = choose_bootstrap_base(tracee.maps(), task.vmas, size)
    # Built (and so checked: vdso fit, FPU state) before the task is touched.
    bootstrap = build_bootstrap(task, base, runtime, spawned.service)
    faults.point("bootstrap.mmap")
    got = tracee.inject_syscall(syscalls.NR_MMAP, base, size, PROT_RWX, MAP_PRIVATE_ANON_FIXED_NOREPLACE, -1 & 0xFFFFFFFFFFFFFFFF, 0)
    if got != base:
        raise RestoreFailed(spawned.task.pid, "bootstrap", f"mmap of the bootstrap region at {base:#x} returned {got:#x}")
    faults.point("bootstrap.write_memory")
    tracee.write_memory(base, bootstrap.image)
    regs = tracee.regs
    regs.rip = bootstrap.entry
    regs.rsp = bootstrap.stack_top
    regs.rdi = bootstrap.args_addr
    regs.orig_rax = 0xFFFFFFFFFFFFFFFF  # not in a syscall: no restart logic on resume
    tracee.regs = regs
    log.debug("bootstrap region %#x-%#x, entry %#x, %d fill thread(s)", base, base + size, bootstrap.entry,
              bootstrap.fill_threads)
    return bootstrap


def _with_device_offsets(spawned: SpawnedTask) -> Task:
    """The plan's task with each device VMA at the offset its plugin gave in the task.

    The task learnt the offsets (update_vma_map, restore/task.py) and put the plugin's fd
    at the VMA's service fd; the blob maps that fd at the new offset with the VMA's own
    prot and flags, as CRIU's open_filemap + restorer do.
    """
    task, moved = spawned.task, spawned.device_offsets
    devices = {v.start for v in task.vmas if v.file is not None and v.file.plugin}
    if not devices and not moved:
        return task
    missing = sorted(devices - set(moved))
    if missing:
        vma = next(v for v in task.vmas if v.start == missing[0])
        raise RestoreFailed(task.pid, "device mappings",
                            f"device VMA {vma.start:#x}-{vma.end:#x} ({vma.file.path}, offset {vma.pgoff:#x}): "
                            f"the task reported no new offset for it (it reported {len(moved)} of {len(devices)})")
    strays = sorted(set(moved) - devices)
    if strays:
        raise RestoreFailed(task.pid, "device mappings", f"the task reported offsets for {strays[0]:#x}, "
                            "which is not a device VMA of its image")
    vmas = tuple(dataclasses.replace(v, pgoff=moved[v.start]) if v.start in devices else v for v in task.vmas)
    return dataclasses.replace(task, vmas=vmas)


def _same_file(a: str, b: str) -> bool:
    """True if the two paths name one file (device and inode)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _wait_blob(spawned: SpawnedTask, bootstrap: Bootstrap) -> None:
    """Wait until every thread of a running blob reached its int3; check each status.

    The leader creates the other threads with clone3 inside the blob. It was seized with
    PTRACE_O_TRACECLONE, so each clone gives it a PTRACE_EVENT_CLONE stop and the new thread
    starts traced (its first stop is a PTRACE_EVENT_STOP). Threads are created in plan order.
    """
    leader = spawned.tracee
    pid = spawned.task.pid
    while True:
        stop = leader.wait_stop()
        if not stop.alive:
            raise RestoreFailed(pid, "memory", f"the task ended inside the restorer blob: {stop.describe()}")
        if stop.kind is StopKind.EVENT and stop.event == ptrace.PTRACE_EVENT_CLONE:
            spawned.threads.append(_adopt_thread(ptrace.get_event_msg(leader.pid), pid))
            leader.cont()
            continue
        break
    _check_blob_stop(pid, leader, stop, bootstrap.status_addr, "")
    if len(spawned.threads) != len(spawned.task.threads) - 1:
        raise RestoreFailed(pid, "memory", f"the blob made {len(spawned.threads)} threads, the images have {len(spawned.task.threads) - 1} more")
    for thread, plan_thread, status_addr in zip(spawned.threads, spawned.task.threads[1:], bootstrap.thread_status_addrs[1:]):
        stop = thread.wait_stop()
        if not stop.alive:
            raise RestoreFailed(pid, "memory", f"thread {plan_thread.tid} ended inside the restorer blob: {stop.describe()}")
        _check_blob_stop(pid, thread, stop, status_addr, f"thread {plan_thread.tid}: ")


def _adopt_thread(tid: int, pid: int) -> Tracee:
    """Take a thread the blob just cloned (auto-attached): wait for its first stop, let it run."""
    thread = Tracee(tid)
    thread.seized = True
    stop = thread.wait_stop()
    if not stop.alive:
        raise RestoreFailed(pid, "memory", f"thread {tid} ended as it was created: {stop.describe()}")
    thread.cont()
    return thread


def _check_blob_stop(pid: int, tracee: Tracee, stop, status_addr: int, who: str) -> None:
    raw = tracee.read_memory(status_addr, ctypes.sizeof(abi.BlobStatus))
    status = decode_status(raw)
    if not (stop.kind is StopKind.SIGNAL and stop.signal == signal.SIGTRAP):
        where = status.describe() if not status.ok else "after its last step"
        raise RestoreFailed(pid, "memory", f"{who}unexpected {stop.describe()} in the restorer blob ({where})")
    if not status.ok:
        raise RestoreFailed(pid, "memory", who + status.describe())


def _leave_blob(spawned: SpawnedTask, bootstrap: Bootstrap) -> None:
    """Step every thread through rt_sigreturn, then unmap the bootstrap region; all stay stopped.

    Precondition: every thread is at its int3 stop, with the blob's mask (everything but
    SIGTRAP blocked). Afterwards each holds the application's registers and mask again.

    From each rt_sigreturn's exit on, the thread's own mask is live, while its registers
    are not yet its own for good (the leader still runs munmap at the blob's syscall
    gadget). A signal it lets through there (the itimer the blob armed last, a pending
    signal it queued again) would end in a signal-delivery stop, or in a handler that
    returns into the region we unmap. So, as compel does around its parasite, every signal
    is blocked (PTRACE_SETSIGMASK) from that exit until the region is gone, and the
    application's mask is put back last. Nothing is lost or delivered early: a signal sent
    meanwhile waits in the thread's queue, or in the process's (no thread takes it: all
    are stopped or block it), and the kernel delivers it when a thread that does not block
    it runs again after detach.
    """
    threads = [*spawned.threads, spawned.tracee]
    for thread in spawned.threads:  # their sigframes are in the region: unmap only after
        thread.run_until_syscall_exit(syscalls.NR_RT_SIGRETURN, max_syscalls=1)
        # At the exit stop nothing has been delivered yet: the kernel reports the stop
        # before it looks at pending signals on the way out (kernel/entry/common.c).
        thread.block_signals()
    tracee = spawned.tracee
    # The SIGTRAP of the int3 is not delivered (syscall(0)): the blob's next syscall is
    # rt_sigreturn, and at its exit the registers are the application's.
    app_regs = tracee.run_until_syscall_exit(syscalls.NR_RT_SIGRETURN, max_syscalls=1)
    tracee.block_signals()
    # munmap through the blob's own syscall instruction: at the exit stop rip points into
    # the unmapped region, but we put the application's registers back before it runs.
    # Only the syscall instruction runs, under PTRACE_SYSCALL: nothing traps, so SIGTRAP
    # may stay blocked too (Tracee.singlestep says why that matters).
    regs = tracee.regs
    regs.rip = bootstrap.syscall_gadget
    regs.rax = syscalls.NR_MUNMAP
    regs.rdi = bootstrap.base
    regs.rsi = bootstrap.size
    regs.orig_rax = 0xFFFFFFFFFFFFFFFF
    tracee.regs = regs
    # SIGSTOP cannot be blocked: one sent now is held back and sent again at detach.
    unmap_regs = tracee.run_until_syscall_exit(syscalls.NR_MUNMAP, max_syscalls=1,
                                               defer_signals={signal.SIGSTOP})
    if unmap_regs.rax != 0:
        raise RestoreFailed(spawned.task.pid, "resume", f"munmap of the bootstrap region returned {unmap_regs.rax:#x}")
    tracee.regs = app_regs
    for thread in threads:  # the region is gone: signals may reach the application again
        thread.unblock_signals()
