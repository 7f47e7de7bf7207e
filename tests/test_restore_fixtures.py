"""Restore real CRIU 4.2 checkpoints and check the processes continue (the fixtures' verify.py).

Every test installs the workload's files (install.sh), restores, checks, then kills what it
restored by pid and waits until /proc/PID is gone. Runs as root (CI does).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (AMD_PACK_XFEATURES, AVX512_XFEATURES, FIXTURES, PACK_CPU_CAP, kill_and_wait,
                      needs_fixtures, wait_gone)
from pycriu_restore.blob.kernel_frame import fresh_task_frame
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.linux.clone3 import clone3
from pycriu_restore.linux.xstate import XFEATURE_MASK_PKRU
from pycriu_restore.errors import PycrestoreError
from pycriu_restore.restore.orchestrator import RestoreOptions, restore
from pycriu_restore.restore.cpucap import CpuCap, parse_cpu_cap
from pycriu_restore.restore.timeline import Stage
from packs import PACK, pycrestore

pytestmark = needs_fixtures

IMAGES = FIXTURES / "images"
SINGLE = ["counter", "fpu", "signals", "pymem", "threads"]
TREES = ["pipes", "shmem", "unixsk"]


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant, from /proc (proc(5): task/TID/children)."""
    out, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    queue.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            pass
    return out


def kill_tree(root: int) -> None:
    """Kill a restored tree, all at once (a child killed alone would stay a zombie of its parent)."""
    pids = tree_pids(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        kill_and_wait(pid)


def dumped_pid(name: str) -> int:
    return ImageSet.open(IMAGES / name).pstree()[0].pid


@pytest.fixture(autouse=True)
def _pids_free():
    """The checkpointed pids must be free before and after every test."""
    yield
    for name in SINGLE + TREES:
        for entry in ImageSet.open(IMAGES / name).pstree():
            assert not os.path.exists(f"/proc/{entry.pid}"), f"{name}'s pid {entry.pid} is still in use after the test"


# What this CPU can do with the pack, from facts independent of the policy under test: the
# pack's dump CPU (conftest.AMD_PACK_XFEATURES) against this kernel's signal frames.
HOST_XFEATURES = fresh_task_frame().xfeatures
HAS_PKU = bool(HOST_XFEATURES & XFEATURE_MASK_PKRU)
# A CPU with AVX-512, which the dump CPU lacked: glibc's lazy-binding save area overflows
# there (the threads workload crashed 1 restore in 5), so the default policy refuses every
# checkpoint of the pack; with --cpu-cap none it restores, and threads may still crash.
CPU_HAS_MORE_XSAVE = bool(HOST_XFEATURES & AVX512_XFEATURES & ~AMD_PACK_XFEATURES)
OPTIONS = RestoreOptions(cpu_cap=parse_cpu_cap(PACK_CPU_CAP))


def expected_refusal(name: str) -> str | None:
    """What the default CPU policy must say of ``name`` here, or None if it restores."""
    if CPU_HAS_MORE_XSAVE:
        return "XSAVE state the dump CPU lacked (AVX-512"
    if name == "fpu" and not HAS_PKU:   # fpu set PKRU 0x5555555c itself (README)
        return "holds PKRU state (PKRU 0x5555555c) that this CPU cannot restore"
    return None


def check_refusal(name: str, *extra: str) -> None:
    """The default policy refuses ``name``: exit 4, one line naming the state, nothing left."""
    refusal = expected_refusal(name)
    assert refusal is not None
    result = pycrestore("restore", "-D", str(IMAGES / name), "-d", *extra)
    assert result.returncode == 4, result.stderr
    assert result.stderr.count("\n") == 1 and refusal in result.stderr, result.stderr
    for entry in ImageSet.open(IMAGES / name).pstree():
        assert not os.path.exists(f"/proc/{entry.pid}")


@pytest.mark.parametrize("name", SINGLE + TREES)
def test_restore_and_verify(name, tmp_path):
    PACK.install(name)
    if expected_refusal(name):
        check_refusal(name)
        if name == "fpu" and not HAS_PKU:
            return      # it executes RDPKRU: it cannot run on this CPU at all
    pidfile = tmp_path / "pid"
    result = pycrestore("-v", "restore", "-D", str(IMAGES / name), "-d", "--pidfile", str(pidfile),
                        "--cpu-cap", PACK_CPU_CAP)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        assert pid == dumped_pid(name)
        for stage in ("PLAN", "FORK", "BOOTSTRAP", "MEMORY", "RESUME"):
            assert f" {stage} " in result.stderr, result.stderr
        if name == "threads" and CPU_HAS_MORE_XSAVE:
            # Restored as asked (--cpu-cap none), with the warning; it may crash in ld.so,
            # which is why the default refuses (checked above).
            assert "this CPU has XSAVE state the dump CPU lacked" in result.stderr
            return
        check = PACK.verify(name)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith(f"PASS {name}")
    finally:
        kill_tree(pid)


@pytest.mark.parametrize("name", SINGLE + TREES)
def test_restore_in_new_pid_namespace(name, tmp_path):
    PACK.install(name)
    if expected_refusal(name):
        check_refusal(name, "--pid-ns")
        if name == "fpu" and not HAS_PKU:
            return      # it executes RDPKRU: it cannot run on this CPU at all
    pidfile = tmp_path / "pid"
    result = pycrestore("-v", "restore", "-D", str(IMAGES / name), "-d", "--pid-ns", "--pidfile", str(pidfile),
                        "--cpu-cap", PACK_CPU_CAP)
    assert result.returncode == 0, result.stderr
    outer = int(pidfile.read_text())
    try:
        with open(f"/proc/{outer}/status") as f:
            nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
        assert int(nspid[-1]) == dumped_pid(name)
        if name == "threads" and CPU_HAS_MORE_XSAVE:
            # Restored as asked (--cpu-cap none), with the warning; it may crash in ld.so,
            # which is why the default refuses (checked above).
            assert "this CPU has XSAVE state the dump CPU lacked" in result.stderr
            return
        check = PACK.verify(name, pid_for_ns=outer)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        kill_tree(outer)
    init = int(result.stderr.split("init ")[1].split(")")[0])
    assert wait_gone(init)  # the namespace's init leaves with the restored task


def test_fpu_registers_restored_exactly():
    """At the first instruction after rt_sigreturn, every register equals the image's."""
    PACK.install("fpu")
    core = ImageSet.open(IMAGES / "fpu").core(31600)
    gp, fp = core.thread_info.gpregs, core.thread_info.fpregs
    seen = {}

    def inspect(tracee) -> None:
        seen["regs"] = tracee.regs
        seen["xstate"] = tracee.xstate()

    # Not the policy under test (check_refusal is): PKRU, which this CPU may lack, aside.
    restored = restore(str(IMAGES / "fpu"), RestoreOptions(cpu_cap=CpuCap.NONE, before_detach=inspect))
    kill_and_wait(restored.root_pid)
    regs, xstate = seen["regs"], seen["xstate"]
    for name in ("r12", "r13", "r14", "r15", "rip", "rsp", "rbx", "rbp"):
        assert getattr(regs, name) == getattr(gp, name.lstrip("r") if name in ("rip", "rsp", "rbx", "rbp") else name), name
    words = lambda values: b"".join(v.to_bytes(4, "little") for v in values)  # noqa: E731
    assert int.from_bytes(xstate[0:2], "little") == fp.cwd == 0x0E7F  # x87 control word
    assert int.from_bytes(xstate[24:28], "little") == fp.mxcsr == 0xFFE0
    assert xstate[32:160] == words(fp.st_space)  # st0 = 1/3L, st1 = -e
    assert xstate[160:416] == words(fp.xmm_space)
    assert xstate[576:832] == words(fp.xsave.ymmh_space)  # ymm upper halves (XSAVE standard format)
    assert any(fp.xsave.ymmh_space)


def test_threads_state_right_after_restore():
    """Every thread back with its tid, comm and blocked mask, before the task runs again."""
    PACK.install("threads")
    seen = {}

    def inspect(tracee) -> None:
        for tid in sorted(int(t) for t in os.listdir(f"/proc/{tracee.pid}/task")):
            with open(f"/proc/{tracee.pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{tracee.pid}/task/{tid}/status") as f:
                blk = int(next(line.split()[1] for line in f if line.startswith("SigBlk:")), 16)
            seen[tid] = (comm, blk)

    restored = restore(str(IMAGES / "threads"), RestoreOptions(cpu_cap=OPTIONS.cpu_cap, before_detach=inspect))
    kill_tree(restored.root_pid)
    assert sorted(seen) == [31200, 31201, 31202, 31203, 31204]
    for i in range(1, 5):  # thread i is named t<i> and blocks SIGRTMIN+i (README)
        comm, blk = seen[31200 + i]
        assert comm == f"t{i}"
        assert blk & (1 << (34 + i - 1)), (i, hex(blk))


def _vma_rows(maps_text: str) -> list[tuple[int, int, str, str]]:
    rows = []
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5] if len(parts) > 5 else ""
        rows.append((start, end, parts[1][:3], path))
    return rows


def test_restored_maps_equal_the_image():
    PACK.install("counter")
    restored = restore(str(IMAGES / "counter"), OPTIONS)
    pid = restored.root_pid
    try:
        with open(f"/proc/{pid}/maps") as f:
            live = {(s, e): (perms, path) for s, e, perms, path in _vma_rows(f.read())}
        files = {f.id: f for f in ImageSet.open(IMAGES / "counter").files()}
        for vma in ImageSet.open(IMAGES / "counter").mm(pid).vmas:
            prot = "".join(c if vma.prot & bit else "-" for c, bit in (("r", 1), ("w", 2), ("x", 4)))
            if vma.status & (1 << 12):  # [vvar]: the kernel shows it as [vvar] + [vvar_vclock]
                parts = sorted((s, e, p) for (s, e), (p, path) in live.items() if vma.start <= s < vma.end)
                assert parts[0][0] == vma.start and parts[-1][1] == vma.end, parts
                continue
            if vma.end > 1 << 47:
                continue  # [vsyscall]: the kernel's, never restored
            assert (vma.start, vma.end) in live, f"VMA {vma.start:#x}-{vma.end:#x} missing"
            perms, path = live[(vma.start, vma.end)]
            assert perms == prot, (hex(vma.start), perms, prot)
            if vma.status & (1 << 6 | 1 << 7):
                assert path == files[vma.shmid].reg.name
            elif vma.status & (1 << 3):
                assert path == "[vdso]"
        assert len([r for r in live if r[1] <= 1 << 47]) == len([v for v in ImageSet.open(IMAGES / "counter").mm(pid).vmas if v.end <= 1 << 47]) + 1
    finally:
        kill_and_wait(pid)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_twenty_restores_leave_nothing_behind():
    fds_before = _fd_count()
    for _ in range(20):
        PACK.install("counter")
        restored = restore(str(IMAGES / "counter"), OPTIONS)
        pid = restored.root_pid
        check = PACK.verify("counter")
        kill_and_wait(pid)
        assert check.returncode == 0, check.stdout
    assert _fd_count() == fds_before
    # No zombie children of ours either.
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


# -- bad input: one line, a distinct exit code, nothing left running, no pidfile ----------------


def _assert_clean_failure(result, code: int, must_contain: str, pidfile: Path, name: str = "counter") -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    # One error line (warnings, e.g. about FPU state this CPU lacks, may come before it).
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("pycrestore: error:")]
    assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]), result.stderr
    assert must_contain in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not pidfile.exists()
    assert not os.path.exists(f"/proc/{dumped_pid(name)}")


def test_pid_in_use_is_refused_and_suggests_pid_ns(tmp_path):
    PACK.install("counter")
    pid = dumped_pid("counter")
    r, w = os.pipe()
    holder = clone3(0, [pid])
    if holder == 0:
        os.close(w)
        os.read(r, 1)  # hold the pid until the test is done
        os._exit(0)
    os.close(r)
    try:
        pidfile = tmp_path / "pid"
        result = pycrestore("restore", "--cpu-cap", PACK_CPU_CAP, "-D", str(IMAGES / "counter"), "-d", "--pidfile", str(pidfile))
        assert result.returncode == 4, result.stderr
        assert f"pid {pid} is in use" in result.stderr and "--pid-ns" in result.stderr
        assert not pidfile.exists()
    finally:
        os.close(w)
        os.waitpid(holder, 0)


def test_missing_file_is_named(tmp_path):
    PACK.install("counter")
    os.unlink("/var/tmp/pycrestore-fixtures/counter/stdout")
    pidfile = tmp_path / "pid"
    result = pycrestore("restore", "--cpu-cap", PACK_CPU_CAP, "-D", str(IMAGES / "counter"), "-d", "--pidfile", str(pidfile))
    _assert_clean_failure(result, 4, "/var/tmp/pycrestore-fixtures/counter/stdout: missing", pidfile)


def test_changed_file_is_named(tmp_path):
    PACK.install("counter")
    with open("/var/tmp/pycrestore-fixtures/counter/stderr", "a") as f:
        f.write("grown\n")
    pidfile = tmp_path / "pid"
    result = pycrestore("restore", "--cpu-cap", PACK_CPU_CAP, "-D", str(IMAGES / "counter"), "-d", "--pidfile", str(pidfile))
    _assert_clean_failure(result, 4, "stderr: size is 6 bytes, dumped with 0", pidfile)


def test_unsupported_feature_is_named(tmp_path):
    PACK.install("counter")
    images = tmp_path / "counter"
    shutil.copytree(IMAGES / "counter", images)
    core = load_image(images / "core-31100.img")
    core.entries[0].tc.task_state = 6  # compel's TASK_ZOMBIE: never in an image (zombies are DEAD, 2)
    (images / "core-31100.img").write_bytes(dump_image(core))
    pidfile = tmp_path / "pid"
    result = pycrestore("restore", "--cpu-cap", PACK_CPU_CAP, "-D", str(images), "-d", "--pidfile", str(pidfile))
    _assert_clean_failure(result, 3, "core-31100.img: unsupported: tc.task_state = 6", pidfile)


def test_vma_that_cannot_be_mapped_fails_cleanly(tmp_path):
    """A read-only file VMA turned into a writable shared mapping: the file is opened
    read-only, so the blob's mmap fails with EACCES; the error names the VMA."""
    from pycriu_restore.plan.build import build_plan

    PACK.install("counter")
    images = tmp_path / "counter"
    shutil.copytree(IMAGES / "counter", images)
    plan_vmas = build_plan(ImageSet.open(images)).root.vmas
    no_pages = {v.start for v in plan_vmas if v.file is not None and not v.page_runs and v.prot == 1}
    mm = load_image(images / "mm-31100.img")
    victim = next(v for v in mm.entries[0].vmas if v.start in no_pages)
    victim.flags = 0x1  # MAP_SHARED
    victim.prot = 0x3  # PROT_READ | PROT_WRITE
    victim.status = (victim.status & ~(1 << 6)) | (1 << 7)  # VMA_FILE_PRIVATE -> VMA_FILE_SHARED
    (images / "mm-31100.img").write_bytes(dump_image(mm))
    pidfile = tmp_path / "pid"
    result = pycrestore("restore", "--cpu-cap", PACK_CPU_CAP, "-D", str(images), "-d", "--pidfile", str(pidfile))
    _assert_clean_failure(result, 5, f"{victim.start:#x}", pidfile)
    assert "EACCES" in result.stderr


# -- trees: shared kernel objects are one object, and a failure anywhere kills the whole tree ----


def _pipe_inode(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def test_pipe_between_tasks_is_one_pipe():
    PACK.install("pipes")
    restored = restore(str(IMAGES / "pipes"), OPTIONS)
    parent, child = restored.pids[31300], restored.pids[31301]
    try:
        # The parent's write end (fd 5) and the child's read end (fd 4) are one pipe ...
        assert _pipe_inode(parent, 5) == _pipe_inode(child, 4) and _pipe_inode(parent, 5).startswith("pipe:")
        # ... and what the parent writes after the restore reaches the child (verify.py
        # checks that the child logs 51..63 from the old buffer, then the new values).
        check = PACK.verify("pipes")
        assert check.returncode == 0, check.stdout
        with open(f"/proc/{child}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == parent  # ppid
    finally:
        kill_tree(parent)


def _maps_line(pid: int, start: int) -> list[str]:
    """The fields of the /proc/PID/maps line of the VMA at ``start`` (the name is fields[5:])."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if int(line.split("-")[0], 16) == start:
                return line.split()
    raise AssertionError(f"no VMA at {start:#x} in {pid}")


def _memfd_inode(pid: int, start: int) -> int:
    return int(_maps_line(pid, start)[4])


def test_shared_anonymous_memory_is_one_region():
    PACK.install("shmem")
    restored = restore(str(IMAGES / "shmem"), OPTIONS)
    parent, child = restored.pids[31700], restored.pids[31701]
    try:
        assert _memfd_inode(parent, 0x7EFE1A1ED000) == _memfd_inode(child, 0x7EFE1A1ED000) != 0
        # MAP_SHARED|MAP_ANONYMOUS memory (dumped through CRIU's memfd path as "/dev/zero")
        # is anonymous shmem again: maps names it as before the dump, not "/memfd:...".
        for pid in (parent, child):
            assert _maps_line(pid, 0x7EFE1A1ED000)[5:] == ["/dev/zero", "(deleted)"]
        # A write by one task is seen by the other: write through the parent's memory and
        # read it back through the child's, in bytes the workload never uses (verify.py
        # checks the workload's own traffic too).
        marker = b"pycrestore-shared-region-check!"
        probe = 0x7EFE1A1ED000 + 0xF000  # after seq + 4096 slots, before the pattern: unused
        with open(f"/proc/{parent}/mem", "r+b", buffering=0) as mem:
            mem.seek(probe)
            mem.write(marker)
        with open(f"/proc/{child}/mem", "rb", buffering=0) as mem:
            mem.seek(probe)
            assert mem.read(len(marker)) == marker
        check = PACK.verify("shmem")
        assert check.returncode == 0, check.stdout
    finally:
        kill_tree(parent)


def test_killing_a_task_in_the_middle_fails_the_whole_restore():
    PACK.install("pipes")
    killed = []

    def kill_child(stage, pids):
        if stage is Stage.MEMORY and not killed:
            os.kill(pids[1], signal.SIGKILL)
            killed.append(pids[1])

    with pytest.raises(PycrestoreError) as info:
        restore(str(IMAGES / "pipes"), RestoreOptions(cpu_cap=OPTIONS.cpu_cap, on_stage=kill_child))
    assert "31301" in str(info.value), str(info.value)
    assert info.value.exit_code == 5
    for pid in (31300, 31301):
        assert wait_gone(pid)


def test_without_detach_pycrestore_waits_and_exits_with_the_task_status(tmp_path):
    PACK.install("counter")
    log_file = tmp_path / "restore.log"
    proc = subprocess.Popen([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(IMAGES / "counter"),
                             "-o", str(log_file), "--cpu-cap", PACK_CPU_CAP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "RESUME" not in (log_file.read_text() if log_file.exists() else "") and time.monotonic() < deadline:
            assert proc.poll() is None, "pycrestore ended before the task was restored"
            time.sleep(0.05)
        with open("/proc/31100/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == proc.pid  # pycrestore is the parent
        os.kill(31100, signal.SIGKILL)
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_gone(31100)
    text = log_file.read_text()
    for stage in ("PLAN", "PREFLIGHT", "FORK", "BOOTSTRAP", "MEMORY", "RESUME"):
        assert f" {stage} " in text and " ms] " in text, text


def test_relative_images_dir(tmp_path):
    """The task changes its cwd before it opens the pages image: paths must not be relative."""
    PACK.install("counter")
    pidfile = tmp_path / "pid"
    result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D",
                             os.path.relpath(IMAGES / "counter", tmp_path), "-d", "--pidfile", str(pidfile),
                             "--cpu-cap", PACK_CPU_CAP],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    kill_and_wait(int(pidfile.read_text()))
