"""The demo, step by step. Each step says what must already hold and what it leaves.

    1. check      root, ptrace allowed, the program built        (DemoUnavailable otherwise)
    2. start      demo-program N in its own session, output tailed to the user
    3. checkpoint at tick N it sleeps for a minute; PTRACE_SEIZE + INTERRUPT stop it in
                  that sleep, as `criu dump` stops a task, and dump/ writes the images.
                  Why not SIGSTOP: a stopped task is dumped as Stopped and restored
                  stopped; a task interrupted in clock_nanosleep is dumped as CRIU
                  dumps most real programs (the sleep returns EINTR after the restore).
    4. kill       SIGKILL and reap: pid N is free again for the restore
    5. restore    restore/orchestrator.restore(), phases logged as `-v` logs them
    6. continue   the restored pid prints tick N+1 .. N+k with both checks "ok"
    7. end        SIGKILL it and wait until it is gone

Whatever happens (an error, Ctrl-C), the finally block kills every pid the demo made and
removes the temporary directory, so nothing is left running or behind. With ``keep``, the
checkpoint (and the program's output file, which the images refer to) stay in that
directory for `pycrestore info DIR`, `pycrestore show FILE` or `criu restore -D DIR`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pycriu_restore.demo.errors import DemoError, DemoProgramMissing, DemoUnavailable
from pycriu_restore.demo.program import (POLL_S, PROGRAM_PATH, DemoProgram, Tick, kill_and_wait,
                                         wait_for_tick)
from pycriu_restore.dump import Checkpoint, dump_task, seize_stopped
from pycriu_restore.linux import ptrace
from pycriu_restore.linux.syscalls import NR_CLOCK_NANOSLEEP
from pycriu_restore.linux.regs import signed
from pycriu_restore.linux.waitstatus import wait_for

YAMA_PTRACE_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")
YAMA_NO_ATTACH = 3          # Documentation/admin-guide/LSM/Yama.rst: no process may ptrace
TICK_S = 0.15               # demo.c TICK_NS
START_TIMEOUT_S = 15.0      # on top of N ticks: a loaded machine
TICKS_AFTER = 3             # ticks shown after the restore
AFTER_TIMEOUT_S = 15.0
SLEEP_STOP_TRIES = 50


@dataclass(frozen=True)
class DemoResult:
    """What the demo saw: the checkpoint, and the ticks before and after the restore."""

    pid: int
    stop_tick: int
    checkpoint: Checkpoint
    before: tuple[Tick, ...]
    after: tuple[Tick, ...]
    restore_ms: float


def check_machine() -> None:
    """Raise DemoUnavailable with the cause when this machine cannot run the demo."""
    if os.geteuid() != 0:
        raise DemoUnavailable("needs root: the restore recreates a process with its old pid "
                              "(clone3 set_tid) and drives it with ptrace")
    if YAMA_PTRACE_SCOPE.exists() and YAMA_PTRACE_SCOPE.read_text().strip() == str(YAMA_NO_ATTACH):
        raise DemoUnavailable(f"ptrace is disabled: {YAMA_PTRACE_SCOPE} is {YAMA_NO_ATTACH} "
                              "(only a reboot lowers it)")
    if not PROGRAM_PATH.exists():
        raise DemoProgramMissing(f"{PROGRAM_PATH}: the demo program is missing; reinstall "
                                 "pycrestore (pip install .) so that the build makes it")


def _stop_in_sleep(pid: int) -> None:
    """Seize ``pid`` and leave it stopped inside its long clock_nanosleep after tick N.

    The line of tick N is written just before that sleep starts, so the interrupt can land
    in the few instructions between: then let it run on a moment and interrupt it again.
    """
    seize_stopped(pid)
    for _ in range(SLEEP_STOP_TRIES):
        if signed(ptrace.get_regs(pid).orig_rax) == NR_CLOCK_NANOSLEEP:
            return
        ptrace.cont(pid)
        time.sleep(POLL_S)
        ptrace.interrupt(pid)
        stop = wait_for(pid)
        if stop is None or not stop.alive:
            raise DemoError("the program ended while being stopped", pid=pid)
    raise DemoError(f"not in clock_nanosleep after {SLEEP_STOP_TRIES} tries", pid=pid)


def _workdir(keep: Path | None) -> Path:
    """The directory the demo works in: ``keep`` (new or empty), else a fresh temporary one."""
    if keep is None:
        return Path(tempfile.mkdtemp(prefix="pycrestore-demo-"))
    keep = keep.resolve()
    if keep.exists() and any(keep.iterdir()):
        raise DemoError(f"{keep}: not empty; --keep wants a new or empty directory")
    keep.mkdir(parents=True, exist_ok=True)
    return keep


class _EchoPhases(logging.Handler):
    """Shows the restore's phase lines (logger "pycrestore") as `pycrestore -v restore` does."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        self.echo(f"pycrestore: {record.getMessage()}")


def run_demo(stop_tick: int = 5, keep: Path | None = None,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo (module docstring); ``echo`` prints one line for the user.

    Needs root. Raises DemoUnavailable, DemoError, or the dump/restore layers' errors; in
    every case nothing the demo started is left running, and without ``keep`` nothing is
    left on disk.
    """
    if stop_tick < 1:
        raise DemoError(f"--ticks must be at least 1, not {stop_tick}")
    check_machine()
    from pycriu_restore.restore.orchestrator import RestoreOptions, restore

    workdir = _workdir(keep)
    images = workdir if keep is not None else workdir / "images"
    live: list[int] = []   # pids the demo made that may still run; the finally kills them
    handler = _EchoPhases(echo)
    logger = logging.getLogger("pycrestore")
    old_level = logger.level
    try:
        program = DemoProgram(workdir, stop_tick)
        pid = program.start()
        live.append(pid)
        echo(f"demo: started {PROGRAM_PATH.name} as pid {pid}, checkpoint at tick {stop_tick}; "
             f"its output ({program.output}):")
        before = wait_for_tick(program, pid, stop_tick, START_TIMEOUT_S + stop_tick * TICK_S, echo)

        frozen_at = time.monotonic()
        _stop_in_sleep(pid)   # in its one-minute sleep after tick N
        checkpoint = dump_task(pid, images, freezing_us=int((time.monotonic() - frozen_at) * 1e6))
        echo(f"demo: checkpoint of pid {pid} at tick {stop_tick} in {checkpoint.directory}: "
             f"{checkpoint.vmas} VMAs, {checkpoint.pages} pages, {len(checkpoint.files)} files:")
        echo("      " + " ".join(checkpoint.files))

        kill_and_wait(pid)   # pid is free again: the restore takes it back
        live.remove(pid)
        echo(f"demo: killed pid {pid}; restoring it from the checkpoint")

        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        restored = restore(str(images), RestoreOptions())
        live.append(restored.root_pid)
        logger.removeHandler(handler)
        echo(f"demo: restored pid {restored.root_pid} in {restored.timeline.total_ms:.1f} ms; "
             "its output goes on:")
        after = wait_for_tick(program, restored.root_pid, stop_tick + TICKS_AFTER,
                              AFTER_TIMEOUT_S, echo)
        if restored.root_pid != pid or after[0].tick != stop_tick + 1:
            raise DemoError(f"expected pid {pid} to go on at tick {stop_tick + 1}, "
                            f"got {after[0].text!r}", pid=restored.root_pid)

        kill_and_wait(restored.root_pid)
        live.remove(restored.root_pid)
        echo(f"demo: pid {pid} went on from tick {stop_tick + 1} with its memory page and xmm15 "
             f"intact; killed it.")
        if keep is not None:
            echo(f"demo: kept {workdir}: try `pycrestore info {workdir}`")
        return DemoResult(pid=pid, stop_tick=stop_tick, checkpoint=checkpoint, before=tuple(before),
                          after=tuple(after), restore_ms=restored.timeline.total_ms)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        for leftover in live:
            kill_and_wait(leftover)
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
