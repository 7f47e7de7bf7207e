"""The restore's phases, named once, and a timeline that logs each with its duration.

A restore moves through these stages in order; the log prints one line as each ends::

    pycrestore: [  12.3 ms] PLAN      3 VMAs, 41 page runs, 4 fds
    pycrestore: [   4.1 ms] FORK      task 31100 (clone3 set_tid)

What is done by the end of each stage:

- ``PLAN``: images read and checked; nothing on the machine has changed.
- ``PREFLIGHT``: pids free, every file the images name present and unchanged.
- ``FORK``: every task exists with its pid, in its session and process group, with its fds,
  cwd and root, and is stopped under ptrace (research/criu-restore-internals.md §1.2).
- ``BOOTSTRAP``: in each task the bootstrap region is mapped and holds the blob, its
  arguments and the signal frame; registers point at the blob.
- ``MEMORY``: each task ran the blob up to its final rt_sigreturn: old mappings gone,
  every VMA mapped and filled, mm, signal state, timers and rseq restored.
- ``RESUME``: each task returned into its checkpointed registers; the blob is unmapped
  and the tasks are detached and running.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Iterator

from pycriu_restore import faults

log = logging.getLogger("pycrestore")


class Stage(enum.Enum):
    PLAN = "plan"
    PREFLIGHT = "preflight"
    FORK = "fork"
    BOOTSTRAP = "bootstrap"
    MEMORY = "memory"
    RESUME = "resume"


@dataclass
class Timeline:
    """Durations of the stages of one restore, in order (also returned to library callers)."""

    durations_ms: dict[Stage, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, stage: Stage, detail: str = "") -> Iterator[None]:
        """Time one stage; its log line is written when it ends (also on failure, marked FAILED)."""
        start = time.perf_counter()
        ok = False
        try:
            faults.point("stage", stage.value)
            yield
            ok = True
        finally:
            ms = (time.perf_counter() - start) * 1000.0
            self.durations_ms[stage] = self.durations_ms.get(stage, 0.0) + ms
            status = "" if ok else " FAILED"
            log.info("[%8.1f ms] %-9s %s%s", ms, stage.name, detail, status)

    @property
    def total_ms(self) -> float:
        return sum(self.durations_ms.values())
