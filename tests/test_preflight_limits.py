"""Kernel limits the preflight checks before anything is created (issue 8): pid_max, seccomp.

clone3 cannot make a pid that is not below the pid_max of its namespace (EINVAL), so the
preflight says so first, with the sysctl that fixes it; and a plan with seccomp filters needs
the privilege to suspend them while the task is stepped. Uses the criu-4.2-more pack's creds
workload (pid 40200). Each test that sets kernel.pid_max puts the old value back.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Iterator

import pytest

from conftest import FIXTURES_MORE, PID_MAX
from pycriu_restore.errors import EXIT_ENVIRONMENT
from pycriu_restore.images import ImageSet
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.model import RestorePlan
from pycriu_restore.restore.errors import EnvironmentMismatch, PidAboveMax
from pycriu_restore.restore.preflight import PER_PIDNS_PID_MAX_SINCE, _kernel_version, check_plan

CREDS = FIXTURES_MORE / "images" / "creds"
CREDS_PID = 40200

pytestmark = pytest.mark.skipif(not CREDS.exists(), reason=f"{CREDS} is absent")


@contextlib.contextmanager
def pid_max_exactly(value: int) -> Iterator[None]:
    """Set kernel.pid_max to ``value`` for the block; put the old value back after."""
    old = PID_MAX.read_text().strip()
    PID_MAX.write_text(str(value))
    try:
        yield
    finally:
        PID_MAX.write_text(old)


def creds_plan() -> RestorePlan:
    plan = build_plan(ImageSet.open(CREDS))
    assert [t.tid for task in plan.tasks for t in task.threads] == [CREDS_PID]
    return plan


def test_pid_equal_to_pid_max_is_refused_with_the_sysctl_to_run() -> None:
    """The CLI exits 4 with one line: the pid, the current pid_max, the fix; no task is made."""
    with pid_max_exactly(CREDS_PID):  # pids must be *below* pid_max: this one is not
        result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(CREDS)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"pid {CREDS_PID} is not below kernel.pid_max {CREDS_PID}" in lines[0]
    assert f"sysctl kernel.pid_max={CREDS_PID + 1}" in lines[0]
    assert not os.path.exists(f"/proc/{CREDS_PID}")


def test_pid_just_below_pid_max_passes_the_check() -> None:
    plan = creds_plan()
    with pid_max_exactly(CREDS_PID + 1):
        try:
            check_plan(plan, new_pid_ns=False)
        except PidAboveMax as err:
            pytest.fail(f"pid {CREDS_PID} is below pid_max {CREDS_PID + 1}, yet: {err}")
        except EnvironmentMismatch:
            pass  # a later check (the pack's files not installed): pid_max was checked first


@pytest.mark.skipif(_kernel_version() < PER_PIDNS_PID_MAX_SINCE,
                    reason="before Linux 6.14 pid_max is one global value, --pid-ns included")
def test_new_pid_namespace_has_its_own_pid_max() -> None:
    """With --pid-ns the tasks are made in a new namespace, whose pid_max starts at
    PID_MAX_LIMIT (Linux 6.14+), so ours does not limit them."""
    plan = creds_plan()
    with pid_max_exactly(CREDS_PID):
        try:
            check_plan(plan, new_pid_ns=True)
        except PidAboveMax as err:
            pytest.fail(f"--pid-ns: our pid_max does not apply in the new namespace, yet: {err}")
        except EnvironmentMismatch:
            pass
        # What the check relies on: a new pid namespace does not inherit our pid_max.
        inner = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "cat", str(PID_MAX)],
                               capture_output=True, text=True, timeout=30)
    assert inner.returncode == 0, inner.stderr
    assert int(inner.stdout) == 4 * 1024 * 1024


# The same preflight refuses a seccomp plan it could not restore: the task is seized with
# PTRACE_O_SUSPEND_SECCOMP, which needs CAP_SYS_ADMIN (kernel/ptrace.c: check_ptrace_options).
SECCOMP_CHECK = """
import dataclasses, sys
from pycriu_restore.images import ImageSet
from pycriu_restore.plan.build import build_plan
from pycriu_restore.restore.errors import SeccompNotSuspendable
from pycriu_restore.restore.preflight import _check_seccomp_suspendable
plan = build_plan(ImageSet.open(sys.argv[1]))
task = dataclasses.replace(plan.root, threads=tuple(dataclasses.replace(t, seccomp_mode=2) for t in plan.root.threads))
plan = dataclasses.replace(plan, tasks=(task,) + plan.tasks[1:])
try:
    _check_seccomp_suspendable(plan)
except SeccompNotSuspendable as err:
    print(err)
else:
    print("allowed")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to drop CAP_SYS_ADMIN from it")
def test_seccomp_plan_is_refused_without_cap_sys_admin() -> None:
    run = lambda *prefix: subprocess.run([*prefix, sys.executable, "-c", SECCOMP_CHECK, str(CREDS)],  # noqa: E731
                                         capture_output=True, text=True, timeout=60)
    assert run().stdout.strip() == "allowed"
    refused = run("setpriv", "--bounding-set", "-sys_admin")
    assert f"task {CREDS_PID} was dumped under seccomp, and pycrestore lacks CAP_SYS_ADMIN" in refused.stdout, refused.stderr
