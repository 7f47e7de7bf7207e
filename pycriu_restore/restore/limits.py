"""The limits a restore must fit in, checked in the preflight, before anything is created.

Each check compares one limit with what the plan needs and raises ``LimitTooLow`` (exit 4)
as one line: which limit, its value, what is needed, how to get it. Without them the same
restores failed late and unnamed: a low RLIMIT_NOFILE as ``EBADF`` or a refusal inside a
forked task, a hard limit the dumped task had above ours as ``set RLIMIT_OFILE: EPERM`` from
the blob, and a cgroup too small for the pages as the OOM killer taking everything.

    RLIMIT_NOFILE (ours)     hard >= the fd layout's need (files/fdlayout.py: the images'
                             highest fd, service fds, parked shared objects, temporaries)
    RLIMIT_* (the images')   a dumped hard limit above ours needs CAP_SYS_RESOURCE (which
                             the blob's prlimit64 would otherwise fail with EPERM), and a
                             NOFILE one above fs.nr_open is refused even with it
                             (kernel/sys.c do_prlimit)
    memory                   the pages to restore fit in MemAvailable and in the cgroup's
                             memory limit less its usage (v2 memory.max/current, v1
                             memory.limit_in_bytes/usage_in_bytes), where readable
    vm.max_map_count         every task's VMAs, plus the blob's own, fit
    kernel.pid_max           restore/preflight.py _check_pid_max
"""

from __future__ import annotations

import resource
from pathlib import Path

from pycriu_restore.images.pagemap import PAGE_SIZE
from pycriu_restore.plan.model import RestorePlan
from pycriu_restore.restore.errors import LimitTooLow

# <asm-generic/resource.h>: the index of each limit in tc.rlimits.
RLIMIT_NAMES = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
                "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
                "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
RLIMIT_NOFILE = 7
RLIM64_INFINITY = 2**64 - 1  # <linux/resource.h>: as the images store "unlimited"
CAP_SYS_RESOURCE = 24  # <linux/capability.h>
NR_OPEN_PATH = "/proc/sys/fs/nr_open"
MAX_MAP_COUNT_PATH = "/proc/sys/vm/max_map_count"
# The blob's own mappings while it runs in a task (bootstrap region, its stacks): a margin
# above the task's VMAs (blob/layout.py maps one region; the kernel adds its guard gaps).
BLOB_MAPPINGS = 4
CGROUP_ROOT = Path("/sys/fs/cgroup")
MiB = 1 << 20


def check_limits(plan: RestorePlan) -> None:
    """Raise LimitTooLow for the first limit the restore of ``plan`` cannot fit in."""
    check_nofile(plan)
    check_image_rlimits(plan)
    check_memory(plan)
    check_map_count(plan)


def _hard(value: int) -> int:
    """A getrlimit value with RLIM_INFINITY as RLIM64_INFINITY (comparable with the images')."""
    return RLIM64_INFINITY if value == resource.RLIM_INFINITY or value < 0 else value


def check_nofile(plan: RestorePlan) -> None:
    """Our RLIMIT_NOFILE hard limit must allow every fd the tasks hold while prepared; each
    task raises its soft limit up to it (restore/task.py _allow_fds)."""
    from pycriu_restore.restore.shared import SharedFds  # the layout; imported late: it pulls in files/

    need = SharedFds.layout(plan).fd_layout.nofile_needed
    highest = max((f.fd for t in plan.live_tasks for f in t.files), default=2)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _hard(hard) < need:
        raise LimitTooLow("RLIMIT_NOFILE (hard, this process)", str(hard),
                          f"{need} (the images' highest fd is {highest}; above it the restore keeps its own fds)",
                          f"raise it first: ulimit -Hn {need}")


def _have_cap(cap: int) -> bool:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def check_image_rlimits(plan: RestorePlan) -> None:
    """Each task's dumped hard limits must be ones the blob can set (kernel/sys.c do_prlimit):
    above ours only with CAP_SYS_RESOURCE, and RLIMIT_NOFILE never above fs.nr_open."""
    nr_open = int(Path(NR_OPEN_PATH).read_text())
    can_raise = _have_cap(CAP_SYS_RESOURCE)
    for task in plan.live_tasks:
        for index, (_, dumped_max) in enumerate(task.rlimits[:len(RLIMIT_NAMES)]):
            name = RLIMIT_NAMES[index]
            if index == RLIMIT_NOFILE and dumped_max > nr_open:
                raise LimitTooLow("fs.nr_open", str(nr_open),
                                  f"{dumped_max} (task {task.pid} was dumped with {name} hard limit {dumped_max})",
                                  f"raise it first: sysctl fs.nr_open={dumped_max}")
            ours = _hard(resource.getrlimit(index)[1])
            if dumped_max > ours and not can_raise:
                raise LimitTooLow(f"{name} (hard, this process)", _show(ours),
                                  f"{_show(dumped_max)} (task {task.pid} was dumped with it, and raising a hard "
                                  "limit needs CAP_SYS_RESOURCE, which this process lacks)",
                                  f"raise it before restoring (prlimit --{_prlimit_option(name)}=:{_show(dumped_max)})")


def _show(value: int) -> str:
    return "unlimited" if value == RLIM64_INFINITY else str(value)


def _prlimit_option(name: str) -> str:
    """prlimit(1)'s option for a limit: RLIMIT_NOFILE -> nofile."""
    return name.removeprefix("RLIMIT_").lower()


def pages_bytes(plan: RestorePlan) -> int:
    """The bytes of page data the restore writes into memory: every task's present pages and
    every shared memory object's (memfds, shared anonymous memory)."""
    pages = sum(run.nr_pages for t in plan.live_tasks for v in t.vmas for run in v.page_runs)
    for mem in (*plan.shared_memory, *plan.anon_shared_memory):
        pages += sum(run.nr_pages for run in mem.page_runs)
    return pages * PAGE_SIZE


def check_memory(plan: RestorePlan) -> None:
    """The pages must fit in the memory available now, and in our cgroup's headroom."""
    need = pages_bytes(plan)
    available = _mem_available()
    if available is not None and need > available:
        raise LimitTooLow("memory (MemAvailable, /proc/meminfo)", f"{available // MiB} MiB",
                          f"{need // MiB} MiB for the pages of the images", "free memory or restore elsewhere")
    cgroup = cgroup_headroom()
    if cgroup is not None and need > cgroup[1]:
        where, headroom, limit = cgroup
        raise LimitTooLow(f"memory (cgroup {where}: limit {limit // MiB} MiB less usage)", f"{headroom // MiB} MiB",
                          f"{need // MiB} MiB for the pages of the images",
                          "raise the cgroup's memory limit or restore outside it")


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cgroup_headroom() -> tuple[str, int, int] | None:
    """(cgroup directory, limit - usage, limit) of the tightest memory limit over our cgroup
    and its ancestors, or None if no limit is readable. cgroup v2 and v1 are both read."""
    best: tuple[str, int, int] | None = None
    for directory, max_name, cur_name in _memory_cgroups():
        d = directory
        while True:
            try:
                limit_text = (d / max_name).read_text().strip()
                usage = int((d / cur_name).read_text())
            except (OSError, ValueError):
                limit_text = "max"
                usage = 0
            if limit_text != "max" and int(limit_text) < 2**62:  # v1 says "unlimited" with a huge number
                limit = int(limit_text)
                headroom = max(0, limit - usage)
                if best is None or headroom < best[1]:
                    best = (str(d), headroom, limit)
            if d in (CGROUP_ROOT, CGROUP_ROOT / "memory", CGROUP_ROOT / "unified") or d == d.parent:
                break
            d = d.parent
    return best


def _memory_cgroups() -> list[tuple[Path, str, str]]:
    """Our memory cgroup directories, from /proc/self/cgroup: the v2 one ("0::/path") and
    the v1 memory controller's. A path not visible under the mount (a cgroup namespace,
    or a container's bind mount of its own cgroup) is the mount's root."""
    out = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        hier, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if hier == "0" and controllers == "":
            for mount in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
                if (mount / "cgroup.controllers").exists():
                    d = mount / rel if (mount / rel).is_dir() else mount
                    out.append((d, "memory.max", "memory.current"))
                    break
        elif "memory" in controllers.split(","):
            mount = CGROUP_ROOT / "memory"
            d = mount / rel if (mount / rel).is_dir() else mount
            out.append((d, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    return out


def check_map_count(plan: RestorePlan) -> None:
    """Every task's VMAs, and the blob's mappings beside them, within vm.max_map_count."""
    try:
        max_map_count = int(Path(MAX_MAP_COUNT_PATH).read_text())
    except (OSError, ValueError):
        return
    task = max(plan.live_tasks, key=lambda t: len(t.vmas), default=None)
    if task is not None and len(task.vmas) + BLOB_MAPPINGS > max_map_count:
        need = len(task.vmas) + BLOB_MAPPINGS
        raise LimitTooLow("vm.max_map_count", str(max_map_count),
                          f"{need} (task {task.pid} has {len(task.vmas)} VMAs, the blob maps {BLOB_MAPPINGS} more)",
                          f"raise it first: sysctl vm.max_map_count={need}")
