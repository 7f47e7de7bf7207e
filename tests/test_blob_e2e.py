"""The whole blob, for real: a forked child is turned into a hand-made checkpointed program.

A plan with two VMAs (code, data), the running kernel's vdso moved to an image address, a
signal frame with r12/xmm1/ymm1/fs base, a blocked mask, a pending signal, a sigaction, an
rlimit, an itimer and a comm is built with build_bootstrap; the child enters the blob
without a tracer (BLOB_F_NO_TRAP: no int3), which unmaps all of Python, maps and fills the
VMAs from a pages file and rt_sigreturns into tests/c/blob_payload.S. The payload checks
each restored item and exits with the number of the first that is wrong, or 42.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import importlib.util
import os
import pathlib
import resource
import signal
import struct
import subprocess

import pytest

from pycriu_restore.blob import abi
from pycriu_restore.blob.bootstrap import RuntimeLayout, bootstrap_size, build_bootstrap
from pycriu_restore.blob.forkrun import run_bootstrap_in_child
from pycriu_restore.blob.kernel_frame import fresh_task_frame
from pycriu_restore.blob.loader import BLOB_FILE_NAME, Blob, load_blob
from pycriu_restore.linux import ptrace
from pycriu_restore.linux.procmaps import read_maps
from pycriu_restore.plan.model import (ItimerValue, MappedFile, MmFields, PageRun, Rseq,
                                       SigAction, Task, Thread, Vma, VmaKind)
from pycriu_restore.restore.task import ServiceFds
from conftest import FIXTURES, seized_fork, needs_fixtures

pytestmark = needs_fixtures

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAYLOAD_SRC = ROOT / "tests" / "c" / "blob_payload.S"
PAGE = 4096

# The hand-made task's layout: far from anything Python maps (heap low, mmaps near 0x7f..).
CODE_ADDR = 0x2000_0000_0000
DATA_ADDR = CODE_ADDR + 0x10000          # 2 pages, also the payload's stack
VVAR_ADDR = CODE_ADDR + 0x100000         # the image's [vvar]; [vdso] follows as it does here
REGION_BASE = 0x2100_0000_0000

EXPECTED = {
    "R12_VALUE": 0x1122_3344_5566_7788,
    "DATA_WORD": 0xFEED_FACE_1234_5678,
    "XMM1_LO": 0x0102_0304_0506_0708,
    "YMM1_HI_LO": 0xA1A2_A3A4_A5A6_A7A8,
    "YMM1_HI_HI": 0xB1B2_B3B4_B5B6_B7B8,
    "FS_BASE": DATA_ADDR + 0x800,
    "SIGMASK": 1 << (signal.SIGUSR1 - 1),
    "PENDING_BIT": 1 << (signal.SIGUSR1 - 1),
    "COMM_WORD": int.from_bytes(b"payload\0", "little"),
    "CORE_LIMIT": 0x3000,        # RLIMIT_CORE soft limit: not what the parent has (0 here)
}
SUCCESS = 42
RLIM_INFINITY = (1 << 64) - 1
SI_QUEUE = -1
RLIM_NLIMITS = 16             # asm-generic/resource.h: RLIM_NLIMITS


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    spec = importlib.util.spec_from_file_location("restorer_blob_build", ROOT / "restorer_blob" / "build.py")
    build_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_py)
    out = tmp_path_factory.mktemp("blob") / BLOB_FILE_NAME
    build_py.build(out)
    return load_blob(out, required_symbols=(abi.BLOB_ENTRY_RESTORE_TASK, abi.BLOB_SYSCALL_GADGET))


@pytest.fixture(scope="module")
def runtime() -> RuntimeLayout:
    """This process's layout as the orchestrator would read it from a stopped fork of it."""
    with seized_fork() as pid:
        return RuntimeLayout.from_task(read_maps(pid), ptrace.get_rseq_configuration(pid),
                                       fresh_task_frame())


def _vdso_addr(runtime: RuntimeLayout) -> int:
    return VVAR_ADDR + runtime.vdso[0] - runtime.vvar[0]


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory, runtime: RuntimeLayout) -> bytes:
    work = tmp_path_factory.mktemp("payload")
    obj, raw = work / "payload.o", work / "payload.bin"
    defines = {**EXPECTED, "DATA_ADDR": DATA_ADDR, "VDSO_ADDR": _vdso_addr(runtime)}
    subprocess.run(["gcc", "-c", "-o", str(obj), str(PAYLOAD_SRC),
                    *(f"-D{name}={value:#x}" for name, value in defines.items())],
                   check=True, capture_output=True, text=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
    code = raw.read_bytes()
    assert 0 < len(code) <= PAGE
    return code


def _pages_file(tmp_path: pathlib.Path, payload: bytes, data_pages: int = 2) -> pathlib.Path:
    """Page 0: the payload; then the data VMA's pages (the first starts with DATA_WORD)."""
    data = struct.pack("<Q", EXPECTED["DATA_WORD"]) + bytes(range(256)) * 15
    pages = payload.ljust(PAGE, b"\xcc") + data.ljust(PAGE, b"\0") + b"\x5a" * PAGE * (data_pages - 1)
    path = tmp_path / "pages-1.img"
    path.write_bytes(pages)
    return path


def _gpregs() -> dict[str, int]:
    regs = {name: 0 for name in ("r8", "r9", "r10", "r11", "r13", "r14", "r15", "di", "si",
                                 "bp", "bx", "dx", "ax", "cx", "fs", "gs", "ds", "es", "gs_base")}
    regs.update(r12=EXPECTED["R12_VALUE"], ip=CODE_ADDR, sp=DATA_ADDR + 2 * PAGE - 128,
                flags=0x202, cs=0x33, ss=0x2b, orig_ax=(1 << 64) - 1, fs_base=EXPECTED["FS_BASE"])
    return regs


def _words(value_lo: int, value_hi: int) -> list[int]:
    """Two u64 -> four little-endian u32 words (one 16-byte register)."""
    return list(struct.unpack("<4I", struct.pack("<QQ", value_lo, value_hi)))


def _task(runtime: RuntimeLayout, data_pages: int = 2, vmas: tuple[Vma, ...] | None = None) -> Task:
    xmm = [0] * 64
    xmm[4:8] = _words(EXPECTED["XMM1_LO"], 0)
    ymmh = [0] * 64
    ymmh[4:8] = _words(EXPECTED["YMM1_HI_LO"], EXPECTED["YMM1_HI_HI"])
    thread = Thread(
        tid=os.getpid(), gpregs=_gpregs(),
        fpregs={"cwd": 0x37F, "swd": 0, "twd": 0, "fop": 0, "rip": 0, "rdp": 0, "mxcsr": 0x1F80,
                "mxcsr_mask": 0xFFFF, "st_space": [0] * 32, "xmm_space": xmm},
        xsave={"xstate_bv": 0x7, "ymmh_space": ymmh},
        blk_sigset=EXPECTED["SIGMASK"], sas=None, clear_tid_addr=0, futex_rla=0, futex_rla_len=0,
        rseq=None, comm="payload")
    vvar_len = runtime.vvar_vclock[1] - runtime.vvar[0]
    vdso_len = runtime.vdso[1] - runtime.vdso[0]
    if vmas is None:
        vmas = (
            Vma(CODE_ADDR, CODE_ADDR + PAGE, prot=5, flags=0x22, kind=VmaKind.ANON_PRIVATE,
                page_runs=(PageRun(CODE_ADDR, 1, 0),)),
            Vma(DATA_ADDR, DATA_ADDR + 2 * PAGE, prot=3, flags=0x22, kind=VmaKind.ANON_PRIVATE,
                page_runs=(PageRun(DATA_ADDR, data_pages, PAGE),)),
            Vma(VVAR_ADDR, VVAR_ADDR + vvar_len, prot=1, flags=0x22, kind=VmaKind.VVAR),
            Vma(_vdso_addr(runtime), _vdso_addr(runtime) + vdso_len, prot=5, flags=0x22,
                kind=VmaKind.VDSO),
        )
    limits = [resource.getrlimit(n) for n in range(RLIM_NLIMITS)]
    limits[resource.RLIMIT_CORE] = (EXPECTED["CORE_LIMIT"], limits[resource.RLIMIT_CORE][1])
    rlimits = tuple((cur % (1 << 64), max_ % (1 << 64)) for cur, max_ in limits)
    siginfo = struct.pack("<iii", signal.SIGUSR1, 0, SI_QUEUE).ljust(abi.BLOB_SIGINFO_BYTES, b"\0")
    mm = MmFields(start_code=CODE_ADDR, end_code=CODE_ADDR + PAGE, start_data=DATA_ADDR,
                  end_data=DATA_ADDR + PAGE, start_stack=DATA_ADDR + PAGE, start_brk=DATA_ADDR,
                  brk=DATA_ADDR, arg_start=DATA_ADDR, arg_end=DATA_ADDR, env_start=DATA_ADDR,
                  env_end=DATA_ADDR, auxv=(0, 0), exe=MappedFile(0, "/bin/true", os.O_RDONLY))
    return Task(pid=os.getpid(), ppid=1, pgid=1, sid=1, comm="payload", threads=(thread,),
                vmas=vmas, pages_path="pages-1.img", mm=mm, files=(), cwd="/", root="/", umask=0o22,
                rlimits=rlimits, sigactions=(SigAction(signal.SIGUSR2, 1, 0, 0, 0),),
                itimers=(ItimerValue(0, 0, 100, 0), ItimerValue(0, 0, 0, 0), ItimerValue(0, 0, 0, 0)),
                shared_pending_signals=(siginfo,))


def _check_free(base: int, size: int) -> None:
    for entry in read_maps(os.getpid()):
        assert not (entry.start < base + size and base < entry.end), f"{entry} is in the way"


def _run(blob: Blob, runtime: RuntimeLayout, task: Task, pages: pathlib.Path, **service_fds):
    fd = os.open(pages, os.O_RDONLY)
    try:
        service = ServiceFds(pages=service_fds.get("pages", fd), exe=-1,
                             mapped=service_fds.get("mapped", {}))
        boot = build_bootstrap(task, REGION_BASE, runtime, service, blob=blob,
                               extra_flags=abi.BLOB_F_NO_TRAP, set_mm=False)
        _check_free(boot.base, boot.size)
        _check_free(CODE_ADDR, VVAR_ADDR + 0x100000 - CODE_ADDR)
        return boot, run_bootstrap_in_child(boot)
    finally:
        os.close(fd)


def test_blob_restores_a_hand_made_task(blob: Blob, runtime: RuntimeLayout, payload: bytes,
                                        tmp_path: pathlib.Path) -> None:
    assert runtime.vvar and runtime.vvar_vclock and runtime.vdso, "this kernel's vdso areas"
    task = _task(runtime)
    boot, outcome = _run(blob, runtime, task, _pages_file(tmp_path, payload))
    assert boot.size == bootstrap_size(task, runtime, blob=blob)
    assert outcome.signal is None and outcome.exit_code == SUCCESS, outcome.describe()
    assert outcome.status.ok


def test_short_pages_file_fails_the_fill_step(blob: Blob, runtime: RuntimeLayout, payload: bytes,
                                              tmp_path: pathlib.Path) -> None:
    """The plan wants 3 data pages, the file has 2: ENODATA at the batch's last iovec."""
    vvar_len = runtime.vvar_vclock[1] - runtime.vvar[0]
    vmas = (
        Vma(CODE_ADDR, CODE_ADDR + PAGE, prot=5, flags=0x22, kind=VmaKind.ANON_PRIVATE,
            page_runs=(PageRun(CODE_ADDR, 1, 0),)),
        Vma(DATA_ADDR, DATA_ADDR + 3 * PAGE, prot=3, flags=0x22, kind=VmaKind.ANON_PRIVATE,
            page_runs=(PageRun(DATA_ADDR, 3, PAGE),)),
        Vma(VVAR_ADDR, VVAR_ADDR + vvar_len, prot=1, flags=0x22, kind=VmaKind.VVAR),
    )
    _boot, outcome = _run(blob, runtime, _task(runtime, vmas=vmas), _pages_file(tmp_path, payload))
    assert outcome.exit_code == abi.BLOB_EXIT_STEP_FAILED, outcome.describe()
    status = outcome.status
    assert (status.failed, status.step, status.err, status.index) == (
        True, abi.BLOB_STEP_FILL_PAGES, errno.ENODATA, 0)
    # One batch (code page and data pages are contiguous in the file); the read stopped
    # after 3 of its 4 pages, so the iovec left points at the third data page.
    assert status.addr == DATA_ADDR + 2 * PAGE
    assert status.describe() == (f"read pages batch 0 into {DATA_ADDR + 2 * PAGE:#x}: "
                                 "pages image ended early (ENODATA)")


def test_bad_file_fd_fails_the_map_step_with_the_plan_index(blob: Blob, runtime: RuntimeLayout,
                                                            payload: bytes, tmp_path: pathlib.Path) -> None:
    """A file VMA whose service fd is not open: EBADF, reported with its number in the plan."""
    vmas = _task(runtime).vmas
    file_vma = Vma(DATA_ADDR + 4 * PAGE, DATA_ADDR + 5 * PAGE, prot=1, flags=0x2,
                   kind=VmaKind.FILE_PRIVATE, file=MappedFile(7, "/nonexistent", os.O_RDONLY))
    task = _task(runtime, vmas=(vmas[0], vmas[1], file_vma, *vmas[2:]))
    _boot, outcome = _run(blob, runtime, task, _pages_file(tmp_path, payload),
                          mapped={("/nonexistent", os.O_RDONLY): 999})
    assert outcome.exit_code == abi.BLOB_EXIT_STEP_FAILED, outcome.describe()
    assert outcome.status.describe() == f"map VMA 2 at {DATA_ADDR + 4 * PAGE:#x}: EBADF"


def _replace_thread(task: Task, **changes: object) -> Task:
    return dataclasses.replace(task, threads=(dataclasses.replace(task.main_thread, **changes),))


# Each item the payload checks, broken in the plan: the payload must catch it (its exit code),
# which shows that the success above comes from the blob restoring it. A negative number is
# a signal that must kill the child: with SIGUSR1 unblocked, the pending SIGUSR1 the blob
# queued is delivered the moment rt_sigreturn installs the mask.
MUTATIONS = {
    "r12": (10, lambda t: _replace_thread(t, gpregs={**t.main_thread.gpregs, "r12": 1})),
    "data page": (11, lambda t: dataclasses.replace(t, vmas=(
        t.vmas[0], dataclasses.replace(t.vmas[1], page_runs=()), *t.vmas[2:]))),
    "ymm1 upper half (xstate_bv without YMM)": (12, lambda t: _replace_thread(
        t, xsave={**t.main_thread.xsave, "xstate_bv": 0x3})),
    "blocked mask": (-signal.SIGUSR1, lambda t: _replace_thread(t, blk_sigset=0)),
    "pending signal": (15, lambda t: dataclasses.replace(t, shared_pending_signals=())),
    "fs base": (16, lambda t: _replace_thread(t, gpregs={**t.main_thread.gpregs, "fs_base": DATA_ADDR})),
    "sigaction": (18, lambda t: dataclasses.replace(t, sigactions=())),
    "rlimit": (19, lambda t: dataclasses.replace(t, rlimits=t.rlimits[:resource.RLIMIT_CORE])),
    "itimer": (20, lambda t: dataclasses.replace(t, itimers=(ItimerValue(0, 0, 0, 0),) * 3)),
    "comm": (21, lambda t: _replace_thread(t, comm="other")),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_payload_notices_each_item_missing(blob: Blob, runtime: RuntimeLayout, payload: bytes,
                                           tmp_path: pathlib.Path, name: str) -> None:
    code, mutate = MUTATIONS[name]
    _boot, outcome = _run(blob, runtime, mutate(_task(runtime)), _pages_file(tmp_path, payload))
    assert outcome.status.ok, outcome.describe()
    if code < 0:
        assert outcome.signal == -code, outcome.describe()
    else:
        assert outcome.exit_code == code, outcome.describe()


# --- the orchestrator's protocol, driven through ptrace (abi.h, "status protocol") --------

def _wait_stop(pid: int) -> int:
    """waitpid for a ptrace-stop of ``pid``; return the stop signal (0x80 set: syscall stop)."""
    _pid, status = os.waitpid(pid, 0)
    assert os.WIFSTOPPED(status), f"pid {pid} ended instead of stopping: status {status:#x}"
    return os.WSTOPSIG(status)


def _child_with_region(base: int, size: int) -> int:
    """Fork a child that maps [base, base + size) RWX (as the orchestrator's injected mmap
    would), says so on a pipe and sleeps; return its pid (running, not yet traced)."""
    from pycriu_restore.blob.forkrun import MAP_FIXED_NOREPLACE, _mmap
    import mmap as mmap_module
    import time

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            prot = mmap_module.PROT_READ | mmap_module.PROT_WRITE | mmap_module.PROT_EXEC
            flags = mmap_module.MAP_PRIVATE | mmap_module.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
            if _mmap(base, size, prot, flags, -1, 0) == base:
                os.write(ready_w, b"R")
                time.sleep(30)      # caught here, inside clock_nanosleep, like a real task
        finally:
            os._exit(1)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"R", f"child {pid} could not map {base:#x}"
    finally:
        os.close(ready_r)
    return pid


def test_orchestrator_protocol_through_ptrace(blob: Blob, runtime: RuntimeLayout, payload: bytes,
                                               tmp_path: pathlib.Path) -> None:
    """int3 with the status OK, then rt_sigreturn as the very next syscall, the registers of
    the frame at its exit, munmap of the region through the gadget, and the program runs."""
    from pycriu_restore.blob.status import STATUS_BYTES, decode_status
    from pycriu_restore.linux import memory
    from pycriu_restore.linux.regs import signed, unsigned
    from pycriu_restore.linux.syscalls import NR_MUNMAP, NR_RT_SIGRETURN

    task = _task(runtime)
    pages = _pages_file(tmp_path, payload)
    fd = os.open(pages, os.O_RDONLY)
    try:
        boot = build_bootstrap(task, REGION_BASE, runtime, ServiceFds(pages=fd, exe=-1),
                               blob=blob, set_mm=False)
        _check_free(boot.base, boot.size)
        pid = _child_with_region(boot.base, boot.size)
    finally:
        os.close(fd)
    try:
        ptrace.seize(pid, ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL)
        ptrace.interrupt(pid)
        assert _wait_stop(pid) == signal.SIGTRAP          # PTRACE_EVENT_STOP
        memory.write(pid, boot.base, boot.image)
        regs = ptrace.get_regs(pid)
        regs.rip, regs.rsp, regs.rdi, regs.orig_rax = boot.entry, boot.stack_top, boot.args_addr, unsigned(-1)
        ptrace.set_regs(pid, regs)
        ptrace.cont(pid)

        assert _wait_stop(pid) == signal.SIGTRAP          # the int3
        status = decode_status(memory.read(pid, boot.status_addr, STATUS_BYTES))
        assert status.ok, status.describe()
        ptrace.syscall(pid)                               # suppresses the SIGTRAP
        assert _wait_stop(pid) == signal.SIGTRAP | 0x80
        entry = ptrace.get_regs(pid)
        assert entry.orig_rax == NR_RT_SIGRETURN and entry.rsp == boot.sigframes[0] + 8
        ptrace.syscall(pid)
        assert _wait_stop(pid) == signal.SIGTRAP | 0x80
        restored = ptrace.get_regs(pid)
        assert (restored.rip, restored.r12, restored.rsp, restored.fs_base) == (
            CODE_ADDR, EXPECTED["R12_VALUE"], task.main_thread.gpregs["sp"], EXPECTED["FS_BASE"])
        assert signed(restored.orig_rax) == -1

        gadget = ptrace.get_regs(pid)
        gadget.rip, gadget.rax, gadget.rdi, gadget.rsi = boot.syscall_gadget, NR_MUNMAP, boot.base, boot.size
        ptrace.set_regs(pid, gadget)
        ptrace.syscall(pid)
        assert _wait_stop(pid) == signal.SIGTRAP | 0x80    # munmap entry
        ptrace.syscall(pid)
        assert _wait_stop(pid) == signal.SIGTRAP | 0x80    # munmap exit
        assert ptrace.get_regs(pid).rax == 0
        assert not [m for m in read_maps(pid) if m.start < boot.end and boot.base < m.end]
        ptrace.set_regs(pid, restored)
        ptrace.detach(pid)
        _pid, wstatus = os.waitpid(pid, 0)
        assert os.WIFEXITED(wstatus) and os.WEXITSTATUS(wstatus) == SUCCESS, hex(wstatus)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


# --- real CRIU images: the blob alone turns a forked Python into the dumped workload ------

FIXTURE_BASE = 0x6000_0000_0000       # free in this process and in every fixture's layout


def _fixture_task(name: str, tmp_path: pathlib.Path) -> Task:
    """The fixture's plan, with its binary copied to tmp_path (the shared fixture directory
    belongs to the lead's restore tests)."""
    import shutil

    from pycriu_restore.images import ImageSet
    from pycriu_restore.plan.build import build_plan

    task = build_plan(ImageSet.open(FIXTURES / "images" / name)).root
    old = f"/var/tmp/pycrestore-fixtures/{name}/{name}"
    new = tmp_path / name
    shutil.copy2(FIXTURES / "bin" / name, new)

    def moved(mapped):
        return dataclasses.replace(mapped, path=str(new)) if mapped and mapped.path == old else mapped

    vmas = tuple(dataclasses.replace(v, file=moved(v.file)) for v in task.vmas)
    return dataclasses.replace(task, vmas=vmas, mm=dataclasses.replace(task.mm, exe=moved(task.mm.exe)))


class _FdsForChild:
    """Put files at given fd numbers in this process for a fork to inherit, then put back
    whatever was there (pytest keeps files at low fds)."""

    def __init__(self, wanted: dict[int, int]) -> None:
        self.saved: dict[int, int | None] = {}
        for fd, source in wanted.items():
            try:
                self.saved[fd] = os.dup(fd)
            except OSError:
                self.saved[fd] = None
            os.dup2(source, fd, inheritable=False)

    def restore(self) -> None:
        for fd, saved in self.saved.items():
            if saved is None:
                os.close(fd)
            else:
                os.dup2(saved, fd)
                os.close(saved)


def _run_fixture(name: str, runtime: RuntimeLayout, tmp_path: pathlib.Path, done: str,
                 timeout_s: float = 3.0) -> tuple[str, str, list]:
    """Restore fixture ``name`` into a forked child with the blob (BLOB_F_NO_TRAP) and let
    it run until its log contains ``done``. Returns (status line, log, /proc maps)."""
    import time

    from pycriu_restore.blob.forkrun import _child_main, _SharedRegion
    from pycriu_restore.blob.status import STATUS_BYTES, decode_status

    task = _fixture_task(name, tmp_path)
    service = ServiceFds.for_task(task)
    boot = build_bootstrap(task, FIXTURE_BASE, runtime, service, extra_flags=abi.BLOB_F_NO_TRAP)
    _check_free(boot.base, boot.size)
    log = tmp_path / "log"
    opened = [os.open(task.pages_path, os.O_RDONLY), os.open(task.mm.exe.path, os.O_RDONLY)]
    opened += [os.open(path, flags) for path, flags in service.mapped]
    opened.append(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    wanted = dict(zip([service.pages, service.exe, *service.mapped.values(), 3], opened))
    if any(f.fd in (4, 5) for f in task.files):          # signals: its self-pipe
        pipe = os.pipe()
        opened += pipe
        wanted.update({4: pipe[0], 5: pipe[1]})
    region = _SharedRegion(boot.size, boot.base)
    fds = _FdsForChild(wanted)
    try:
        region.write(0, boot.image)
        child = os.fork()
        if child == 0:
            _child_main(boot.entry, boot.args_addr)
    finally:
        fds.restore()
        for fd in opened:
            os.close(fd)
    try:
        deadline = time.monotonic() + timeout_s
        while done not in log.read_text() and time.monotonic() < deadline:
            assert os.waitpid(child, os.WNOHANG) == (0, 0), f"{name} ended: {log.read_text()!r}"
            time.sleep(0.05)
        maps = read_maps(child)
        assert os.readlink(f"/proc/{child}/exe") == task.mm.exe.path
        status = decode_status(region.read(boot.status_addr - boot.base, STATUS_BYTES))
        return status.describe(), log.read_text(), maps
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        region.close()


def _plan_ranges(task: Task) -> list[tuple[int, int]]:
    return [(v.start, v.end) for v in task.vmas]


def test_counter_fixture_continues_its_log(runtime: RuntimeLayout, tmp_path: pathlib.Path) -> None:
    """counter continues 63, 64, ... (it was at 62), with exactly its dumped mappings."""
    status, log, maps = _run_fixture("counter", runtime, tmp_path, "64\n")
    assert status == "ok"
    assert log.startswith("63\n64\n"), log
    task = _fixture_task("counter", tmp_path)
    kept = [(m.start, m.end) for m in maps
            if m.path != "[vsyscall]" and not FIXTURE_BASE <= m.start < FIXTURE_BASE + (1 << 30)]
    # [vvar] and [vvar_vclock] are one VMA in the image, two in /proc.
    vvar = next(v for v in task.vmas if v.kind is VmaKind.VVAR)
    expected = sorted([r for r in _plan_ranges(task) if r[0] != vvar.start] +
                      [(vvar.start, vvar.start + 4 * PAGE), (vvar.start + 4 * PAGE, vvar.end)])
    assert kept == expected


def test_signals_fixture_checks_its_own_signal_state(runtime: RuntimeLayout,
                                                     tmp_path: pathlib.Path) -> None:
    """signals verifies its sigaltstack, mask, dispositions, itimer interval and pending set
    itself every 5th alarm (fixtures README); the alarms continue from 31."""
    _status, log, _maps = _run_fixture("signals", runtime, tmp_path, "pend=")
    assert log.startswith("A 31\n"), log
    t_line = next(line for line in log.splitlines() if line.startswith("T "))
    assert t_line.endswith("alt=ok mask=ok act=ok itv=ok pend=usr2,rt"), log


# --- multi-threaded tasks (abi.h, "Threads") ----------------------------------------------
#
# A hand-made task of a leader and two threads runs tests/c/thread_payload.S: the blob
# creates the threads with clone3(set_tid), each sets its own kernel state and leaves
# through its own frame; the payload threads check fs base, TLS, comm, mask, tid and their
# pending signals themselves and report in a slot the leader waits for (exit 42: all hold).

THREAD_PAYLOAD_SRC = ROOT / "tests" / "c" / "thread_payload.S"
THREAD_ENTRY_OFFSET = 0x400          # thread_payload.S: thread_start
T_DATA_PAGES = 4
SLOTS_ADDR = DATA_ADDR               # page 0: a u64 result slot per thread (index 0 unused)
TLS_ADDR = DATA_ADDR + PAGE          # page 1: a 256-byte TLS block per thread, word 0 = itself
RSEQ_ADDR = DATA_ADDR + PAGE + 0x800  # then a 64-byte rseq area per thread
ROBUST_ADDR = DATA_ADDR + PAGE + 0xC00  # and a robust list head (24 bytes) per thread
RSEQ_SIG = 0x53053053                # x86 RSEQ_SIG, what glibc registers with
ROBUST_LIST_HEAD_BYTES = 24          # sizeof(struct robust_list_head) (linux/futex.h)
SIGRTMIN = 34                        # glibc's SIGRTMIN (the kernel's is 32)
SI_USER = 0                          # asm-generic/siginfo.h


def _sigbit(sig: int) -> int:
    return 1 << (sig - 1)


# Per other thread: comm, blocked mask, one pending signal (number, si_code). Thread 1's
# signal is sigqueue()d (SI_QUEUE), thread 2's is kill()-like (SI_USER): a thread may queue
# either kind to itself (kernel/signal.c: do_rt_tgsigqueueinfo).
THREADS = (
    ("t1", _sigbit(signal.SIGUSR2) | _sigbit(SIGRTMIN + 1), (signal.SIGUSR2, SI_QUEUE)),
    ("t2", _sigbit(signal.SIGUSR1) | _sigbit(SIGRTMIN + 2), (signal.SIGUSR1, SI_USER)),
)


FIXTURE_PIDS = range(31100, 31900)   # the fixtures' pids and tids (README): never ours


def _free_tids(count: int) -> list[int]:
    """``count`` tids not in use now. Taken just below the last pid the kernel handed out
    (ns_last_pid): it allocates upward, so these stay free until it wraps around pid_max,
    while clone3(set_tid) claims them."""
    last = int(pathlib.Path("/proc/sys/kernel/ns_last_pid").read_text())
    found = [n for n in range(last - 1, 300, -1)
             if n not in FIXTURE_PIDS and not os.path.exists(f"/proc/{n}")]
    assert len(found) >= count, f"no {count} free tids below {last}"
    return found[:count]


@pytest.fixture(scope="module")
def thread_payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    work = tmp_path_factory.mktemp("thread_payload")
    obj, raw = work / "payload.o", work / "payload.bin"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(THREAD_PAYLOAD_SRC)],
                   check=True, capture_output=True, text=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
    code = raw.read_bytes()
    assert THREAD_ENTRY_OFFSET < len(code) <= PAGE
    return code


def _thread_pages(tmp_path: pathlib.Path, code: bytes, nr_threads: int) -> pathlib.Path:
    """Page 0: the code; then the data VMA: slots zero, each TLS block's self pointer."""
    data = bytearray(T_DATA_PAGES * PAGE)
    for index in range(nr_threads):
        tls = TLS_ADDR + 0x100 * index
        struct.pack_into("<Q", data, tls - DATA_ADDR, tls)
    path = tmp_path / "pages-1.img"
    path.write_bytes(code.ljust(PAGE, b"\xcc") + bytes(data))
    return path


def _thread_task(tids: list[int]) -> Task:
    """The leader (this process's pid, as in _task) and one thread per tid."""
    def gpregs(index: int, ip: int, **regs: int) -> dict[str, int]:
        values = {name: 0 for name in GPREG_NAMES}
        values.update(ip=ip, sp=DATA_ADDR + 2 * PAGE + 0x800 * (index + 1) - 128, flags=0x202,
                      cs=0x33, ss=0x2B, orig_ax=(1 << 64) - 1, fs_base=TLS_ADDR + 0x100 * index)
        values.update(regs)
        return values

    fpregs = {"cwd": 0x37F, "swd": 0, "twd": 0, "fop": 0, "rip": 0, "rdp": 0, "mxcsr": 0x1F80,
              "mxcsr_mask": 0xFFFF, "st_space": [0] * 32, "xmm_space": [0] * 64}
    leader = Thread(tid=os.getpid(), gpregs=gpregs(0, CODE_ADDR, r12=len(tids), r13=SLOTS_ADDR + 8),
                    fpregs=fpregs, xsave=None, blk_sigset=0, sas=None, clear_tid_addr=0,
                    futex_rla=0, futex_rla_len=0, rseq=None, comm="leader")
    threads = [leader]
    for index, (tid, (comm, mask, (sig, code))) in enumerate(zip(tids, THREADS), start=1):
        siginfo = struct.pack("<iii", sig, 0, code).ljust(abi.BLOB_SIGINFO_BYTES, b"\0")
        regs = gpregs(index, CODE_ADDR + THREAD_ENTRY_OFFSET, r12=TLS_ADDR + 0x100 * index,
                      r13=SLOTS_ADDR + 8 * index,
                      r14=int.from_bytes(comm.encode().ljust(8, b"\0"), "little"),
                      r15=mask, bx=tid, bp=_sigbit(sig))
        threads.append(Thread(
            tid=tid, gpregs=regs, fpregs=fpregs, xsave=None, blk_sigset=mask, sas=None,
            clear_tid_addr=SLOTS_ADDR + 0x100 + 8 * index,
            futex_rla=ROBUST_ADDR + 0x40 * index, futex_rla_len=ROBUST_LIST_HEAD_BYTES,
            rseq=Rseq(RSEQ_ADDR + 0x40 * index, 32, RSEQ_SIG), comm=comm,
            pending_signals=(siginfo,)))
    vmas = (
        Vma(CODE_ADDR, CODE_ADDR + PAGE, prot=5, flags=0x22, kind=VmaKind.ANON_PRIVATE,
            page_runs=(PageRun(CODE_ADDR, 1, 0),)),
        Vma(DATA_ADDR, DATA_ADDR + T_DATA_PAGES * PAGE, prot=3, flags=0x22,
            kind=VmaKind.ANON_PRIVATE, page_runs=(PageRun(DATA_ADDR, T_DATA_PAGES, PAGE),)),
    )
    limits = tuple((cur % (1 << 64), max_ % (1 << 64))
                   for cur, max_ in (resource.getrlimit(n) for n in range(RLIM_NLIMITS)))
    mm = MmFields(start_code=CODE_ADDR, end_code=CODE_ADDR + PAGE, start_data=DATA_ADDR,
                  end_data=DATA_ADDR + PAGE, start_stack=DATA_ADDR + PAGE, start_brk=DATA_ADDR,
                  brk=DATA_ADDR, arg_start=DATA_ADDR, arg_end=DATA_ADDR, env_start=DATA_ADDR,
                  env_end=DATA_ADDR, auxv=(0, 0), exe=MappedFile(0, "/bin/true", os.O_RDONLY))
    return Task(pid=os.getpid(), ppid=1, pgid=1, sid=1, comm="leader", threads=tuple(threads),
                vmas=vmas, pages_path="pages-1.img", mm=mm, files=(), cwd="/", root="/",
                umask=0o22, rlimits=limits, sigactions=(),
                itimers=(ItimerValue(0, 0, 0, 0),) * 3, shared_pending_signals=())


GPREG_NAMES = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "di", "si", "bp", "bx",
               "dx", "ax", "cx", "fs", "gs", "ds", "es", "gs_base")


def _run_threads(blob: Blob, runtime: RuntimeLayout, task: Task, pages: pathlib.Path,
                 flags: int):
    """build_bootstrap + run_bootstrap_in_child without a tracer; also the Bootstrap."""
    fd = os.open(pages, os.O_RDONLY)
    try:
        boot = build_bootstrap(task, REGION_BASE, runtime, ServiceFds(pages=fd, exe=-1),
                               blob=blob, extra_flags=flags, set_mm=False)
        _check_free(boot.base, boot.size)
        _check_free(CODE_ADDR, T_DATA_PAGES * PAGE + DATA_ADDR - CODE_ADDR)
        return boot, run_bootstrap_in_child(boot)
    finally:
        os.close(fd)


def test_threads_run_their_payload_without_a_tracer(blob: Blob, runtime: RuntimeLayout,
                                                    thread_payload: bytes,
                                                    tmp_path: pathlib.Path) -> None:
    """BLOB_F_NO_TRAP: every thread goes straight from its record to its rt_sigreturn; both
    threads find their own state (their slots say 42) and the leader exits with 42."""
    task = _thread_task(_free_tids(2))
    boot, outcome = _run_threads(blob, runtime, task, _thread_pages(tmp_path, thread_payload, 3),
                                 abi.BLOB_F_NO_TRAP)
    assert outcome.exit_code == SUCCESS, outcome.describe()
    assert [s.describe() for s in outcome.thread_statuses] == ["ok", "ok", "ok"]
    assert len(boot.thread_status_addrs) == 3 and outcome.thread_statuses[0] == outcome.status


# Each per-thread item broken in the plan (the payload's registers still expect the good
# value): the thread's check must fail, which shows the success above comes from the blob.
THREAD_MUTATIONS = {
    "fs base": (1, lambda t: dataclasses.replace(t, gpregs={**t.gpregs, "fs_base": TLS_ADDR})),
    "comm": (3, lambda t: dataclasses.replace(t, comm="tX")),
    "blocked mask": (4, lambda t: dataclasses.replace(t, blk_sigset=t.blk_sigset | 1)),
    "pending signal": (6, lambda t: dataclasses.replace(t, pending_signals=())),
}


@pytest.mark.parametrize("name", sorted(THREAD_MUTATIONS))
def test_thread_payload_notices_each_item_missing(blob: Blob, runtime: RuntimeLayout,
                                                  thread_payload: bytes, tmp_path: pathlib.Path,
                                                  name: str) -> None:
    code, mutate = THREAD_MUTATIONS[name]
    task = _thread_task(_free_tids(2))
    task = dataclasses.replace(task, threads=(task.threads[0], mutate(task.threads[1]), task.threads[2]))
    _boot, outcome = _run_threads(blob, runtime, task, _thread_pages(tmp_path, thread_payload, 3),
                                  abi.BLOB_F_NO_TRAP)
    assert all(s.ok for s in outcome.thread_statuses), outcome.describe()
    assert outcome.exit_code == code, outcome.describe()


def test_exit_mode_waits_for_every_thread(blob: Blob, runtime: RuntimeLayout,
                                          thread_payload: bytes, tmp_path: pathlib.Path) -> None:
    """BLOB_F_EXIT: threads exit(0) after their steps, the leader exits once all report."""
    task = _thread_task(_free_tids(2))
    _boot, outcome = _run_threads(blob, runtime, task, _thread_pages(tmp_path, thread_payload, 3),
                                  abi.BLOB_F_EXIT)
    assert outcome.exit_code == 0, outcome.describe()
    assert [s.describe() for s in outcome.thread_statuses] == ["ok", "ok", "ok"]


def test_tid_in_use_fails_thread_creation(blob: Blob, runtime: RuntimeLayout,
                                          thread_payload: bytes, tmp_path: pathlib.Path) -> None:
    """clone3 set_tid of a tid that exists (this process's): EEXIST, thread 2 never starts."""
    tids = _free_tids(1) + [os.getpid()]
    task = _thread_task(tids)
    _boot, outcome = _run_threads(blob, runtime, task, _thread_pages(tmp_path, thread_payload, 3),
                                  abi.BLOB_F_EXIT)
    assert outcome.exit_code == abi.BLOB_EXIT_STEP_FAILED, outcome.describe()
    assert outcome.status.describe() == f"create thread 2 (tid {os.getpid()}): tid in use (EEXIST)"
    assert not outcome.thread_statuses[2].started


def test_failing_thread_reports_in_its_own_record(blob: Blob, runtime: RuntimeLayout,
                                                  thread_payload: bytes,
                                                  tmp_path: pathlib.Path) -> None:
    """An rseq length the kernel refuses (16 < 32): thread 1's record names the call."""
    task = _thread_task(_free_tids(2))
    bad = dataclasses.replace(task.threads[1], rseq=Rseq(RSEQ_ADDR + 0x40, 16, RSEQ_SIG))
    task = dataclasses.replace(task, threads=(task.threads[0], bad, task.threads[2]))
    _boot, outcome = _run_threads(blob, runtime, task, _thread_pages(tmp_path, thread_payload, 3),
                                  abi.BLOB_F_EXIT)
    assert outcome.exit_code == abi.BLOB_EXIT_STEP_FAILED, outcome.describe()
    record = outcome.thread_statuses[1]
    assert (record.failed, record.step, record.err, record.index) == (
        True, abi.BLOB_STEP_THREAD_STATE, errno.EINVAL, 3)
    assert record.describe() == f"register rseq ({RSEQ_ADDR + 0x40:#x}): EINVAL"


def test_bad_thread_descriptor_is_refused_before_anything(blob: Blob, runtime: RuntimeLayout,
                                                          thread_payload: bytes,
                                                          tmp_path: pathlib.Path) -> None:
    """A thread stack top that is not 16-byte aligned: check_args names the descriptor."""
    task = _thread_task(_free_tids(2))
    pages = _thread_pages(tmp_path, thread_payload, 3)
    fd = os.open(pages, os.O_RDONLY)
    try:
        boot = build_bootstrap(task, REGION_BASE, runtime, ServiceFds(pages=fd, exe=-1),
                               blob=blob, extra_flags=abi.BLOB_F_EXIT, set_mm=False)
        args = abi.BlobArgs.from_buffer_copy(boot.image, boot.args_addr - boot.base)
        image = bytearray(boot.image)
        stack_top_at = (args.threads - boot.base + 2 * ctypes.sizeof(abi.BlobThread)
                        + abi.BlobThread.stack_top.offset)
        struct.pack_into("<Q", image, stack_top_at, struct.unpack_from("<Q", image, stack_top_at)[0] - 8)
        outcome = run_bootstrap_in_child(dataclasses.replace(boot, image=bytes(image)))
    finally:
        os.close(fd)
    assert outcome.exit_code == abi.BLOB_EXIT_STEP_FAILED, outcome.describe()
    assert outcome.status.describe() == "check arguments (thread descriptor 2): EINVAL"
    assert not outcome.thread_statuses[1].started


def _kill_traced(pid: int, traced: list[int]) -> None:
    """SIGKILL the task and reap it. A traced thread other than the leader stays a zombie
    until its tracer reaps it (waitpid with __WALL), and until then the leader's own exit is
    not reported: reap the threads first, or waitpid(pid) never returns."""
    from pycriu_restore.linux.waitstatus import WALL

    os.kill(pid, signal.SIGKILL)
    for tid in [t for t in traced if t != pid] + [pid]:
        try:
            while True:
                status = os.waitpid(tid, WALL)[1]
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    break
        except ChildProcessError:
            pass                    # already reaped, or never attached


def _proc_status(pid: int, tid: int) -> dict[str, str]:
    """/proc/PID/task/TID/status as name -> value (proc(5))."""
    text = pathlib.Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_threads_through_ptrace(blob: Blob, runtime: RuntimeLayout, thread_payload: bytes,
                                tmp_path: pathlib.Path) -> None:
    """The orchestrator's side of abi.h "Threads": a PTRACE_EVENT_CLONE stop of the leader per
    thread with the wanted tid, each new thread's PTRACE_EVENT_STOP, an int3 and an OK
    record per thread, then each thread through its own rt_sigreturn (frame + 8) into its
    registers; /proc shows each thread's comm, blocked and pending signals; the region goes
    through the leader's gadget, and after the detach the payload reports success."""
    from pycriu_restore.blob.status import STATUS_BYTES, decode_status
    from pycriu_restore.linux import memory
    from pycriu_restore.linux.regs import signed, unsigned
    from pycriu_restore.linux.syscalls import NR_MUNMAP, NR_RT_SIGRETURN
    from pycriu_restore.linux.waitstatus import StopKind, wait_for

    tids = _free_tids(2)
    task = _thread_task(tids)
    pages = _thread_pages(tmp_path, thread_payload, 3)
    fd = os.open(pages, os.O_RDONLY)
    try:
        boot = build_bootstrap(task, REGION_BASE, runtime, ServiceFds(pages=fd, exe=-1),
                               blob=blob, set_mm=False)
        _check_free(boot.base, boot.size)
        pid = _child_with_region(boot.base, boot.size)
    finally:
        os.close(fd)
    traced = [pid]
    try:
        ptrace.seize(pid, ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL
                     | ptrace.PTRACE_O_TRACECLONE)
        ptrace.interrupt(pid)
        assert wait_for(pid).kind is StopKind.EVENT_STOP
        memory.write(pid, boot.base, boot.image)
        regs = ptrace.get_regs(pid)
        regs.rip, regs.rsp, regs.rdi, regs.orig_rax = boot.entry, boot.stack_top, boot.args_addr, unsigned(-1)
        ptrace.set_regs(pid, regs)
        ptrace.cont(pid)

        # The leader: one EVENT_CLONE stop per thread, in plan order, then its int3.
        while True:
            stop = wait_for(pid)
            if stop.kind is StopKind.EVENT and stop.event == ptrace.PTRACE_EVENT_CLONE:
                tid = ptrace.get_event_msg(pid)
                traced.append(tid)
                first = wait_for(tid)           # auto-attached: starts in PTRACE_EVENT_STOP
                assert first.kind is StopKind.EVENT_STOP, first.describe()
                ptrace.cont(tid)
                ptrace.cont(pid)
                continue
            assert stop.kind is StopKind.SIGNAL and stop.signal == signal.SIGTRAP, stop.describe()
            break
        assert traced[1:] == tids
        for tid in tids:
            stop = wait_for(tid)
            assert stop.kind is StopKind.SIGNAL and stop.signal == signal.SIGTRAP, stop.describe()
        assert sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")) == sorted(traced)
        for tid, addr in zip(traced, boot.thread_status_addrs):
            status = decode_status(memory.read(pid, addr, STATUS_BYTES))
            assert status.ok, f"thread {tid}: {status.describe()}"

        # Each thread through its own rt_sigreturn.
        restored = {}
        for index, tid in enumerate(traced):
            ptrace.syscall(tid)                     # suppresses the int3's SIGTRAP
            assert wait_for(tid).kind is StopKind.SYSCALL
            entry = ptrace.get_regs(tid)
            assert entry.orig_rax == NR_RT_SIGRETURN and entry.rsp == boot.sigframes[index] + 8
            ptrace.syscall(tid)
            assert wait_for(tid).kind is StopKind.SYSCALL
            restored[tid] = ptrace.get_regs(tid)
            assert signed(restored[tid].orig_rax) == -1
        for index, (tid, thread) in enumerate(zip(traced, task.threads)):
            got = restored[tid]
            assert (got.rip, got.rsp, got.r12, got.fs_base) == (
                thread.gpregs["ip"], thread.gpregs["sp"], thread.gpregs["r12"], thread.gpregs["fs_base"])
            assert pathlib.Path(f"/proc/{pid}/task/{tid}/comm").read_text() == thread.comm + "\n"
            proc = _proc_status(pid, tid)
            assert int(proc["SigBlk"], 16) == thread.blk_sigset, (tid, proc["SigBlk"])
            assert int(proc["Pid"]) == tid and int(proc["Tgid"]) == pid
            if index:
                assert int(proc["SigPnd"], 16) == _sigbit(THREADS[index - 1][2][0]), proc["SigPnd"]
                rseq = ptrace.get_rseq_configuration(tid)
                assert (rseq.abi_pointer, rseq.abi_size, rseq.signature) == (
                    thread.rseq.abi_pointer, thread.rseq.abi_size, thread.rseq.signature)

        gadget = ptrace.get_regs(pid)
        gadget.rip, gadget.rax, gadget.rdi, gadget.rsi = boot.syscall_gadget, NR_MUNMAP, boot.base, boot.size
        ptrace.set_regs(pid, gadget)
        ptrace.syscall(pid)
        assert wait_for(pid).kind is StopKind.SYSCALL     # munmap entry
        ptrace.syscall(pid)
        assert wait_for(pid).kind is StopKind.SYSCALL     # munmap exit
        assert ptrace.get_regs(pid).rax == 0
        assert not [m for m in read_maps(pid) if m.start < boot.end and boot.base < m.end]
        ptrace.set_regs(pid, restored[pid])
        for tid in reversed(traced):
            ptrace.detach(tid)
        _pid, wstatus = os.waitpid(pid, 0)
        assert os.WIFEXITED(wstatus) and os.WEXITSTATUS(wstatus) == SUCCESS, hex(wstatus)
    except BaseException:
        _kill_traced(pid, traced)
        raise
    assert not os.path.exists(f"/proc/{pid}")
    assert not any(os.path.exists(f"/proc/{tid}") for tid in tids)


# --- page fill with worker threads ---------------------------------------------------------

BIG_ADDR = CODE_ADDR + 0x4000_0000       # 1 GiB above the code: a shared file mapping
BIG_BYTES = 24 << 20


def _fill_task(runtime: RuntimeLayout, tmp_path: pathlib.Path, payload: bytes):
    """The hand-made task plus a BIG_BYTES MAP_SHARED mapping of a file, whose pages come from
    the pages image: what the fill threads write lands in the file, where the test reads it.
    Returns (task, pages path, the file, its content expected)."""
    pages = _pages_file(tmp_path, payload)
    expected = b"".join(struct.pack("<Q", BIG_ADDR + off) * 512 for off in range(0, BIG_BYTES, PAGE))
    big_off = pages.stat().st_size
    with pages.open("ab") as f:
        f.write(expected)
    target = tmp_path / "big"
    target.write_bytes(bytes(BIG_BYTES))
    big = Vma(BIG_ADDR, BIG_ADDR + BIG_BYTES, prot=3, flags=0x1, kind=VmaKind.FILE_SHARED,
              file=MappedFile(9, str(target), os.O_RDWR),
              page_runs=(PageRun(BIG_ADDR, BIG_BYTES // PAGE, big_off),))
    base = _task(runtime)
    return dataclasses.replace(base, vmas=(*base.vmas[:2], big, *base.vmas[2:])), pages, target, expected


@pytest.mark.parametrize("tids", [(0, 0, 0), (0,)], ids=["3 workers", "1 worker"])
def test_fill_workers_read_every_page_and_are_joined(blob: Blob, runtime: RuntimeLayout, payload: bytes,
                                                     tmp_path: pathlib.Path, tids: tuple[int, ...]) -> None:
    """Workers with kernel-chosen tids (0) read their share; the task then runs its payload."""
    task, pages, target, expected = _fill_task(runtime, tmp_path, payload)
    fd = os.open(target, os.O_RDWR)
    try:
        boot, outcome = _run(blob, dataclasses.replace(runtime, fill_tids=tids), task, pages,
                             mapped={(str(target), os.O_RDWR): fd})
    finally:
        os.close(fd)
    assert boot.fill_threads == 1 + len(tids)
    assert outcome.signal is None and outcome.exit_code == SUCCESS, outcome.describe()
    assert target.read_bytes() == expected


def test_failing_fill_worker_is_the_fill_steps_failure(blob: Blob, runtime: RuntimeLayout, payload: bytes,
                                                       tmp_path: pathlib.Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """blob.fill_worker (faults.py): each worker fails its first batch with EIO; the leader
    joins them and fails step FILL_PAGES with that batch and address."""
    from pycriu_restore import faults

    monkeypatch.setitem(faults._ARMED, "blob.fill_worker", 1)
    task, pages, target, _expected = _fill_task(runtime, tmp_path, payload)
    fd = os.open(target, os.O_RDWR)
    try:
        boot, outcome = _run(blob, dataclasses.replace(runtime, fill_tids=(0, 0)), task, pages,
                             mapped={(str(target), os.O_RDWR): fd})
    finally:
        os.close(fd)
    assert outcome.exit_code == abi.BLOB_EXIT_STEP_FAILED, outcome.describe()
    status = outcome.status
    assert (status.step, status.err) == (abi.BLOB_STEP_FILL_PAGES, errno.EIO), status.describe()
    assert status.describe().startswith(f"read pages batch {status.index} into ")
