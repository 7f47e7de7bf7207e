"""Errors of the restore itself: the machine does not match the images, or a task failed.

``EnvironmentMismatch`` (exit 4) is found before anything is changed: a pid in use, a file
that is missing or differs from the one dumped. ``RestoreFailed`` (exit 5) happens while
tasks exist; by the time it reaches the caller every task made so far has been killed.
"""

from __future__ import annotations

from pycriu_restore.errors import EXIT_ENVIRONMENT, EXIT_RESTORE, PycrestoreError


class EnvironmentMismatch(PycrestoreError):
    """The machine does not match what the images expect."""

    exit_code = EXIT_ENVIRONMENT


class PidTaken(EnvironmentMismatch):
    """A pid the images need is already used by another process."""

    def __init__(self, pid: int, holder: str) -> None:
        self.pid = pid
        super().__init__(
            f"pid {pid} is in use by {holder}: the task must get its checkpointed pid; "
            "stop that process or restore with --pid-ns (a new pid namespace, where pids cannot collide)"
        )


class PidAboveMax(EnvironmentMismatch):
    """A pid the images need is not below the kernel's pid_max, so clone3 cannot make it."""

    def __init__(self, pid: int, pid_max: int, needed: int, pid_ns_helps: bool) -> None:
        self.pid = pid
        self.pid_max = pid_max
        super().__init__(
            f"pid {pid} is not below kernel.pid_max {pid_max}: the task must get its checkpointed pid; "
            f"raise the limit first: sysctl kernel.pid_max={needed}"
            + (" (or restore with --pid-ns: a new pid namespace has a pid_max of its own)" if pid_ns_helps else "")
        )


class SeccompNotSuspendable(EnvironmentMismatch):
    """The images have seccomp filters, and this process may not suspend them in its tracees."""

    def __init__(self, pid: int, cause: str) -> None:
        self.pid = pid
        super().__init__(
            f"task {pid} was dumped under seccomp, and pycrestore {cause}: stepping the task after the blob "
            "installs its filters needs PTRACE_O_SUSPEND_SECCOMP, which the kernel grants only to a tracer with "
            "CAP_SYS_ADMIN in the initial user namespace and no seccomp filter of its own; run pycrestore as root "
            "on the host, outside any seccomp sandbox"
        )


class FileMismatch(EnvironmentMismatch):
    """A file the images name is missing or not the one that was dumped."""

    def __init__(self, path: str, cause: str) -> None:
        self.path = path
        super().__init__(f"{path}: {cause}")


class MissingPrivilege(EnvironmentMismatch):
    """The images ask for credentials this process cannot give (restore/privileges.py)."""


class RestoreFailed(PycrestoreError):
    """A step of the restore failed after tasks were created (they have been killed)."""

    exit_code = EXIT_RESTORE

    def __init__(self, pid: int, step: str, cause: str) -> None:
        self.pid = pid
        self.step = step
        super().__init__(f"task {pid}: {step}: {cause}")


class LimitTooLow(EnvironmentMismatch):
    """A limit of this machine or process (RLIMIT_NOFILE, memory, vm.max_map_count) is below
    what the restore needs: found before anything is created (restore/preflight.py)."""

    def __init__(self, limit: str, value: str, needed: str, fix: str) -> None:
        self.limit = limit
        super().__init__(f"{limit} is {value}, the restore needs {needed}: {fix}")
