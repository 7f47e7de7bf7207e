"""Where a task being prepared keeps the fds that are not the image's own.

While a task installs the fds of its image with dup2, it also holds fds of its own: the
parked shared objects it inherited from the root (restore/shared.py), the service fds the
blob reads (pages image, exe, mapped files), its status pipe, and temporaries. None may sit
on a number the images use, or installing an image fd would close it. CRIU puts its service
fds above the task's highest fd, within RLIMIT_NOFILE (criu/servicefd.c); so do we, with the
ranges computed from the plan:

    0 .. image_top-1          the fds of the images (every task)
    per task: service fds     pages, exe, one per mapped file, one per device mapping
                              (ServiceFds, from the task's own highest fd + 1, at least
                              SERVICE_MIN)
    parked_base ..            shared objects: the same numbers in every task (above every
                              task's service fds)
    status_fd, mntns_fd       the status pipe; --pid-ns: the new mount namespace (root)
    temp_base ..              temporaries (files.park: F_DUPFD_CLOEXEC, lowest free number)
    nofile_needed             RLIMIT_NOFILE the tasks need while preparing (temps' headroom)
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Leave low numbers to the task even if its image holds only 0-2: programs expect the next
# open() to give a small number, and small images then keep the numbers they always had.
SERVICE_MIN = 64
# Room for temporaries held at once (a pipe's two ends, a socketpair, a dup being moved).
TEMP_HEADROOM = 64


@dataclass(frozen=True)
class ServiceFds:
    """Fd numbers, above every fd of the task's image, where it leaves files for the blob.

    The blob reads pages through ``pages``, maps files through ``mapped`` and sets the exe
    link from ``exe``, then closes them all; the restored task never sees them.
    """

    pages: int
    exe: int
    mapped: dict[tuple[str, int], int] = field(default_factory=dict)  # (path, open flags) -> fd
    memfds: dict[tuple[str, int], int] = field(default_factory=dict)  # same key -> memfd inode id
    shmems: dict[tuple[str, int], int] = field(default_factory=dict)  # same key -> anon shmem shmid
    # Device mappings (MappedFile.plugin): one fd per VMA, keyed by its start, since a
    # plugin answers each VMA with an fd of its own (CRIU's UPDATE_VMA_MAP); the task puts
    # there what the plugin returns (restore/task.py), after the fds above.
    plugin: dict[int, int] = field(default_factory=dict)

    @staticmethod
    def for_task(task) -> ServiceFds:  # task: plan.model.Task
        base = max(image_top(task), SERVICE_MIN)
        mapped: dict[tuple[str, int], int] = {}
        memfds: dict[tuple[str, int], int] = {}
        shmems: dict[tuple[str, int], int] = {}
        devices = [vma.start for vma in task.vmas if vma.file is not None and vma.file.plugin]
        for vma in task.vmas:
            if vma.file is not None and not vma.file.plugin:
                key = (vma.file.path, vma.file.open_flags)
                if key not in mapped:
                    mapped[key] = base + 2 + len(mapped)
                if vma.file.memfd_inode is not None:
                    memfds[key] = vma.file.memfd_inode
                if vma.file.shmem_id is not None:
                    shmems[key] = vma.file.shmem_id
        first = base + 2 + len(mapped)
        plugin = {start: first + i for i, start in enumerate(devices)}
        return ServiceFds(pages=base, exe=base + 1, mapped=mapped, memfds=memfds, shmems=shmems, plugin=plugin)

    def fd_of(self, vma) -> int | None:  # vma: plan.model.Vma
        """The service fd the blob maps ``vma`` through; None for an anonymous VMA or one
        whose file has no service fd (a caller's bug: the layout is made from the task)."""
        if vma.file is None:
            return None
        if vma.file.plugin:
            return self.plugin.get(vma.start)
        return self.mapped.get((vma.file.path, vma.file.open_flags))

    @property
    def all(self) -> list[int]:
        return [self.pages, self.exe, *self.mapped.values(), *self.plugin.values()]

    @property
    def end(self) -> int:
        """One past the highest service fd."""
        return max(self.all) + 1


def image_top(task) -> int:
    """One past the highest fd the task's image uses (3 at least: 0-2 are always the task's)."""
    return max([f.fd for f in task.files] + [2]) + 1


@dataclass(frozen=True)
class FdLayout:
    """The plan-wide ranges above (no side effect to compute)."""

    parked_base: int
    status_fd: int
    mntns_fd: int
    temp_base: int

    @staticmethod
    def of(plan, nr_parked: int) -> FdLayout:  # plan: plan.model.RestorePlan
        parked_base = max([ServiceFds.for_task(t).end for t in plan.tasks] + [SERVICE_MIN])
        status = parked_base + nr_parked
        return FdLayout(parked_base=parked_base, status_fd=status, mntns_fd=status + 1, temp_base=status + 2)

    @property
    def nofile_needed(self) -> int:
        """The RLIMIT_NOFILE soft limit a task needs while it is prepared."""
        return self.temp_base + TEMP_HEADROOM
