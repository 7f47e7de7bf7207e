"""Checks of the machine against the plan, run before the first fork (nothing is changed).

CRIU makes the same checks when it opens each file (files-reg.c): a regular file must have
its dumped size, except files opened O_APPEND (logs grow), and a mapped ELF file must
carry the dumped GNU build-id. A changed binary mapped into a restored process would run
with the old process's data and crash far from the cause, so this fails early and says why.
"""

from __future__ import annotations

import os
import stat

from pycriu_restore.linux.pidusers import pid_users
from pycriu_restore.plan.model import MappedFile, OpenFile, RestorePlan, Task
from pycriu_restore.restore.errors import FileMismatch, PidAboveMax, PidTaken, SeccompNotSuspendable
from pycriu_restore.restore import limits
from pycriu_restore.restore.build_id import elf_build_id

PID_MAX_PATH = "/proc/sys/kernel/pid_max"
# <linux/threads.h>: PID_MAX_LIMIT on 64-bit, the most kernel.pid_max can be.
PID_MAX_LIMIT = 4 * 1024 * 1024
# Since Linux 6.14 every pid namespace has its own pid_max, and a new one starts at
# PID_MAX_LIMIT whatever its parent's is (kernel/pid_namespace.c: create_pid_namespace;
# seen on 6.18: 4194304 inside `unshare -p` with the host at 32768). clone3's set_tid is
# checked against the pid_max of the namespace it names (kernel/pid.c: alloc_pid).
PER_PIDNS_PID_MAX_SINCE = (6, 14)
# <linux/capability.h>; the user namespace every other descends from (include/linux/proc_ns.h).
CAP_SYS_ADMIN = 21
INIT_USER_NS = "user:[4026531837]"


def check_plan(plan: RestorePlan, new_pid_ns: bool) -> None:
    """Raise EnvironmentMismatch for the first thing on this machine that differs from the plan."""
    _check_pid_max(plan, new_pid_ns)
    limits.check_limits(plan)  # RLIMIT_NOFILE, the images' rlimits, memory, vm.max_map_count
    _check_seccomp_suspendable(plan)
    if not new_pid_ns:
        for task in plan.tasks:
            for tid in _ids(task):
                _check_pid_free(tid)
    seen: set[str] = set()
    for task in plan.live_tasks:  # a zombie has no files, mappings or directories
        for f in task.files:
            if isinstance(f, OpenFile):  # pipes are created anew: nothing to check
                _check_open_file(f.path, f.expected_size, f.expected_mode)
        for mapped in [task.mm.exe] + [v.file for v in task.vmas if v.file is not None]:
            # memfds and anon shmem are made anew; a device mapping maps what its plugin gives
            made_anew = mapped.memfd_inode is not None or mapped.shmem_id is not None or mapped.plugin
            if not made_anew and mapped.path not in seen:
                seen.add(mapped.path)
                check_mapped_file(mapped)
        for d in (task.cwd, task.root):
            if not os.path.isdir(d):
                raise FileMismatch(d, "directory missing (it is the task's cwd or root)")


def _check_pid_max(plan: RestorePlan, new_pid_ns: bool) -> None:
    """Every pid and tid must be below the pid_max that applies where the tasks are made:
    ours, or with --pid-ns the new namespace's (see PER_PIDNS_PID_MAX_SINCE)."""
    per_pidns = _kernel_version() >= PER_PIDNS_PID_MAX_SINCE
    pid_max = PID_MAX_LIMIT if new_pid_ns and per_pidns else _read_pid_max()
    highest = max(tid for task in plan.tasks for tid in _ids(task))
    if highest >= pid_max:
        raise PidAboveMax(highest, pid_max, needed=highest + 1, pid_ns_helps=per_pidns and not new_pid_ns)


def _ids(task: Task) -> list[int]:
    """The pids and tids a task takes: a zombie has no threads, but it has its pid."""
    return [task.pid] + [thread.tid for thread in task.threads if thread.tid != task.pid]


def _read_pid_max() -> int:
    with open(PID_MAX_PATH, encoding="ascii") as f:
        return int(f.read())


def _kernel_version() -> tuple[int, int]:
    """(major, minor) of the running kernel, from uname(2)'s release ("6.18.44-...")."""
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _check_seccomp_suspendable(plan: RestorePlan) -> None:
    """A task dumped under seccomp is seized with PTRACE_O_SUSPEND_SECCOMP (restore/tree.py),
    which the kernel refuses (EPERM) unless we have CAP_SYS_ADMIN in the initial user
    namespace and no seccomp of our own (kernel/ptrace.c: check_ptrace_options)."""
    task = next((t for t in plan.tasks if any(th.seccomp_mode for th in t.threads)), None)
    if task is None:
        return
    status = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    if not int(status["CapEff"], 16) >> CAP_SYS_ADMIN & 1:
        raise SeccompNotSuspendable(task.pid, "lacks CAP_SYS_ADMIN")
    if os.readlink("/proc/self/ns/user") != INIT_USER_NS:
        raise SeccompNotSuspendable(task.pid, "runs in a user namespace of its own")
    if status.get("Seccomp", "0") != "0":
        raise SeccompNotSuspendable(task.pid, f"runs under seccomp itself (mode {status['Seccomp']})")


def _check_pid_free(pid: int) -> None:
    """The pid must be free: no task has it, and no process uses it as its session or
    process group id (which keeps the number allocated: linux/pidusers.py)."""
    holder = pid_users(pid)
    if holder is not None:
        raise PidTaken(pid, holder)


def _check_open_file(path: str, expected_size: int | None, expected_mode: int | None) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise FileMismatch(path, "missing (an open file of the checkpoint)") from err
    except OSError as err:
        raise FileMismatch(path, f"cannot stat: {err.strerror}") from err
    if expected_mode is not None and stat.S_IFMT(st.st_mode) != stat.S_IFMT(expected_mode):
        raise FileMismatch(path, f"file type changed: mode {st.st_mode:#o}, dumped {expected_mode:#o}")
    if expected_size is not None and st.st_size != expected_size:
        raise FileMismatch(path, f"size is {st.st_size} bytes, dumped with {expected_size}")


def check_mapped_file(mapped: MappedFile) -> None:
    """A file a VMA maps (or the exe): present, same size, same ELF build-id."""
    _check_open_file(mapped.path, mapped.expected_size, None)
    if mapped.build_id is None:
        return
    found = elf_build_id(mapped.path)
    if found != mapped.build_id:
        raise FileMismatch(
            mapped.path,
            f"ELF build-id is {found.hex() if found else 'absent'}, dumped {mapped.build_id.hex()} (the binary was rebuilt or replaced)",
        )
