"""The blob's steps PERSONALITY, POSIX_TIMERS, SECCOMP, CREDS, LATE_PRCTLS, ARM_POSIX_TIMERS.

A forked copy of this process runs the hand-made task of test_blob_e2e.py with
credentials, a seccomp filter, two POSIX timers and a personality added; at the blob's
int3 (every step done, before rt_sigreturn) the kernel's own view of the task in /proc
must show each of them. Needs root (setresuid, capabilities, ptrace).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import struct

from pycriu_restore.blob import abi
from pycriu_restore.blob.bootstrap import build_bootstrap
from pycriu_restore.linux import ptrace
from pycriu_restore.plan.model import Creds, PosixTimer, SeccompFilter, Task
from pycriu_restore.restore.task import ServiceFds
from test_blob_e2e import (REGION_BASE, _check_free, _child_with_region, _pages_file, _run, _task,  # noqa: F401
                           _wait_stop, blob, payload, runtime)

CAP_CHOWN, CAP_KILL, CAP_NET_BIND_SERVICE = 1 << 0, 1 << 5, 1 << 10
ADDR_NO_RANDOMIZE = 0x0040000     # <linux/personality.h>
NR_UNAME = 63
# struct sock_filter (<linux/filter.h>): code, jt, jf, k. uname -> EPERM, the rest allowed.
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x0005_0000, 0x7FFF_0000
UNAME_EPERM = b"".join(struct.pack("<HBBI", *insn) for insn in (
    (BPF_LD_W_ABS, 0, 0, 0),                       # seccomp_data.nr
    (BPF_JEQ_K, 0, 1, NR_UNAME),
    (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | 1),      # EPERM
    (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
))
CREDS = Creds(uid=1000, euid=1001, suid=1002, fsuid=1003, gid=2000, egid=2001, sgid=2002, fsgid=2003,
              groups=(100, 1000), cap_inh=CAP_NET_BIND_SERVICE, cap_prm=CAP_NET_BIND_SERVICE | CAP_KILL,
              cap_eff=CAP_NET_BIND_SERVICE, cap_bnd=CAP_NET_BIND_SERVICE | CAP_KILL | CAP_CHOWN,
              cap_amb=CAP_NET_BIND_SERVICE, secbits=0xF, no_new_privs=True)


def _timer(timer_id: int) -> PosixTimer:
    return PosixTimer(timer_id=timer_id, clock_id=1, signo=signal.SIGUSR2, notify=0, sival=0x1234 + timer_id,
                      notify_tid=0, interval_sec=1, interval_nsec=0, value_sec=100, value_nsec=5, overrun=0)


def _task_with_state(runtime, filters=(SeccompFilter(0, UNAME_EPERM, 0),)) -> Task:
    task = _task(runtime)
    thread = dataclasses.replace(task.main_thread, creds=CREDS, seccomp_mode=2, seccomp_filters=filters,
                                 pdeath_sig=signal.SIGUSR1)
    return dataclasses.replace(task, threads=(thread,), posix_timers=(_timer(5), _timer(7)),
                               personality=ADDR_NO_RANDOMIZE, child_subreaper=True)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def test_every_step_is_visible_at_the_int3(blob, runtime, payload, tmp_path: pathlib.Path) -> None:
    from pycriu_restore.blob.status import STATUS_BYTES, decode_status
    from pycriu_restore.linux import memory
    from pycriu_restore.linux.regs import unsigned

    task = _task_with_state(runtime)
    fd = os.open(_pages_file(tmp_path, payload), os.O_RDONLY)
    try:
        boot = build_bootstrap(task, REGION_BASE, runtime, ServiceFds(pages=fd, exe=-1), blob=blob, set_mm=False)
        _check_free(boot.base, boot.size)
        pid = _child_with_region(boot.base, boot.size)
    finally:
        os.close(fd)
    try:
        ptrace.seize(pid, ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL | ptrace.PTRACE_O_SUSPEND_SECCOMP)
        ptrace.interrupt(pid)
        assert _wait_stop(pid) == signal.SIGTRAP
        memory.write(pid, boot.base, boot.image)
        regs = ptrace.get_regs(pid)
        regs.rip, regs.rsp, regs.rdi, regs.orig_rax = boot.entry, boot.stack_top, boot.args_addr, unsigned(-1)
        ptrace.set_regs(pid, regs)
        ptrace.cont(pid)
        assert _wait_stop(pid) == signal.SIGTRAP          # the int3: every step is done
        status = decode_status(memory.read(pid, boot.status_addr, STATUS_BYTES))
        assert status.ok, status.describe()

        st = _status(pid)
        assert st["Uid"].split() == ["1000", "1001", "1002", "1003"]
        assert st["Gid"].split() == ["2000", "2001", "2002", "2003"]
        assert st["Groups"].split() == ["100", "1000"]
        assert [int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")] == [
            CREDS.cap_inh, CREDS.cap_prm, CREDS.cap_eff, CREDS.cap_bnd, CREDS.cap_amb]
        assert (st["NoNewPrivs"], st["Seccomp"], st["Seccomp_filters"]) == ("1", "2", "1")
        with open(f"/proc/{pid}/personality") as f:
            assert int(f.read(), 16) == ADDR_NO_RANDOMIZE
        with open(f"/proc/{pid}/timers") as f:
            timers = f.read()
        for timer_id in (5, 7):
            assert f"ID: {timer_id}\nsignal: 12/{0x1234 + timer_id:016x}\nnotify: signal/pid.{pid}\nClockID: 1" in timers
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not os.path.exists(f"/proc/{pid}")


def test_a_bad_filter_fails_the_seccomp_step_readably(blob, runtime, payload, tmp_path: pathlib.Path) -> None:
    no_return = struct.pack("<HBBI", BPF_LD_W_ABS, 0, 0, 0)   # a program must end in RET: EINVAL
    task = _task_with_state(runtime, filters=(SeccompFilter(3, no_return, 0),))
    _boot, outcome = _run(blob, runtime, task, _pages_file(tmp_path, payload))
    assert outcome.status.failed and outcome.status.step == abi.BLOB_STEP_SECCOMP
    assert outcome.status.describe().startswith("install seccomp filter 0 (program at 0x")
    assert outcome.status.describe().endswith(": EINVAL")


def test_a_taken_timer_id_fails_readably(blob, runtime, payload, tmp_path: pathlib.Path) -> None:
    task = dataclasses.replace(_task_with_state(runtime), posix_timers=(_timer(5), _timer(5)))
    _boot, outcome = _run(blob, runtime, task, _pages_file(tmp_path, payload))
    assert outcome.status.failed, outcome.describe()
    assert outcome.status.describe() == "create POSIX timer 1 (id 5): EBUSY"
