"""Tracee against real processes: a ``sleep`` caught inside clock_nanosleep, and Python
children with signal handlers. Every child is reaped by its test or killed by pid here.
Runs as root (tracing, /proc/PID/mem); without it the tests fail rather than skip."""

from __future__ import annotations

import mmap
import os
import select
import signal
import time
from collections.abc import Iterator

import pytest

from pycriu_restore.linux import memory, syscalls
from pycriu_restore.linux.errors import InjectedSyscallFailed, TaskGone, UnexpectedStop
from pycriu_restore.linux.ptrace import PTRACE_SYSCALL_INFO_EXIT, get_syscall_info
from pycriu_restore.linux.regs import signed
from pycriu_restore.linux.waitstatus import StopKind
from pycriu_restore.linux.xstate import (XFEATURE_MASK_FP, XFEATURE_MASK_SSE,
                                         XFEATURE_MASK_YMM, XSAVE_MIN_SIZE, regset_xcr0)
from pycriu_restore.tracee import Tracee


PAGE = mmap.PAGESIZE
RSEQ_SIG_X86 = 0x53053053       # glibc's RSEQ_SIG on x86 (sysdeps/.../x86/bits/rseq.h)
ERESTART_CODES = range(-516, -511)   # ERESTARTSYS .. ERESTART_RESTARTBLOCK (linux/errno.h)
WALL = 0x40000000


class Children:
    """Children of one test; whatever the test did not reap is killed and reaped here."""

    def __init__(self) -> None:
        self.live: set[int] = set()

    def add(self, pid: int) -> int:
        self.live.add(pid)
        return pid

    def reap(self, pid: int) -> int:
        _, status = os.waitpid(pid, WALL)
        self.live.discard(pid)
        return os.waitstatus_to_exitcode(status)

    def cleanup(self) -> None:
        for pid in sorted(self.live):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, WALL)
        for pid in self.live:
            assert not os.path.exists(f"/proc/{pid}"), f"child {pid} left behind"


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.cleanup()


def wait_in_syscall(pid: int, nr: int, timeout_s: float = 5.0) -> None:
    """Poll /proc/PID/syscall until the task sleeps in syscall ``nr``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[0] == str(nr):
                return
        time.sleep(0.01)
    pytest.fail(f"pid {pid} never blocked in syscall {nr}")


def read_with_timeout(fd: int, timeout_s: float = 5.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout_s)
    assert ready, "the child did not report in time"
    return os.read(fd, 64)


def spawn_python_child(children: Children) -> tuple[int, int, int]:
    """Fork a child with a SIGUSR1 handler that writes b"U" to a report pipe, blocked in
    read() on a control pipe until we close it. Returns (pid, report_r, control_w)."""
    report_r, report_w = os.pipe()
    control_r, control_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(report_r)
            os.close(control_w)
            signal.signal(signal.SIGUSR1, lambda *_: os.write(report_w, b"U"))
            os.write(report_w, b"R")
            os.read(control_r, 1)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    children.add(pid)
    os.close(report_w)
    os.close(control_r)
    assert read_with_timeout(report_r) == b"R"
    wait_in_syscall(pid, syscalls.NR_READ)
    return pid, report_r, control_w


def test_drive_a_task_sleeping_in_a_syscall(children: Children) -> None:
    sleep_s = 1.0
    started = time.monotonic()
    pid = children.add(os.posix_spawnp("sleep", ["sleep", str(sleep_s)], os.environ))
    wait_in_syscall(pid, syscalls.NR_CLOCK_NANOSLEEP)

    tracee = Tracee.seize(pid)
    stop = tracee.halt()
    assert stop.kind is StopKind.EVENT_STOP and stop.signal == signal.SIGTRAP

    before = tracee.regs
    assert before.orig_rax == syscalls.NR_CLOCK_NANOSLEEP
    assert signed(before.rax) in ERESTART_CODES
    code_before = memory.proc_mem_read(pid, before.rip, 2)

    assert tracee.inject_syscall(syscalls.NR_GETPID) == pid

    addr = tracee.inject_syscall(syscalls.NR_MMAP, 0, PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert addr % PAGE == 0
    (entry,) = [e for e in tracee.maps() if e.start == addr]
    assert entry.perms == "rw-p" and entry.size_bytes == PAGE

    payload = bytes(range(256)) * 4
    tracee.write_memory(addr + 16, payload)
    assert tracee.read_memory(addr + 16, len(payload)) == payload

    # Read-only now: process_vm_writev gets EFAULT, the /proc/PID/mem fallback writes.
    assert tracee.inject_syscall(syscalls.NR_MPROTECT, addr, PAGE, mmap.PROT_READ) == 0
    (entry,) = [e for e in tracee.maps() if e.start == addr]
    assert entry.perms == "r--p"
    tracee.write_memory(addr, b"through protection")
    assert tracee.read_memory(addr, 18) == b"through protection"

    with pytest.raises(InjectedSyscallFailed, match=r"munmap\(0x1, 0x1000\).*EINVAL") as info:
        tracee.inject_syscall(syscalls.NR_MUNMAP, 1, PAGE)
    assert info.value.pid == pid
    assert tracee.inject_syscall(syscalls.NR_MUNMAP, addr, PAGE) == 0
    assert not [e for e in tracee.maps() if e.start == addr]

    # After all that, the task's registers and code are exactly as we found them.
    assert bytes(tracee.regs) == bytes(before)
    assert memory.proc_mem_read(pid, before.rip, 2) == code_before

    xstate = tracee.xstate()
    assert len(xstate) >= XSAVE_MIN_SIZE
    xcr0 = regset_xcr0(xstate)
    assert xcr0 & (XFEATURE_MASK_FP | XFEATURE_MASK_SSE) == XFEATURE_MASK_FP | XFEATURE_MASK_SSE
    cpu_flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    assert bool(xcr0 & XFEATURE_MASK_YMM) == (" avx " in cpu_flags + " ")
    tracee.set_xstate(xstate)
    assert tracee.xstate() == xstate

    rseq = tracee.rseq_config()
    assert rseq.abi_size == 32 and rseq.signature == RSEQ_SIG_X86
    assert any(e.contains(rseq.abi_pointer) and e.writable for e in tracee.maps())

    mask = tracee.sigmask()
    tracee.set_sigmask(mask | 1 << (signal.SIGUSR2 - 1))
    assert tracee.sigmask() == mask | 1 << (signal.SIGUSR2 - 1)
    tracee.set_sigmask(mask)

    tracee.detach()
    assert children.reap(pid) == 0            # the interrupted sleep restarted and finished
    assert time.monotonic() - started >= sleep_s


def test_run_until_rt_sigreturn_exit(children: Children) -> None:
    pid, report_r, control_w = spawn_python_child(children)
    tracee = Tracee.seize(pid)
    tracee.halt()
    os.kill(pid, signal.SIGUSR1)
    regs = tracee.run_until_syscall_exit(syscalls.NR_RT_SIGRETURN,
                                         pass_signals={signal.SIGUSR1}, max_syscalls=1000)
    assert get_syscall_info(pid).op == PTRACE_SYSCALL_INFO_EXIT
    assert signed(regs.orig_rax) == -1        # rt_sigreturn put back a non-syscall frame
    tracee.detach()
    assert read_with_timeout(report_r) == b"U"   # the handler ran, once, before sigreturn
    os.close(control_w)
    assert children.reap(pid) == 0
    os.close(report_r)


def test_unexpected_signal_stops_the_run_with_its_details(children: Children) -> None:
    pid, report_r, control_w = spawn_python_child(children)
    tracee = Tracee.seize(pid)
    tracee.halt()
    os.kill(pid, signal.SIGUSR2)
    with pytest.raises(UnexpectedStop, match=r"signal-delivery stop \(SIGUSR2\), si_code 0, "
                                             r".*rip 0x[0-9a-f]+") as info:
        tracee.run_until_syscall_exit(syscalls.NR_RT_SIGRETURN)
    assert "expected the exit of rt_sigreturn" in str(info.value)
    assert tracee.stopped and tracee.siginfo().si_signo == signal.SIGUSR2
    assert tracee.siginfo().fields.kill.si_pid == os.getpid()
    os.close(control_w)
    os.close(report_r)


def test_signal_arriving_while_held_is_handed_back(children: Children) -> None:
    pid, report_r, control_w = spawn_python_child(children)
    tracee = Tracee.seize(pid)
    os.kill(pid, signal.SIGUSR1)
    time.sleep(0.2)   # the child wakes and enters its signal-delivery stop before we halt
    stop = tracee.halt()
    assert stop.kind is StopKind.EVENT_STOP
    assert tracee.deferred_signals == [signal.SIGUSR1]
    ready, _, _ = select.select([report_r], [], [], 0.2)
    assert not ready                           # held: the handler has not run
    tracee.detach()
    assert read_with_timeout(report_r) == b"U"  # handed back at detach
    os.close(control_w)
    assert children.reap(pid) == 0
    os.close(report_r)


def test_task_killed_while_held_is_task_gone(children: Children) -> None:
    pid = children.add(os.posix_spawnp("sleep", ["sleep", "10"], os.environ))
    wait_in_syscall(pid, syscalls.NR_CLOCK_NANOSLEEP)
    tracee = Tracee.seize(pid)
    tracee.halt()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TaskGone, match=rf"task {pid} is gone") as info:
        tracee.inject_syscall(syscalls.NR_GETPID)
    assert info.value.pid == pid
    stop = tracee.wait_stop()
    assert stop.kind is StopKind.KILLED and stop.signal == signal.SIGKILL
    assert not tracee.seized
    tracee.detach()                            # nothing to do for a dead task
    children.live.discard(pid)                 # wait_stop reaped it
    assert not os.path.exists(f"/proc/{pid}")


def test_leaving_the_with_block_on_error_detaches(children: Children) -> None:
    pid = children.add(os.posix_spawnp("sleep", ["sleep", "10"], os.environ))
    wait_in_syscall(pid, syscalls.NR_CLOCK_NANOSLEEP)
    with pytest.raises(RuntimeError, match="caller failed"):
        with Tracee.seize(pid) as tracee:
            tracee.halt()
            raise RuntimeError("caller failed")
    with open(f"/proc/{pid}/status") as f:
        tracer = next(line.split()[1] for line in f if line.startswith("TracerPid:"))
    assert tracer == "0"
    assert not tracee.seized


def test_methods_needing_a_stop_refuse_a_running_task(children: Children) -> None:
    pid = children.add(os.posix_spawnp("sleep", ["sleep", "10"], os.environ))
    with Tracee.seize(pid) as tracee:
        with pytest.raises(AssertionError, match="inject_syscall: Tracee.*running"):
            tracee.inject_syscall(syscalls.NR_GETPID)
