"""The blob's status record (``struct blob_status`` in ``args->status``), decoded and worded.

The blob writes the record before it stops at int3 (abi.h, "status protocol"); the tracer
reads ``STATUS_BYTES`` bytes at ``Bootstrap.status_addr`` and calls :func:`decode_status`.
Every other thread of the task writes a record of its own, in its ``struct blob_thread``:
the tracer reads it the same way at ``Bootstrap.thread_status_addrs[i]`` (entry 0 is
``status_addr``, the leader's). :meth:`BlobStatus.describe` gives one line for logs and
errors::

    ok
    map VMA 7 at 0x7f3de6f89000: EACCES
    read pages batch 3 into 0x7f3de6f86000: pages image ended early (ENODATA)
    create thread 2 (tid 31202): tid in use (EEXIST)
    the blob did not start (no status record)

``index`` and ``addr`` mean what each step says in restorer.c; the phrases below follow it.
"""

from __future__ import annotations

import ctypes
import errno
import resource
from dataclasses import dataclass

from pycriu_restore.blob import abi

STATUS_BYTES = ctypes.sizeof(abi.BlobStatus)

# Step id -> short name (restorer.c's blob_steps[].name).
STEP_NAMES: dict[int, str] = {
    abi.BLOB_STEP_CHECK_ARGS: "check_args",
    abi.BLOB_STEP_BLOCK_SIGNALS: "block_signals",
    abi.BLOB_STEP_UNREGISTER_RSEQ: "unregister_rseq",
    abi.BLOB_STEP_PARK_VDSO: "park_vdso",
    abi.BLOB_STEP_UNMAP_OLD: "unmap_old",
    abi.BLOB_STEP_MAP_VMAS: "map_vmas",
    abi.BLOB_STEP_FILL_PAGES: "fill_pages",
    abi.BLOB_STEP_PROTECT_VMAS: "protect_vmas",
    abi.BLOB_STEP_PLACE_VDSO: "place_vdso",
    abi.BLOB_STEP_CLOSE_FDS: "close_fds",
    abi.BLOB_STEP_SET_MM: "set_mm",
    abi.BLOB_STEP_SIGACTIONS: "sigactions",
    abi.BLOB_STEP_THREAD_STATE: "thread_state",
    abi.BLOB_STEP_RLIMITS: "rlimits",
    abi.BLOB_STEP_PENDING_SIGNALS: "pending_signals",
    abi.BLOB_STEP_ITIMERS: "itimers",
    abi.BLOB_STEP_CREATE_THREADS: "create_threads",
    abi.BLOB_STEP_PERSONALITY: "personality",
    abi.BLOB_STEP_POSIX_TIMERS: "posix_timers",
    abi.BLOB_STEP_SECCOMP: "seccomp",
    abi.BLOB_STEP_CREDS: "creds",
    abi.BLOB_STEP_LATE_PRCTLS: "late_prctls",
    abi.BLOB_STEP_ARM_POSIX_TIMERS: "arm_posix_timers",
}

# What status.index selects in steps that do several different things (restorer.c).
_CHECK_ARGS_FIELDS = ("flags", "exit_code", "bootstrap region", "thread count",
                      "page read batch", "thread descriptor", "thread creds", "thread seccomp filters",
                      "posix timers", "fill workers")
_CHECK_THREAD = (5, 6, 7)          # status.index of a bad per-thread item; addr: the thread's index
_UNMAP_PARTS = ("below the bootstrap region", "above the bootstrap region")
_SET_MM_CALLS = ("PR_SET_MM_MAP", "close the exe fd", "PR_SET_THP_DISABLE", "PR_SET_DUMPABLE")
_THREAD_CALLS = ("set_robust_list", "ARCH_SET_FS", "ARCH_SET_GS", "register rseq", "PR_SET_NAME")
_ITIMERS = ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")
# restorer.c set_thread_creds(): status.index -> the call; addr is the id or capability.
_CREDS_CALLS = ("setgroups", "PR_SET_SECUREBITS(SECBIT_NO_SETUID_FIXUP)", "setresuid", "setfsuid",
                "setresgid", "setfsgid", "PR_SET_SECUREBITS", "PR_CAPBSET_DROP", "capset",
                "PR_CAP_AMBIENT", "PR_SET_NO_NEW_PRIVS")
_CREDS_ADDR = ("groups", "bits", "uid", "fsuid", "gid", "fsgid", "bits", "capability", None,
               "capability", None)
_LATE_PRCTLS = ("PR_SET_DUMPABLE", "PR_SET_PDEATHSIG", "PR_SET_CHILD_SUBREAPER")
_TIMER_PRCTL = {0xFFFF_FFFF: "turn on", 0xFFFF_FFFE: "turn off"}  # step POSIX_TIMERS' prctl calls
_RLIMIT_NAMES = {getattr(resource, name): name for name in dir(resource) if name.startswith("RLIMIT_")}


def _pick(names: tuple[str, ...], index: int) -> str:
    return names[index] if index < len(names) else f"#{index}"


@dataclass(frozen=True)
class BlobStatus:
    """The decoded record. ``started`` is False while the magic is absent (the blob never
    got to write it); ``state`` is one of abi.BLOB_STATE_*."""

    started: bool
    state: int
    step: int
    err: int
    index: int
    addr: int

    @property
    def ok(self) -> bool:
        """Every step succeeded: the task may be stepped into rt_sigreturn."""
        return self.started and self.state == abi.BLOB_STATE_OK

    @property
    def failed(self) -> bool:
        """A step failed; ``step``, ``err``, ``index`` and ``addr`` say which and why."""
        return self.started and self.state == abi.BLOB_STATE_FAILED

    @property
    def step_name(self) -> str:
        return STEP_NAMES.get(self.step, f"step {self.step}")

    def what(self) -> str:
        """The object the step was working on, in words ("map VMA 7 at 0x7f...")."""
        i, a = self.index, self.addr
        phrases = {
            abi.BLOB_STEP_CHECK_ARGS: lambda: f"check arguments ({_pick(_CHECK_ARGS_FIELDS, i)}"
                                              + (f" {a})" if i in _CHECK_THREAD else ")"),
            abi.BLOB_STEP_BLOCK_SIGNALS: lambda: "block signals",
            abi.BLOB_STEP_UNREGISTER_RSEQ: lambda: f"unregister the old rseq area at {a:#x}",
            abi.BLOB_STEP_PARK_VDSO: lambda: f"park vdso area {i} from {a:#x}",
            abi.BLOB_STEP_UNMAP_OLD: lambda: f"unmap the old memory {_pick(_UNMAP_PARTS, i)}",
            abi.BLOB_STEP_MAP_VMAS: lambda: f"map VMA {i} at {a:#x}",
            abi.BLOB_STEP_FILL_PAGES: lambda: f"read pages batch {i} into {a:#x}",
            abi.BLOB_STEP_PROTECT_VMAS: lambda: f"mprotect/madvise VMA {i} at {a:#x}",
            abi.BLOB_STEP_PLACE_VDSO: lambda: f"move vdso area {i} to {a:#x}",
            abi.BLOB_STEP_CLOSE_FDS: lambda: f"close service fd {a}",
            abi.BLOB_STEP_SET_MM: lambda: _pick(_SET_MM_CALLS, i),
            abi.BLOB_STEP_SIGACTIONS: lambda: f"set the action of signal {i} (handler {a:#x})",
            abi.BLOB_STEP_THREAD_STATE: lambda: f"{_pick(_THREAD_CALLS, i)} ({a:#x})",
            abi.BLOB_STEP_RLIMITS: lambda: f"set {_RLIMIT_NAMES.get(i, f'rlimit {i}')}",
            abi.BLOB_STEP_PENDING_SIGNALS: lambda: f"queue pending signal {i} (signal {a})",
            abi.BLOB_STEP_ITIMERS: lambda: f"arm {_pick(_ITIMERS, i)}",
            abi.BLOB_STEP_CREATE_THREADS: lambda: f"create thread {i} (tid {a})",
            abi.BLOB_STEP_PERSONALITY: lambda: f"set personality {a:#x}",
            abi.BLOB_STEP_POSIX_TIMERS: lambda: (f"{_TIMER_PRCTL[i]} PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15+)"
                                                 if i in _TIMER_PRCTL else f"create POSIX timer {i} (id {a})"),
            abi.BLOB_STEP_SECCOMP: lambda: f"install seccomp filter {i} (program at {a:#x})",
            abi.BLOB_STEP_CREDS: lambda: _pick(_CREDS_CALLS, i) + (
                f" ({_CREDS_ADDR[i]} {a})" if i < len(_CREDS_ADDR) and _CREDS_ADDR[i] else ""),
            abi.BLOB_STEP_LATE_PRCTLS: lambda: f"{_pick(_LATE_PRCTLS, i)} ({a})",
            abi.BLOB_STEP_ARM_POSIX_TIMERS: lambda: f"arm POSIX timer {i} (id {a})",
        }
        phrase = phrases.get(self.step)
        return phrase() if phrase else f"step {self.step} (object {i} at {a:#x})"

    def describe(self) -> str:
        """One line: "ok", the failed step with its object and errno, or how far it got."""
        if not self.started:
            return "the blob did not start (no status record)"
        if self.state == abi.BLOB_STATE_OK:
            return "ok"
        if self.state == abi.BLOB_STATE_RUNNING:
            # index/addr are only meaningful once a step failed: name the step alone.
            return f"the blob stopped during step {self.step_name} (it crashed or was killed)"
        what = self.what()
        name = errno.errorcode.get(self.err, f"errno {self.err}")
        if self.step == abi.BLOB_STEP_FILL_PAGES and self.err == errno.ENODATA:
            name = "pages image ended early (ENODATA)"
        elif self.step == abi.BLOB_STEP_CHECK_ARGS and self.err == errno.EPROTO:
            what = "check arguments"
            name = f"args written for another ABI version (EPROTO; this blob is {abi.BLOB_ABI_VERSION})"
        elif self.step == abi.BLOB_STEP_CREATE_THREADS and self.err == errno.EEXIST:
            name = "tid in use (EEXIST)"
        elif self.step == abi.BLOB_STEP_CREATE_THREADS and self.err == errno.ESRCH:
            name = "clone3 gave another tid (ESRCH)"
        elif self.step == abi.BLOB_STEP_POSIX_TIMERS and self.err == errno.ESRCH:
            name = "the kernel gave another id (ESRCH)"
        elif self.step == abi.BLOB_STEP_CHECK_ARGS and self.err == errno.EBADMSG:
            what = "check arguments"
            name = "args size differs from the blob's (EBADMSG)"
        return f"{what}: {name}"


def decode_status(raw: bytes) -> BlobStatus:
    """Decode the first STATUS_BYTES of ``raw`` (read at Bootstrap.status_addr).

    A record whose magic is not BLOB_STATUS_MAGIC decodes as ``started=False`` (the
    region is written with a zero status, so the blob never ran its first line).
    """
    if len(raw) < STATUS_BYTES:
        raise AssertionError(f"decode_status: {len(raw)} bytes, a status record is {STATUS_BYTES}")
    rec = abi.BlobStatus.from_buffer_copy(bytes(raw[:STATUS_BYTES]))
    return BlobStatus(started=rec.magic == abi.BLOB_STATUS_MAGIC, state=rec.state, step=rec.step,
                      err=rec.err, index=rec.index, addr=rec.addr)
