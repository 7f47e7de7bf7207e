"""The demo program as the demo drives it: start it, read its lines, end it.

    DemoProgram.start()        fork+exec demo-program in its own session, stdin /dev/null,
                               stdout and stderr one file opened O_WRONLY|O_APPEND (CRIU
                               records no size for such a log, so the file may grow after
                               the checkpoint and both restores still accept it)
    lines()                    the lines written since the last call (the file is tailed)
    kill_and_wait(pid)         SIGKILL a pid and wait until it is gone: reaped if it is our
                               child, else until /proc/PID disappears

A line is ``demo pid=<pid> tick=<n> ok`` (demo.c); :func:`parse_line` reads it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pycriu_restore.demo.errors import DemoError, DemoProgramMissing

PROGRAM_PATH = Path(__file__).resolve().parent / "demo-program"
OUTPUT_NAME = "demo.out"
# How often the output file is polled, and how long a killed task may take to vanish.
POLL_S = 0.02
GONE_TIMEOUT_S = 10.0

_LINE = re.compile(r"demo pid=(\d+) tick=(\d+) (ok|BAD .*)")


@dataclass(frozen=True)
class Tick:
    """One line of the program's output."""

    pid: int
    tick: int
    verdict: str    # "ok", or "BAD memory" / "BAD register"
    text: str

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def parse_line(text: str) -> Tick | None:
    """The Tick a line reports, or None for a line that is not one."""
    found = _LINE.fullmatch(text.strip())
    if not found:
        return None
    return Tick(int(found[1]), int(found[2]), found[3], text.strip())


class DemoProgram:
    """One run of demo-program whose output goes to ``workdir/demo.out``."""

    def __init__(self, workdir: Path, stop_tick: int) -> None:
        self.workdir = workdir
        self.output = workdir / OUTPUT_NAME
        self.stop_tick = stop_tick
        self.process: subprocess.Popen[bytes] | None = None
        self._read_at = 0
        self._partial = b""

    def start(self) -> int:
        """Start the program; return its pid. Its cwd is ``workdir``, its environment empty."""
        if not os.access(PROGRAM_PATH, os.X_OK):
            raise DemoProgramMissing(f"{PROGRAM_PATH}: the demo program is missing; reinstall "
                                     "pycrestore (pip install .) so that the build makes it")
        with open(self.output, "ab") as out:   # O_WRONLY | O_APPEND | O_CREAT
            self.process = subprocess.Popen(
                [str(PROGRAM_PATH), str(self.stop_tick)], cwd=self.workdir, env={},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        return self.process.pid

    def lines(self) -> list[str]:
        """Complete lines written since the last call."""
        try:
            with open(self.output, "rb") as f:
                f.seek(self._read_at)
                data = f.read()
        except FileNotFoundError:
            return []
        self._read_at += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]

    def exited(self) -> int | None:
        """The exit status if the program (our child) has ended, else None."""
        assert self.process is not None, "exited: the program was never started"
        return self.process.poll()


def wait_for_tick(program: DemoProgram, pid: int, wanted: int, timeout_s: float,
                  echo) -> list[Tick]:
    """Echo the program's lines until pid reports tick ``wanted``; return the ticks seen.

    Raises DemoError if a line says BAD, if the program ends, or after ``timeout_s``.
    ``echo`` prints one line for the user.
    """
    seen: list[Tick] = []
    deadline = time.monotonic() + timeout_s
    while True:
        for text in program.lines():
            echo(f"  | {text}")
            tick = parse_line(text)
            if tick is None or tick.pid != pid:
                continue
            seen.append(tick)
            if not tick.ok:
                raise DemoError(f"the program reported {tick.verdict!r} at tick {tick.tick}", pid=pid)
            if tick.tick >= wanted:
                return seen
        if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
            raise DemoError(f"the program ended before tick {wanted} (last line: "
                            f"{seen[-1].text if seen else 'none'})", pid=pid)
        if time.monotonic() > deadline:
            raise DemoError(f"no tick {wanted} after {timeout_s:.0f} s (last line: "
                            f"{seen[-1].text if seen else 'none'})", pid=pid)
        time.sleep(POLL_S)


def _is_zombie(pid: int) -> bool:
    """True when /proc/PID/stat says Z (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def kill_and_wait(pid: int) -> None:
    """SIGKILL ``pid`` and return once it is gone (reaped if it is our child).

    Raises DemoError if it is still there after GONE_TIMEOUT_S.
    """
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
        return
    except ChildProcessError:
        pass   # not our child (e.g. restored by another process): watch /proc instead
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while os.path.exists(f"/proc/{pid}") and not _is_zombie(pid):
        if time.monotonic() > deadline:
            raise DemoError(f"still there {GONE_TIMEOUT_S:.0f} s after SIGKILL", pid=pid)
        time.sleep(POLL_S)
