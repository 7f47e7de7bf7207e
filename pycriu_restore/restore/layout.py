"""Where the bootstrap region goes, and what the stopped task's own layout looks like.

The blob unmaps every mapping of the task except its own region, then maps the checkpointed
VMAs. So its region must be free in *both* layouts: the task's current one (the Python
process it still is, with its vdso) and the target one from the images. CRIU computes the
same gap in ``restorer_get_vma_hint`` (research/criu-restore-internals.md §2.2, §6.1).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from pycriu_restore.blob.bootstrap import RuntimeLayout
from pycriu_restore.blob.kernel_frame import fresh_task_frame
from pycriu_restore.linux.procmaps import MapEntry
from pycriu_restore.plan.build import PAGE_SIZE, TASK_SIZE
from pycriu_restore.plan.model import Vma
from pycriu_restore.restore.errors import RestoreFailed
from pycriu_restore.tracee import Tracee

# Lowest address considered: above vm.mmap_min_addr and the low area where non-PIE
# executables and their brk heap live (python3.11 is linked at 0x400000).
MIN_BOOTSTRAP_ADDR = 0x10000000
# A page left free on each side, so the region never merges with a neighbour VMA.
GUARD_BYTES = PAGE_SIZE


def choose_bootstrap_base(current: Sequence[MapEntry], target: Iterable[Vma], size_bytes: int) -> int:
    """The lowest page-aligned address >= MIN_BOOTSTRAP_ADDR with ``size_bytes`` free in both layouts."""
    busy = sorted(
        [(m.start, m.end) for m in current if m.end <= TASK_SIZE] + [(v.start, v.end) for v in target]
    )
    need = size_bytes + 2 * GUARD_BYTES
    candidate = MIN_BOOTSTRAP_ADDR
    for start, end in busy:
        if end <= candidate:
            continue
        if start >= candidate + need:
            break
        candidate = max(candidate, end)
    if candidate + need > TASK_SIZE:
        raise RestoreFailed(0, "bootstrap", f"no gap of {size_bytes} bytes free in both the current and the checkpointed layout")
    return candidate + GUARD_BYTES


def runtime_layout(tracee: Tracee) -> RuntimeLayout:
    """What the blob must know about the stopped task as it is now: vdso areas, rseq, xstate."""
    maps = tracee.maps()
    if not any(m.path == "[vdso]" for m in maps):
        raise RestoreFailed(tracee.pid, "bootstrap", "the task has no [vdso] to move into place")
    # The frame layout of a fresh task, which the stopped task is: fpu_clone gives every new
    # task the default fpstate, whatever its parent had (kernel_frame.py).
    return RuntimeLayout.from_task(maps, tracee.rseq_config(), fresh_task_frame())
