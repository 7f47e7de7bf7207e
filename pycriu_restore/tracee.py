"""A task driven through ptrace: seize it, stop it, read and set its state, run syscalls in it.

This is pycrestore's "compel" (CRIU's ``compel/``): it knows pids, registers, syscalls and
memory, and nothing about images. The orchestrator uses it to prepare each forked task:

    seize ─► halt ─► inject mmap (bootstrap region) ─► write blob, args, sigframes
          ─► set regs (rip = blob entry) ─► run_until_syscall_exit(rt_sigreturn)
          ─► inject munmap (bootstrap region) ─► detach

A :class:`Tracee` is either *running* or *stopped* (in a ptrace-stop). Most methods need
it stopped, and say so; they check, and a call in the wrong state is a bug in the caller
(``AssertionError``)::

                   cont / syscall / singlestep
        stopped ─────────────────────────────────► running
           ▲  ◄──── wait_stop (a live stop) ─────────  │
           │                                           │ halt = interrupt + wait_stop
           └───────────────────────────────────────────┘

All calls for one tracee must come from the thread that seized it (ptrace's rule).
Signals that arrive while we hold the task (signal-delivery stops we did not cause) are
kept in ``deferred_signals`` and handed back at :meth:`Tracee.detach`, so a restore does
not eat a signal meant for the application. Where the task must run a few steps with its
own mask already live, :meth:`Tracee.block_signals` / :meth:`Tracee.unblock_signals` keep
every signal pending in the kernel instead, as compel does around its parasite.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Collection
from types import TracebackType

from pycriu_restore.linux import memory, ptrace
from pycriu_restore.linux.errors import (InjectedSyscallFailed, LinuxError,
                                         MemoryAccessFailed, TaskGone, UnexpectedStop)
from pycriu_restore.linux.procmaps import MapEntry, read_maps
from pycriu_restore.linux.ptrace import RseqConfig, Siginfo
from pycriu_restore.linux.regs import UserRegs, copy_regs, signed, unsigned
from pycriu_restore.linux.syscalls import syscall_name
from pycriu_restore.linux.waitstatus import Stop, StopKind, wait_for

# x86_64 ``syscall`` instruction (Intel SDM vol. 2B, SYSCALL: opcode 0F 05).
SYSCALL_INSN = b"\x0f\x05"

# Syscall argument registers, in order (x86_64 syscall ABI, syscall(2) "Architecture
# calling conventions").
SYSCALL_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")

# The kernel's error returns are -4095..-1 (include/linux/err.h: MAX_ERRNO).
MAX_ERRNO = 4095

# orig_rax == -1 tells the kernel the task is not in a syscall, so no restart logic
# (ERESTART*) is applied to the registers we set (arch/x86/kernel/signal.c).
NO_SYSCALL = unsigned(-1)

# Options for every seize: syscall stops are told apart (SIGTRAP|0x80), and the tracees
# die with us if the orchestrator dies half-way, instead of running half-restored.
DEFAULT_OPTIONS = ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL

# Every signal, for PTRACE_SETSIGMASK (the kernel leaves SIGKILL and SIGSTOP unblocked).
ALL_SIGNALS = (1 << 64) - 1

# Bounds on loops that wait for a particular stop, so that a misbehaving task cannot keep
# us here forever: signals deferred while stepping one instruction or halting.
_MAX_DEFERRED_STOPS = 64


class Tracee:
    """One task (thread) that this thread traces with PTRACE_SEIZE."""

    def __init__(self, pid: int) -> None:
        """Wrap ``pid`` without seizing it; :meth:`seize` is the usual way in."""
        self.pid = pid
        # ptrace thread only (all of it):
        self.seized = False
        self.stopped = False
        self.last_stop: Stop | None = None
        self.deferred_signals: list[int] = []
        # The task's own mask while block_signals() holds every signal blocked, else None.
        self.held_sigmask: int | None = None

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running" if self.seized else "not seized"
        return f"Tracee(pid={self.pid}, {state})"

    # -- acquire / release -----------------------------------------------------------------

    @classmethod
    def seize(cls, pid: int, options: int = DEFAULT_OPTIONS) -> Tracee:
        """Seize ``pid`` (PTRACE_SEIZE) and return it as a running Tracee.

        The task keeps running; call :meth:`halt` to stop it. Precondition: we may trace it
        (root, or same uid and no Yama restriction) and nobody else traces it.
        """
        tracee = cls(pid)
        ptrace.seize(pid, options)
        tracee.seized = True
        return tracee

    def detach(self) -> None:
        """Let the task go (PTRACE_DETACH), handing back signals deferred while we held it.

        Stops the task first if it is running (DETACH needs a ptrace-stop). Registers and
        memory stay as they are now: restore them before, if they must be. A signal mask
        still held by :meth:`block_signals` is put back. Safe to call twice; does nothing
        for a task that is gone.
        """
        if not self.seized:
            return
        if not self.stopped:
            self.halt()
            if not self.seized:   # it died while we stopped it
                return
        if self.held_sigmask is not None:
            self.unblock_signals()
        signals, self.deferred_signals = self.deferred_signals, []
        for sig in signals:
            # Queued while the task is still stopped, delivered once it runs untraced.
            # Not DETACH's own signal argument: ptrace(2) ignores it at any stop but a
            # signal-delivery stop (we usually hold the task at PTRACE_EVENT_STOP). The
            # original siginfo is not kept: the handler sees SI_USER from our pid.
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                break
        ptrace.detach(self.pid)
        self.seized = False
        self.stopped = False

    def __enter__(self) -> Tracee:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Detach on the way out. While an exception is already propagating, a failure
        to detach (the task died, say) is not allowed to hide it."""
        try:
            self.detach()
        except LinuxError:
            if exc is None:
                raise

    # -- stopping and resuming ----------------------------------------------------------------

    def _require_stopped(self, what: str) -> None:
        """Assert that the task is seized and in a ptrace-stop (a caller bug otherwise)."""
        if not (self.seized and self.stopped):
            raise AssertionError(f"{what}: {self!r} is not in a ptrace-stop")

    def interrupt(self) -> None:
        """Ask the running task to stop (PTRACE_INTERRUPT); :meth:`wait_stop` sees the stop."""
        if not self.seized:
            raise AssertionError(f"interrupt: {self!r} is not seized")
        ptrace.interrupt(self.pid)

    def wait_stop(self) -> Stop:
        """Wait for the next stop (or the end) of the task and return it.

        After a live stop the task is stopped; after an exit or a kill it is no longer
        seized and any further request raises ``TaskGone``.
        """
        if not self.seized:
            raise AssertionError(f"wait_stop: {self!r} is not seized")
        stop = wait_for(self.pid)
        assert stop is not None  # a blocking wait returns a report
        self.last_stop = stop
        self.stopped = stop.alive
        if not stop.alive:
            self.seized = False
        return stop

    def halt(self) -> Stop:
        """Stop the running task: interrupt it and wait for PTRACE_EVENT_STOP (or a group stop).

        Signal-delivery stops that come first are deferred (see the module docstring) and
        the task is resumed without them until our interrupt stop arrives. Returns the stop;
        an exit or kill is returned as well, with the tracee no longer seized.
        """
        if self.stopped:
            raise AssertionError(f"halt: {self!r} is already stopped")
        self.interrupt()
        for _ in range(_MAX_DEFERRED_STOPS):
            stop = self.wait_stop()
            if not stop.alive or stop.kind in (StopKind.EVENT_STOP, StopKind.GROUP):
                return stop
            if stop.kind is StopKind.SIGNAL:
                self.deferred_signals.append(stop.signal)
            # A syscall or event stop left over from an earlier resume: go on, the
            # interrupt is still pending and will stop the task at the next chance.
            self.cont()
        raise UnexpectedStop(self.pid, f"{_MAX_DEFERRED_STOPS} other stops",
                             "PTRACE_EVENT_STOP after PTRACE_INTERRUPT")

    def cont(self, sig: int = 0) -> None:
        """Resume the stopped task (PTRACE_CONT), delivering ``sig`` if not 0."""
        self._require_stopped("cont")
        ptrace.cont(self.pid, sig)
        self.stopped = False

    def syscall(self, sig: int = 0) -> None:
        """Resume the stopped task until its next syscall entry or exit (PTRACE_SYSCALL)."""
        self._require_stopped("syscall")
        ptrace.syscall(self.pid, sig)
        self.stopped = False

    def singlestep(self, sig: int = 0) -> None:
        """Resume the stopped task for one instruction (PTRACE_SINGLESTEP).

        Not while :meth:`block_signals` holds SIGTRAP blocked: the step ends in a forced
        SIGTRAP, and forcing a blocked signal resets its handler to SIG_DFL
        (kernel/signal.c: force_sig_info_to_task), which would lose the application's.
        """
        self._require_stopped("singlestep")
        if self.held_sigmask is not None:
            raise AssertionError(f"singlestep: {self!r} has every signal blocked (block_signals)")
        ptrace.singlestep(self.pid, sig)
        self.stopped = False

    # -- state -------------------------------------------------------------------------------

    @property
    def regs(self) -> UserRegs:
        """The task's general-purpose registers (a fresh copy each read). Needs a stop."""
        self._require_stopped("regs")
        return ptrace.get_regs(self.pid)

    @regs.setter
    def regs(self, value: UserRegs) -> None:
        self._require_stopped("regs")
        ptrace.set_regs(self.pid, value)

    def xstate(self) -> bytes:
        """The task's XSAVE area (NT_X86_XSTATE; layout in ``linux.xstate``). Needs a stop."""
        self._require_stopped("xstate")
        return ptrace.get_xstate(self.pid)

    def set_xstate(self, xstate: bytes) -> None:
        """Write the whole XSAVE area back (same length as :meth:`xstate` gave). Needs a stop."""
        self._require_stopped("set_xstate")
        ptrace.set_xstate(self.pid, xstate)

    def rseq_config(self) -> RseqConfig:
        """Where the task registered rseq (glibc does it at start-up). Needs a stop."""
        self._require_stopped("rseq_config")
        return ptrace.get_rseq_configuration(self.pid)

    def sigmask(self) -> int:
        """The task's blocked-signal mask (bit n-1 for signal n). Needs a stop."""
        self._require_stopped("sigmask")
        return ptrace.get_sigmask(self.pid)

    def set_sigmask(self, mask: int) -> None:
        """Set the task's blocked-signal mask. Needs a stop."""
        self._require_stopped("set_sigmask")
        ptrace.set_sigmask(self.pid, mask)

    def block_signals(self) -> None:
        """Block every signal in the stopped task, keeping its own mask to put back later.

        For the steps a task takes after its own mask is live but before it is its own again
        (the orchestrator's munmap of the bootstrap region after the blob's rt_sigreturn):
        a signal it would let through would otherwise stop or enter a handler there. What
        is sent meanwhile stays pending in the kernel, in the thread's queue or the
        process's (a process-wide signal finds no thread that takes it: the others are
        stopped or block it too), and is delivered once :meth:`unblock_signals` has put
        the mask back and the task runs: ptrace_stop() re-checks pending signals when the
        task leaves the stop (kernel/signal.c). SIGKILL and SIGSTOP cannot be blocked.
        Nothing may single-step or trap the task until then (see :meth:`singlestep`).
        Needs a stop; pairs with :meth:`unblock_signals` (or :meth:`detach`).
        """
        self._require_stopped("block_signals")
        if self.held_sigmask is not None:
            raise AssertionError(f"block_signals: {self!r} has every signal blocked already")
        mask = ptrace.get_sigmask(self.pid)
        ptrace.set_sigmask(self.pid, ALL_SIGNALS)
        self.held_sigmask = mask

    def unblock_signals(self) -> None:
        """Put back the mask :meth:`block_signals` kept. Needs a stop."""
        self._require_stopped("unblock_signals")
        if self.held_sigmask is None:
            raise AssertionError(f"unblock_signals: {self!r} has no mask held by block_signals")
        ptrace.set_sigmask(self.pid, self.held_sigmask)
        self.held_sigmask = None

    def siginfo(self) -> Siginfo:
        """The siginfo of the signal behind the current signal-delivery stop."""
        self._require_stopped("siginfo")
        return ptrace.get_siginfo(self.pid)

    def maps(self) -> list[MapEntry]:
        """The task's mappings from /proc/PID/maps (see ``linux.procmaps``)."""
        return read_maps(self.pid)

    # -- memory ------------------------------------------------------------------------------

    def read_memory(self, addr: int, size_bytes: int) -> bytes:
        """Read the task's memory (process_vm_readv, then /proc/PID/mem for pages that
        protection keeps it from). The task should be stopped."""
        out = bytearray(size_bytes)
        try:
            memory.read_into(self.pid, addr, out)
        except MemoryAccessFailed as err:
            done = err.done_bytes
            out[done:] = memory.proc_mem_read(self.pid, addr + done, size_bytes - done)
        return bytes(out)

    def write_memory(self, addr: int, data: memory.Buffer) -> None:
        """Write ``data`` into the task at ``addr``.

        process_vm_writev first (fast); where it stops with EFAULT (a read-only or r-x page,
        spike §1), the rest goes through /proc/PID/mem, which writes through protection.
        An unmapped address fails on both paths with ``MemoryAccessFailed``. The task should
        be stopped.
        """
        try:
            memory.write(self.pid, addr, data)
        except MemoryAccessFailed as err:
            view = memoryview(data).cast("B")
            memory.proc_mem_write(self.pid, addr + err.done_bytes, view[err.done_bytes:])

    # -- running code in the task ------------------------------------------------------------

    def inject_syscall(self, nr: int, *args: int) -> int:
        """Make the stopped task run syscall ``nr`` with ``args``; return its result.

        How (as compel and the spike do it): save the registers; write ``syscall`` (0f 05)
        over the two bytes at rip; set rax = nr and the argument registers, and
        orig_rax = -1 so that no syscall-restart logic touches them; single-step; read rax;
        then put back the two bytes and *exactly* the saved registers (a restarted sleep
        depends on orig_rax/rax being as they were). A -errno result raises
        :class:`InjectedSyscallFailed`; any other value (an address, a fd) is returned.

        Preconditions: the task is in a ptrace-stop; the syscall does not change rip or the
        task's memory under rip (execve, rt_sigreturn, munmap of that code) and does not
        disturb state the interrupted syscall needs (e.g. another nanosleep's restart
        block). Signals arriving meanwhile are deferred.
        """
        self._require_stopped("inject_syscall")
        if len(args) > len(SYSCALL_ARG_REGS):
            raise AssertionError(f"inject_syscall: {len(args)} arguments, a syscall takes "
                                 f"at most {len(SYSCALL_ARG_REGS)}")
        call = f"{syscall_name(nr)}({', '.join(hex(a) for a in args)})"
        saved = ptrace.get_regs(self.pid)
        ip = saved.rip
        saved_code = memory.proc_mem_read(self.pid, ip, len(SYSCALL_INSN))

        work = copy_regs(saved)
        work.rax = unsigned(nr)
        work.orig_rax = NO_SYSCALL
        for reg, value in zip(SYSCALL_ARG_REGS, args):
            setattr(work, reg, unsigned(value))

        memory.proc_mem_write(self.pid, ip, SYSCALL_INSN)
        try:
            ptrace.set_regs(self.pid, work)
            self._step_one_instruction(call)
            result = signed(ptrace.get_regs(self.pid).rax)
        except BaseException:
            self._undo_injection(ip, saved_code, saved, failing=True)
            raise
        self._undo_injection(ip, saved_code, saved, failing=False)
        if -MAX_ERRNO <= result < 0:
            raise InjectedSyscallFailed(self.pid, call, -result)
        return result

    def _undo_injection(self, ip: int, code: bytes, regs: UserRegs, *, failing: bool) -> None:
        """Put back the code bytes at ``ip`` and the exact registers saved before an injection.

        Nothing to do if the task died meanwhile. While another error is propagating
        (``failing``), the task dying under us is not allowed to replace that error.
        """
        if not self.seized:
            return
        try:
            memory.proc_mem_write(self.pid, ip, code)
            ptrace.set_regs(self.pid, regs)
        except TaskGone:
            if not failing:
                raise

    def _step_one_instruction(self, what: str) -> None:
        """Single-step the stopped task once and wait for the SIGTRAP that ends the step.

        A signal-delivery stop for another signal means the signal was pending before the
        instruction ran; it is deferred and the step is tried again.
        """
        for _ in range(_MAX_DEFERRED_STOPS):
            self.singlestep()
            stop = self.wait_stop()
            if not stop.alive:
                raise TaskGone(self.pid, f"injected {what}", stop.describe())
            if stop.kind is StopKind.SIGNAL and stop.signal == signal.SIGTRAP:
                return
            if stop.kind is StopKind.SIGNAL:
                self.deferred_signals.append(stop.signal)
                continue
            raise UnexpectedStop(self.pid, stop.describe(),
                                 f"SIGTRAP after single-stepping injected {what}")
        raise UnexpectedStop(self.pid, f"{_MAX_DEFERRED_STOPS} signal stops",
                             f"SIGTRAP after single-stepping injected {what}")

    def run_until_syscall_exit(self, nr: int,
                               pass_signals: Collection[int] = frozenset(),
                               max_syscalls: int | None = None,
                               defer_signals: Collection[int] = frozenset()) -> UserRegs:
        """Resume the stopped task with PTRACE_SYSCALL until it leaves syscall ``nr``.

        Returns the registers at that syscall-exit stop, where the task is left stopped.
        The orchestrator uses it to catch the exit of the blob's ``rt_sigreturn``: there
        the registers are the application's own. The entry is recognised with
        PTRACE_GET_SYSCALL_INFO and the next exit is the one wanted (an exit does not name
        its syscall; rt_sigreturn even resets orig_rax).

        Signals in ``pass_signals`` are delivered to the task; those in ``defer_signals``
        are held back and sent again at :meth:`detach` (``deferred_signals``); any other
        signal-delivery stop raises :class:`UnexpectedStop` (naming signal, si_code, fault
        address and rip) and leaves the task stopped there, for inspection. ``max_syscalls`` bounds the
        number of syscall entries seen before giving up. Preconditions: the task is in a
        ptrace-stop and was seized with PTRACE_O_TRACESYSGOOD.
        """
        self._require_stopped("run_until_syscall_exit")
        name = syscall_name(nr)
        entered = False
        entries = 0
        deliver = 0
        while True:
            self.syscall(deliver)
            deliver = 0
            stop = self.wait_stop()
            if not stop.alive:
                raise TaskGone(self.pid, f"waiting for the exit of {name}", stop.describe())
            if stop.kind is StopKind.SYSCALL:
                info = ptrace.get_syscall_info(self.pid)
                if info.op == ptrace.PTRACE_SYSCALL_INFO_ENTRY:
                    entered = info.nr == nr
                    entries += 1
                    if max_syscalls is not None and entries > max_syscalls:
                        raise UnexpectedStop(self.pid, f"{max_syscalls} syscalls without {name}",
                                             f"the exit of {name}")
                elif info.op == ptrace.PTRACE_SYSCALL_INFO_EXIT and entered:
                    return ptrace.get_regs(self.pid)
                continue
            if stop.kind is StopKind.SIGNAL and stop.signal in pass_signals:
                deliver = stop.signal
                continue
            if stop.kind is StopKind.SIGNAL and stop.signal in defer_signals:
                self.deferred_signals.append(stop.signal)   # resumed without it
                continue
            if stop.kind is StopKind.EVENT_STOP:
                continue   # a PTRACE_INTERRUPT from elsewhere: keep going
            raise UnexpectedStop(self.pid, self._describe_stop(stop), f"the exit of {name}")

    def _describe_stop(self, stop: Stop) -> str:
        """Say where an unexpected stop happened: signal, si_code, fault address, rip."""
        text = stop.describe()
        if stop.kind is not StopKind.SIGNAL:
            return text
        info = ptrace.get_siginfo(self.pid)
        rip = ptrace.get_regs(self.pid).rip
        return (f"{text}, si_code {info.si_code}, si_addr {info.fields.fault.si_addr or 0:#x}, "
                f"rip {rip:#x}")
