"""Who keeps a pid number in use: the task that has it, or processes using it as their
session or process group id.

A pid number stays allocated while anything refers to it: the task itself, and also every
process whose session id or process group id it is (kernel/pid.c keeps one struct pid for
all three uses). So a dumped session leader's pid cannot be restored while a process that
outlived it (an orphan reparented to init, a background job) still sits in its session:
clone3(set_tid) fails with EEXIST, though /proc/PID is gone.
"""

from __future__ import annotations

import os


def pid_users(pid: int) -> str | None:
    """A few words naming what keeps ``pid`` in use, or None if nothing does (proc(5):
    /proc/PID/stat fields 5 and 6 are the process group and the session)."""
    try:
        return f"{_comm(pid)!r} (pid {pid})"
    except FileNotFoundError:
        pass
    except OSError:
        return f"another process (pid {pid})"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        pgrp, session = int(fields[2]), int(fields[3])
        if pid in (pgrp, session):
            role = "session" if session == pid else "process group"
            return f"{stat[stat.index('(') + 1:stat.rindex(')')]!r} (pid {entry}), as its {role} id"
    return None


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()
