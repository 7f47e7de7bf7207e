"""A pid number is in use while a process uses it as its session id, though no task has it:
preflight says so before anything is made (linux/pidusers.py)."""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import kill_session, wait_gone
from pycriu_restore.linux.pidusers import pid_users
from pycriu_restore.restore.errors import PidTaken
from pycriu_restore.restore.preflight import _check_pid_free


def test_a_pid_kept_as_a_session_id_is_named() -> None:
    # A session leader that leaves its background job behind: the job keeps the session id.
    leader = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & exit 0"], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    leader.wait()
    try:
        assert wait_gone(leader.pid)
        who = pid_users(leader.pid)
        assert who is not None and who.startswith("'sleep' (pid ") and who.endswith("as its session id"), who
        with pytest.raises(PidTaken, match=rf"pid {leader.pid} is in use by 'sleep' .*as its session id"):
            _check_pid_free(leader.pid)
    finally:
        kill_session(leader.pid)
    # The killed job is reaped by init, which may take a moment: then the number is free.
    deadline = time.monotonic() + 10
    while pid_users(leader.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_users(leader.pid) is None
