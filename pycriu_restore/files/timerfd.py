"""timerfds (TIMERFD entries in files.img, ``tfd``): a timer, re-armed where it stood.

The image holds the clock, the interval, the time left until the next expiry (``vsec`` /
``vnsec``, relative even for an absolute timer: it comes from /proc fdinfo's it_value) and
``ticks``, the expirations not yet read. CRIU (criu/timerfd.c, pie/restorer.c timerfd_arm)
creates the timer at open time but arms it as late as it can, in the restorer, then sets
the ticks with TFD_IOC_SET_TICKS so the next read(2) returns them; an absolute timer has
the clock's current time added. pycrestore arms it right after the fd is installed
(``after_install``), the last thing the task does with its fds before the blob: the timer
then runs during the rest of the restore (milliseconds), so the first expiry comes that much
early, an extra expiration at worst — never a lost one. For an absolute timer the full
current time (seconds and nanoseconds) is added, where CRIU adds only the seconds.
A timer whose value is 0 was disarmed and stays so. Shared by FileEntry id.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pycriu_restore.files import park
from pycriu_restore.files.registry import FdContext
from pycriu_restore.linux import anonfds

NSEC_PER_SEC = 1_000_000_000
# <linux/time.h> clocks timerfd_create(2) accepts.
CLOCKS = {0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 7: "CLOCK_BOOTTIME", 8: "CLOCK_REALTIME_ALARM",
          9: "CLOCK_BOOTTIME_ALARM"}
SETTABLE_FLAGS = os.O_NONBLOCK
ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
O_LARGEFILE = 0o100000
SETTIME_FLAGS = anonfds.TFD_TIMER_ABSTIME | anonfds.TFD_TIMER_CANCEL_ON_SET
MAX_SEC = 2**63 // NSEC_PER_SEC  # beyond this a timespec in ns overflows: not a dumped timer


@dataclass(frozen=True)
class TimerfdFd:
    fd: int
    cloexec: bool
    file_id: int
    clockid: int
    flags: int  # file status flags (O_NONBLOCK)
    settime_flags: int  # TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET
    value: tuple[int, int]  # time left to the next expiry (sec, nsec); (0, 0): disarmed
    interval: tuple[int, int]
    ticks: int  # expirations not read at dump


SPECS = (TimerfdFd,)


def read(ctx: FdContext) -> TimerfdFd:
    if not ctx.entry.HasField("tfd"):
        raise ctx.inconsistent("type TIMERFD without its tfd payload")
    t = ctx.entry.tfd
    if t.clockid not in CLOCKS:
        raise ctx.refuse(f"timerfd on clock {t.clockid} (restored: {', '.join(CLOCKS.values())})")
    if t.settime_flags & ~SETTIME_FLAGS:
        raise ctx.refuse(f"timerfd with settime flags {t.settime_flags:#x}")
    extra = t.flags & ~(ACCESS_MODE | SETTABLE_FLAGS | O_LARGEFILE)
    if extra:
        raise ctx.refuse(f"timerfd with file flags {t.flags:#o} ({extra:#o} is not restored)")
    for name, sec, nsec in (("value", t.vsec, t.vnsec), ("interval", t.isec, t.insec)):
        if nsec >= NSEC_PER_SEC or sec >= MAX_SEC:
            raise ctx.inconsistent(f"timerfd {name} {sec} s {nsec} ns is out of range")
    return TimerfdFd(fd=ctx.fd, cloexec=ctx.cloexec, file_id=ctx.file_id, clockid=t.clockid, flags=t.flags,
                     settime_flags=t.settime_flags, value=(t.vsec, t.vnsec), interval=(t.isec, t.insec),
                     ticks=t.ticks)


def open(spec: TimerfdFd) -> int:  # noqa: A001 - the interface's name (files/registry.py)
    """A new, not yet armed timerfd on the dumped clock, parked high."""
    flags = anonfds.TFD_CLOEXEC | (anonfds.TFD_NONBLOCK if spec.flags & os.O_NONBLOCK else 0)
    return park(anonfds.timerfd_create(spec.clockid, flags))


def after_install(spec: TimerfdFd) -> None:
    """Arm the installed timer with the time it had left, then give it its unread ticks."""
    value = spec.value
    if spec.settime_flags & anonfds.TFD_TIMER_ABSTIME and value != (0, 0):
        # The alarm clocks read as their base clocks (clock_gettime(2)).
        base = {8: time.CLOCK_REALTIME, 9: time.CLOCK_BOOTTIME}.get(spec.clockid, spec.clockid)
        total = time.clock_gettime_ns(base) + value[0] * NSEC_PER_SEC + value[1]
        value = divmod(total, NSEC_PER_SEC)
    anonfds.timerfd_settime(spec.fd, spec.settime_flags, value, spec.interval)
    if spec.ticks:
        anonfds.timerfd_set_ticks(spec.fd, spec.ticks)
