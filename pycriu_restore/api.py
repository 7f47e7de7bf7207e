"""The public entry: ``pycriu_restore.restore(images_dir, **options)``.

``pycrestore restore`` (cli.py) and ``pycrestore swrk`` (rpc/service.py, CRIU's RPC) are
thin shells over this function. It returns a :class:`RestoreResult` (the restored pids,
each stage's duration, CRIU's restore statistics) and raises the package's errors
(``PycrestoreError`` subclasses, each with ``exit_code``: 2 bad image, 3 unsupported, 4 the
machine does not match, 5 the restore failed); whatever it raises, nothing restored is
left running.

Threads. The orchestrator forks the restored tasks with a raw ``clone3`` (for set_tid) and
holds them under ptrace, which belongs to one thread. A raw clone3 in a process that runs
other threads is unsafe: glibc's ``fork()`` takes its malloc and stdio locks around the
fork, a raw syscall does not, so a child made while another thread holds one of them
deadlocks in its first ``malloc`` (linux/clone3.py: "no other thread holds a lock the child
will need"). So when the calling process has more than one thread (a thread pool, asyncio's
default executor, a program's own workers), the restore runs in a *helper*: a single-
threaded copy made with ``os.fork()`` (glibc's fork, which resets those locks), which runs
the orchestrator on its only thread and forks the root task with CLONE_PARENT, so that the
root still becomes the caller's child exactly as in-process. The helper sends each notify
point to the caller over a pipe, the caller runs the callback on the thread that called
``restore()`` and answers; at the end the helper sends the result or the error, and exits.
From asyncio: ``await loop.run_in_executor(None, functools.partial(restore, d, ...))``.

Notify callbacks (``on_notify``) get CRIU's point names (restore/notify.py) in CRIU's order:
pre-restore, setup-namespaces, post-setup-namespaces, post-restore, [network-unlock],
pre-resume, post-resume. Raising at the first four aborts the restore (``NotifyFailed``,
exit 5, the callback's exception as its cause); at pre-resume and post-resume the error is
logged and the restore goes on, as CRIU does with its action scripts.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import pickle
import struct
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycriu_restore.errors import EXIT_ENVIRONMENT, EXIT_RESTORE, EXIT_UNSUPPORTED, PycrestoreError
from pycriu_restore.restore.notify import NON_FATAL, Notify

log = logging.getLogger("pycrestore")

NotifyCallback = Callable[[str, "int | None"], None]


class NotifyFailed(PycrestoreError):
    """A notify callback (or the RPC client's answer) failed at a point that aborts the restore."""

    exit_code = EXIT_RESTORE

    def __init__(self, point: str, cause: str) -> None:
        self.point = point
        super().__init__(f"notify {point}: {cause}: restore aborted, every task killed")


class OptionUnsupported(PycrestoreError):
    """A CRIU option that exists but that pycrestore does not restore yet (exit 3)."""

    exit_code = EXIT_UNSUPPORTED


class InheritFdInvalid(PycrestoreError):
    """An --inherit-fd names an fd this process does not have open (exit 4: the caller's setup)."""

    exit_code = EXIT_ENVIRONMENT


class RootInvalid(PycrestoreError):
    """--root names no directory (exit 4: the caller's setup)."""

    exit_code = EXIT_ENVIRONMENT


class HelperFailed(PycrestoreError):
    """The helper process that ran the restore for a threaded caller died or broke the protocol."""

    exit_code = EXIT_RESTORE


@dataclass(frozen=True)
class RestoreStats:
    """CRIU's restore statistics (images/proto/stats.proto RestoreStatsEntry), times in µs."""

    pages_compared: int  # CRIU: pages compared with a parent image (--auto-dedup); always 0 here
    pages_skipped_cow: int  # CRIU: pages shared copy-on-write with a parent task; always 0 here
    forking_time_us: int  # the FORK stage
    restore_time_us: int  # the whole restore, PLAN to RESUME
    pages_restored: int  # present pages written into the tasks by the blobs


@dataclass(frozen=True)
class RestoreResult:
    """A restore that succeeded: the tasks run, detached (the root is the caller's child
    unless ``restore_sibling``, ``pid_ns`` puts an init between them)."""

    root_pid: int  # the root task's pid in the caller's pid namespace
    pids: dict[int, int]  # checkpointed pid -> pid in the caller's namespace (zombies included)
    timings_ms: dict[str, float]  # stage name (restore/timeline.py) -> milliseconds
    stats: RestoreStats
    init_pid: int | None = None  # pid_ns: the namespace's init, in the caller's namespace
    warnings: tuple[str, ...] = ()

    @property
    def total_ms(self) -> float:
        return sum(self.timings_ms.values())


@dataclass(frozen=True)
class InheritFd:
    """CRIU's --inherit-fd fd[N]:RESOURCE: use the caller's fd N for RESOURCE (pipe:[ino], ...)."""

    fd: int
    resource: str


def restore(images_dir: str | os.PathLike[str], *,
            restore_detached: bool = True,
            pid_ns: bool = False,
            cpu_cap: str = "fpu",
            tcp_established: bool = False,
            shell_job: bool = False,
            restore_sibling: bool = False,
            root: str | None = None,
            inherit_fd: Sequence[InheritFd] = (),
            external: Sequence[str] = (),
            orphan_pts_master: bool = False,
            work_dir: str | os.PathLike[str] | None = None,
            pidfile: str | os.PathLike[str] | None = None,
            gpu_backend: str = "kfd",
            parallel_gpu: bool = True,
            on_notify: NotifyCallback | None = None,
            isolate: bool | None = None) -> RestoreResult:
    """Restore the checkpoint in ``images_dir``; return once every task runs.

    Options have the CLI's (and CRIU's) names and meanings: ``pid_ns`` (a new pid namespace
    under a small init), ``cpu_cap`` (CRIU's --cpu-cap values, comma-separated),
    ``tcp_established``, ``shell_job``, ``restore_sibling`` (the root becomes the child of
    our parent: CLONE_PARENT), ``work_dir`` (stats-restore is written there, as CRIU writes
    it into its work dir), ``pidfile`` (the root's pid, written after success),
    ``gpu_backend``/``parallel_gpu`` (the amdgpu plugin), ``external`` (CRIU's --external
    KEY[...]:VALUE: veth[IFNAME]:HOSTNAME for a network namespace, netns/), ``root``
    (CRIU's --root: every path of the images under that directory, which becomes the tasks'
    "/"; plan/reroot.py), ``inherit_fd`` (CRIU's --inherit-fd: our fd N in place of the file
    named RESOURCE, ``pipe:[INO]``, ``socket:[INO]``, ``file[MNT:INODE]`` or a path without
    the leading "/"; files/inherited.py; N must be open here). ``orphan_pts_master`` is a CRIU option
    pycrestore does not restore yet: given, it raises :class:`OptionUnsupported` before
    anything is done.
    ``restore_detached`` must be True: a library call returns once the tasks run (wait for
    ``result.root_pid`` yourself; it is your child).

    ``on_notify(point, pid)`` is called at CRIU's notify points (module docstring).
    ``isolate``: None (default) runs the restore in a single-threaded helper process when
    this process has other threads, True always, False never (then no other thread may run:
    the caller vouches for it). Needs root.
    """
    from pycriu_restore.restore.cpucap import parse_cpu_cap

    if not restore_detached:
        raise ValueError("restore(restore_detached=False): a library call returns once the tasks run; "
                         "wait for result.root_pid (your child) yourself")
    _refuse_unsupported(orphan_pts_master=orphan_pts_master)
    _check_inherit_fd(inherit_fd)
    try:
        caps = parse_cpu_cap(cpu_cap)
    except ValueError as err:
        raise OptionUnsupported(f"cpu_cap {cpu_cap!r}: {err}") from err
    if isolate is None:
        isolate = _threads_in_this_process() > 1
    job = _Job(images_dir=os.fspath(images_dir), pid_ns=pid_ns, cpu_cap=caps, tcp_established=tcp_established,
               shell_job=shell_job, restore_sibling=restore_sibling, external=tuple(external),
               work_dir=os.fspath(work_dir) if work_dir is not None else None,
               gpu_backend=gpu_backend, parallel_gpu=parallel_gpu,
               inherit_fd=tuple((i.fd, i.resource) for i in inherit_fd),
               root=_check_root(root))
    if isolate:
        if restore_sibling:
            raise ValueError("restore(restore_sibling=True) cannot run in a helper process (isolate): the helper "
                             "already uses CLONE_PARENT to make the root the caller's child")
        result = _run_in_helper(job, on_notify)
    else:
        result = _run_here(job, on_notify)
    if pidfile is not None:
        with open(pidfile, "w") as f:
            f.write(f"{result.root_pid}\n")
    return result


def _refuse_unsupported(*, orphan_pts_master: bool) -> None:
    """Refuse CRIU options that would change the restore in ways pycrestore does not do yet."""
    if orphan_pts_master:
        raise OptionUnsupported("--orphan-pts-master: pycrestore does not yet hand a pty master to the caller")


def _check_root(root: str | None) -> str | None:
    """--root DIR as an absolute path (None for none or "/"); DIR must be a directory."""
    if root is None or os.path.realpath(root) == "/":
        return None
    if not os.path.isdir(root):
        raise RootInvalid(f"--root {root}: not a directory")
    return os.path.abspath(root)


def _check_inherit_fd(inherit_fd: Sequence[InheritFd]) -> None:
    """Each --inherit-fd names an open fd of ours and a RESOURCE (before anything is done)."""
    for i in inherit_fd:
        if not i.resource:
            raise InheritFdInvalid(f"--inherit-fd fd[{i.fd}]: empty RESOURCE (e.g. pipe:[12345] or a path)")
        try:
            os.fstat(i.fd)
        except OSError as err:
            raise InheritFdInvalid(f"--inherit-fd fd[{i.fd}]:{i.resource}: fd {i.fd} is not open in this "
                                   f"process ({err.strerror}): the caller must pass it open") from err


def _threads_in_this_process() -> int:
    """Threads of this process right now, C threads included (proc(5): /proc/self/task)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


@dataclass(frozen=True)
class _Job:
    """What the orchestrator needs, in a form a helper process can be given (picklable)."""

    images_dir: str
    pid_ns: bool
    cpu_cap: Any
    tcp_established: bool
    shell_job: bool
    restore_sibling: bool
    external: tuple[str, ...]
    work_dir: str | None
    gpu_backend: str
    parallel_gpu: bool
    inherit_fd: tuple[tuple[int, str], ...] = ()  # (our fd, RESOURCE); a forked helper has the same fds
    root: str | None = None  # --root: an absolute directory, or None


def _run_here(job: _Job, on_notify: NotifyCallback | None) -> RestoreResult:
    """Run the orchestrator on this thread (this process must have no other thread)."""
    from pycriu_restore.restore.orchestrator import RestoreOptions
    from pycriu_restore.restore.orchestrator import restore as orchestrate

    def notify(point: Notify, pid: int | None) -> None:
        if on_notify is None:
            return
        try:
            on_notify(point.value, pid)
        except Exception as err:  # noqa: BLE001 - any callback error is the caller's answer "no"
            if point in NON_FATAL:
                log.warning("notify %s: %s (ignored at this point, as CRIU does)", point.value, err)
                return
            raise NotifyFailed(point.value, f"{type(err).__name__}: {err}") from err

    restored = orchestrate(job.images_dir, RestoreOptions(
        pid_ns=job.pid_ns, gpu_backend=job.gpu_backend, parallel_gpu=job.parallel_gpu, cpu_cap=job.cpu_cap,
        tcp_established=job.tcp_established, shell_job=job.shell_job, restore_sibling=job.restore_sibling,
        external=job.external, inherit_fd=job.inherit_fd, root=job.root,
        on_notify=notify))
    durations = restored.timeline.durations_ms
    from pycriu_restore.restore.timeline import Stage

    stats = RestoreStats(pages_compared=0, pages_skipped_cow=0,
                         forking_time_us=int(durations.get(Stage.FORK, 0.0) * 1000),
                         restore_time_us=int(restored.timeline.total_ms * 1000),
                         pages_restored=sum(v.nr_present_pages for t in restored.plan.tasks for v in t.vmas))
    result = RestoreResult(root_pid=restored.root_pid, pids=dict(restored.pids),
                           timings_ms={stage.value: ms for stage, ms in durations.items()},
                           stats=stats, init_pid=restored.init_pid)
    if job.work_dir is not None:
        write_stats(job.work_dir, stats)
    return result


def write_stats(directory: str, stats: RestoreStats) -> str:
    """Write ``stats-restore`` into ``directory`` as CRIU does (write_stats(RESTORE_STATS)); return its path."""
    from pycriu_restore.images.image import Image, dump_image
    from pycriu_restore.images.kinds import kind_by_name
    from pycriu_restore.images.schemas import stats_pb2

    entry = stats_pb2.StatsEntry()
    entry.restore.CopyFrom(stats_pb2.RestoreStatsEntry(
        pages_compared=stats.pages_compared, pages_skipped_cow=stats.pages_skipped_cow,
        forking_time=min(stats.forking_time_us, 0xFFFFFFFF), restore_time=min(stats.restore_time_us, 0xFFFFFFFF),
        pages_restored=stats.pages_restored))
    path = os.path.join(directory, "stats-restore")
    data = dump_image(Image(kind=kind_by_name("STATS"), entries=[entry]))
    with open(path, "wb") as f:
        f.write(data)
    return path


# --- the helper process -------------------------------------------------------------
#
# Messages are length-prefixed pickles (4-byte little-endian length), helper -> caller:
#   ("notify", point, pid)       the caller runs on_notify and answers ("ok", None) or ("fail", text)
#   ("done", RestoreResult)      then the helper exits 0
#   ("error", ErrorRecord)       then the helper exits 1 (its tasks are killed already)
# Both ends are this same program (a fork), so pickle carries no foreign data.

_LEN = struct.Struct("<I")
MAX_MESSAGE_BYTES = 1 << 24


@dataclass(frozen=True)
class _ErrorRecord:
    """A PycrestoreError (or a bug) as it crosses from the helper to the caller."""

    module: str
    qualname: str
    message: str
    state: dict[str, Any] = field(default_factory=dict)
    traceback_text: str = ""
    root_pid: int | None = None


def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int) -> object | None:
    """One message, or None at end of file."""
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return None
    (length,) = _LEN.unpack(head)
    if length > MAX_MESSAGE_BYTES:
        raise HelperFailed(f"restore helper: message of {length} bytes, at most {MAX_MESSAGE_BYTES} expected")
    body = _read_exact(fd, length)
    if body is None:
        raise HelperFailed(f"restore helper: message cut short (expected {length} bytes)")
    return pickle.loads(body)


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None if got == 0 else b"".join(chunks)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _run_in_helper(job: _Job, on_notify: NotifyCallback | None) -> RestoreResult:
    """Fork a single-threaded helper that restores with CLONE_PARENT; serve its notify points."""
    to_caller_r, to_caller_w = os.pipe2(os.O_CLOEXEC)
    to_helper_r, to_helper_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()  # glibc's fork: its atfork handlers reset malloc/stdio locks in the child
    if pid == 0:  # pragma: no cover - runs in the helper, reported through the pipe
        os.close(to_caller_r)
        os.close(to_helper_w)
        _helper_main(job, to_caller_w, to_helper_r, on_notify is not None)
    os.close(to_caller_w)
    os.close(to_helper_r)
    callback_error: BaseException | None = None
    try:
        while True:
            msg = _recv(to_caller_r)
            if msg is None:
                raise HelperFailed(f"restore helper {pid} ended without an answer")
            kind = msg[0]
            if kind == "notify":
                _, point, notify_pid = msg
                try:
                    if on_notify is not None:
                        on_notify(point, notify_pid)
                    _send(to_helper_w, ("ok", None))
                except Exception as err:  # noqa: BLE001 - sent to the helper as the answer "no"
                    callback_error = err
                    _send(to_helper_w, ("fail", f"{type(err).__name__}: {err}"))
            elif kind == "done":
                return msg[1]
            elif kind == "error":
                raise _rebuild_error(msg[1], callback_error)
            else:
                raise HelperFailed(f"restore helper {pid}: unexpected message {kind!r}")
    finally:
        os.close(to_caller_r)
        os.close(to_helper_w)
        os.waitpid(pid, 0)


def _helper_main(job: _Job, out_fd: int, in_fd: int, has_callback: bool) -> None:
    """The helper: restore on its only thread, the root made our parent's child; never returns."""
    code = 1
    try:
        def proxy(point: str, pid: int | None) -> None:
            _send(out_fd, ("notify", point, pid))
            answer = _recv(in_fd)
            if answer is None:
                raise HelperFailed("the caller went away during the restore")
            if answer[0] != "ok":
                raise RuntimeError(answer[1])

        result = _run_here(dataclasses.replace(job, restore_sibling=True), proxy if has_callback else None)
        _send(out_fd, ("done", result))
        code = 0
    except BaseException as err:  # noqa: BLE001 - everything must reach the caller
        try:
            _send(out_fd, ("error", _record_error(err, None if job.pid_ns else _dead_sibling_root(job.images_dir))))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _dead_sibling_root(images_dir: str) -> int | None:
    """In the helper after a failure: the root's pid if it was made (as our parent's child) and
    now waits, a zombie, for that parent to reap it; else None (proc(5): stat fields 3 and 4)."""
    try:
        from pycriu_restore.images import ImageSet
        from pycriu_restore.plan.build import build_plan

        pid = build_plan(ImageSet.open(images_dir)).root.pid
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except Exception:  # noqa: BLE001 - bad images or no such task: nothing to reap
        return None
    return pid if fields[0] == "Z" and int(fields[1]) == os.getppid() else None


def _record_error(err: BaseException, root_pid: int | None) -> _ErrorRecord:
    cls = type(err)
    state: dict[str, Any] = {}
    for key, value in vars(err).items():
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - drop what cannot cross
            continue
        state[key] = value
    message = err.message if isinstance(err, PycrestoreError) else f"{cls.__name__}: {err}"
    return _ErrorRecord(module=cls.__module__, qualname=cls.__qualname__, message=message, state=state,
                        traceback_text="".join(traceback.format_exception(err)), root_pid=root_pid)


def _rebuild_error(rec: _ErrorRecord, callback_error: BaseException | None) -> PycrestoreError:
    """The helper's error as the same PycrestoreError class in this process, or HelperFailed for a bug."""
    _reap_sibling_root(rec.root_pid)
    cls: Any = None
    try:
        cls = getattr(importlib.import_module(rec.module), rec.qualname)
    except (ImportError, AttributeError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, PycrestoreError):
        err = cls.__new__(cls)
        Exception.__init__(err, rec.message)
        err.__dict__.update(rec.state)
        err.message = rec.message
        err.context = rec.state.get("context", {})
    else:
        err = HelperFailed(f"restore helper: {rec.message}\n{rec.traceback_text}")
    if callback_error is not None:
        err.__cause__ = callback_error
    return err


def _reap_sibling_root(root_pid: int | None) -> None:
    """After a failed restore in the helper, the killed root (born our child) waits to be reaped."""
    if root_pid is None:
        return
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            got, _ = os.waitpid(root_pid, os.WNOHANG)
        except ChildProcessError:
            return  # not our child (it was never made, or someone else's pid)
        if got:
            return
        time.sleep(0.01)

