"""The page fill with several threads (blob step FILL_PAGES): same bytes, same flags, no thread left.

A checkpoint of our own, used by nobody else: tests/c/fillmem.c with 256 MiB of memory whose
every word depends on its address, in four areas (MADV_HUGEPAGE, MADV_NOHUGEPAGE, no advice
with holes, a small one) and two threads, started at pid 52100 and dumped with CRIU 4.2.
Each restore runs ``pycrestore restore`` and checks what the brief of the fill asks:

- the restored program finds every word of its memory as it was (it checks itself on
  SIGUSR1: tests/c/fillmem.c), holes included;
- /proc/PID/smaps: every VMA has the image's hg/nh flags, the hg area is in huge pages and
  the nh area in none (the page-size advice is given before the fill);
- /proc/PID/task lists the image's threads and no fill worker;
- a failing fill thread (a pages file cut short during the restore; the blob.fill_worker
  fault) fails the restore with exit 5 naming the fill step, and leaves no process.

The pure parts (how many threads, how the batches are cut, which tids) are tested without root.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ensure_criu, kill_and_wait, kill_session, pid_max_at_least, wait_gone  # noqa: E402
from pycriu_restore.blob import abi  # noqa: E402
from pycriu_restore.blob.bootstrap import (FILL_BYTES_PER_THREAD, FILL_MAX_THREADS, HUGE_PAGE_BYTES,  # noqa: E402
                                           MADV_HUGEPAGE, MADV_NOHUGEPAGE, PageBatch, fill_batches,
                                           fill_thread_count)
from pycriu_restore.errors import EXIT_RESTORE  # noqa: E402
from pycriu_restore.images import ImageSet  # noqa: E402
from pycriu_restore.plan.build import build_plan  # noqa: E402
from pycriu_restore.plan.model import PageRun, Vma, VmaKind  # noqa: E402
from pycriu_restore.restore import fill_tids  # noqa: E402
from pycriu_restore.restore.errors import RestoreFailed  # noqa: E402
from pycriu_restore.restore.orchestrator import RestoreOptions, restore  # noqa: E402
from pycriu_restore.restore.timeline import Stage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "c" / "fillmem.c"
PID = 52100                      # pagefill's range: 52000-52999
MEMORY_MIB = 256
TREE_PID = 52200                 # the tree's parent; its child comes next (52202 or so)
TREE_MIB = 64                    # per task: two threads each above FILL_BYTES_PER_THREAD
# fillmem's areas: hg MIB/2, nh MIB/4, plain MIB/4, small 64 KiB; it counts every word it checks.
EXPECTED_WORDS = ((MEMORY_MIB << 20) + (64 << 10)) // 8
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
CHECK_TIMEOUT_S = 30.0


def _thp_mode() -> str:
    """The bracketed word of the THP mode ("always", "madvise" or "never")."""
    text = THP_MODE.read_text()
    return text[text.index("[") + 1:text.index("]")]


# --- the checkpoint ----------------------------------------------------------------------


def _checkpoint(work: Path, pid: int, mib: int, tasks: int) -> tuple[Path, Path]:
    """(images dir, run dir): fillmem started at ``pid`` with ``tasks`` tasks, filled, dumped
    by CRIU (which ends it)."""
    if os.geteuid() != 0:
        pytest.fail("restoring needs root")
    criu = ensure_criu()
    exe, run, images = work / "fillmem", work / "run", work / "images"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(SOURCE)], check=True)
    run.mkdir()
    images.mkdir()
    with pid_max_at_least(65536):
        proc = _start_at(pid, [str(exe), str(run), str(mib), str(tasks)])
        try:
            deadline = time.monotonic() + CHECK_TIMEOUT_S
            while not (run / "ready").exists():
                assert proc.poll() is None, f"fillmem ended with {proc.returncode} before it was ready"
                assert time.monotonic() < deadline, "fillmem did not get ready"
                time.sleep(0.02)
            subprocess.run([str(criu), "dump", "-t", str(pid), "-D", str(images), "-o", "dump.log"],
                           check=True, capture_output=True)
            proc.wait(timeout=10)
        finally:
            kill_session(pid)
    (run / "ready").unlink()
    return images, run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """One task of MEMORY_MIB at PID, two threads."""
    return _checkpoint(tmp_path_factory.mktemp("fill"), PID, MEMORY_MIB, 1)


def _start_at(pid: int, argv: list[str]) -> subprocess.Popen:
    """Start ``argv`` in a session of its own at ``pid`` (ns_last_pid), or fail."""
    for _ in range(50):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if proc.pid == pid:
            return proc
        kill_session(proc.pid)
        proc.wait()
    pytest.fail(f"could not start {argv[0]} at pid {pid} (pids are busy)")


def _restore(images: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    pidfile = images.parent / "pidfile"
    pidfile.unlink(missing_ok=True)
    with pid_max_at_least(65536):
        return subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(images), "-d",
                               "--pidfile", str(pidfile)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, **(env or {})})


def _nothing_left(exe: Path) -> None:
    """No process of the checkpoint (its pid, any process running fillmem) is left."""
    assert wait_gone(PID), f"pid {PID} is still there after a failed restore"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                assert os.readlink(entry / "exe") != str(exe), f"pid {entry.name} still runs {exe}"
            except OSError:
                pass


# --- a restore with threads --------------------------------------------------------------


def _smaps(pid: int) -> dict[int, dict[str, str]]:
    """VMA start -> its smaps fields (proc(5)); "VmFlags" is the space-separated list."""
    areas: dict[int, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if not head.endswith(":"):
            current = areas.setdefault(int(head.split("-")[0], 16), {})
            continue
        current[head[:-1]] = line.split(":", 1)[1].strip()
    return areas


def _ask_check(pid: int, run: Path) -> str:
    """SIGUSR1 until fillmem has written run/check-PID (a signal sent before its pause() waits)."""
    result = run / f"check-{pid}"
    result.unlink(missing_ok=True)
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    while not result.exists():
        assert time.monotonic() < deadline, "the restored fillmem did not answer SIGUSR1"
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.2)
    return result.read_text().strip()


def test_restored_memory_flags_and_threads_are_the_images(checkpoint) -> None:
    images, run = checkpoint
    plan = build_plan(ImageSet.open(str(images)))
    (task,) = plan.tasks
    proc = _restore(images)
    assert proc.returncode == 0, proc.stderr
    pid = int((images.parent / "pidfile").read_text())
    try:
        assert pid == PID
        # No fill worker is left: the task has the image's threads, with the image's tids.
        assert sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")) == sorted(t.tid for t in task.threads)
        smaps = _smaps(pid)
        for vma in task.vmas:
            if vma.kind in (VmaKind.VDSO, VmaKind.VVAR) or not vma.page_runs:
                continue
            flags = smaps[vma.start]["VmFlags"].split()
            where = f"VMA {vma.start:#x}-{vma.end:#x}"
            assert ("hg" in flags) == bool(vma.madv >> MADV_HUGEPAGE & 1), f"{where}: {flags}"
            assert ("nh" in flags) == bool(vma.madv >> MADV_NOHUGEPAGE & 1), f"{where}: {flags}"
            huge_kb = int(smaps[vma.start]["AnonHugePages"].split()[0])
            if "nh" in flags:
                assert huge_kb == 0, f"{where} is nh and has {huge_kb} kB in huge pages"
            elif ("hg" in flags and vma.size >= 4 * HUGE_PAGE_BYTES and _thp_mode() != "never"
                  and not task.mm.thp_disabled):
                # Filled with huge pages, as the original had them (the advice came first).
                assert huge_kb >= vma.size // 2 // 1024, f"{where} is hg and has {huge_kb} kB in huge pages"
            elif _thp_mode() == "madvise":
                assert huge_kb == 0, f"{where} has neither flag and {huge_kb} kB in huge pages"
        # Every word of every area, holes included, is what the program wrote.
        assert _ask_check(pid, run) == f"ok {EXPECTED_WORDS}"
    finally:
        kill_and_wait(pid)


# --- failures in the fill ----------------------------------------------------------------


def test_pages_file_cut_during_the_restore_fails_the_fill_and_leaves_nothing(checkpoint, tmp_path: Path) -> None:
    """The plan checks the pages file's size; cut short after that (as the tasks are made),
    it ends in the middle of a fill thread's preadv: ENODATA, reported as the fill step's
    failure, with no process left."""
    images, _run = checkpoint
    copy = tmp_path / "images"
    copy.mkdir()
    for f in images.iterdir():
        (shutil.copyfile if f.name.startswith("pages-") else os.link)(f, copy / f.name)
    (pages,) = copy.glob("pages-*.img")

    def cut(stage: Stage, _pids: list[int]) -> None:
        if stage is Stage.BOOTSTRAP:  # the task has the file open by now; the blob reads it next
            os.truncate(pages, pages.stat().st_size - (3 << 20))

    with pid_max_at_least(65536), pytest.raises(RestoreFailed) as failed:
        restore(str(copy), RestoreOptions(on_stage=cut))
    message = str(failed.value)
    assert failed.value.exit_code == EXIT_RESTORE
    assert "read pages batch" in message and "ENODATA" in message, message
    _nothing_left(images.parent / "fillmem")


def test_failing_fill_worker_fails_the_restore_and_leaves_nothing(checkpoint) -> None:
    """blob.fill_worker: every worker fails its first batch; the leader reports it as the
    fill step's failure after joining them (exit 5, EIO), and every thread is gone."""
    images, _run = checkpoint
    proc = _restore(images, {"PYCRESTORE_FAULT": "blob.fill_worker", fill_tids.FILL_THREADS_ENV: "2"})
    assert proc.returncode == EXIT_RESTORE, proc.stderr
    assert "read pages batch" in proc.stderr and "EIO" in proc.stderr, proc.stderr
    _nothing_left(images.parent / "fillmem")


def test_one_thread_fill_restores_the_same_memory(checkpoint) -> None:
    """PYCRESTORE_FILL_THREADS=1: the leader alone, as before fill threads existed."""
    images, run = checkpoint
    proc = _restore(images, {fill_tids.FILL_THREADS_ENV: "1"})
    assert proc.returncode == 0, proc.stderr
    pid = int((images.parent / "pidfile").read_text())
    try:
        assert _ask_check(pid, run) == f"ok {EXPECTED_WORDS}"
    finally:
        kill_and_wait(pid)


def test_every_task_of_a_tree_fills_with_its_own_threads(tmp_path: Path) -> None:
    """Two tasks of TREE_MIB each (parent and child, two threads each): both blobs fill at
    once with their workers, and both find their memory as it was."""
    images, run = _checkpoint(tmp_path, TREE_PID, TREE_MIB, 2)
    plan = build_plan(ImageSet.open(str(images)))
    assert len(plan.tasks) == 2
    got = fill_tids.assign_fill_tids(plan, plan.tasks, cpus=2)
    assert all(len(tids) == 1 for tids in got.values()) and len({*got[plan.tasks[0].pid], *got[plan.tasks[1].pid]}) == 2
    proc = _restore(images, {fill_tids.FILL_THREADS_ENV: "2"})
    assert proc.returncode == 0, proc.stderr
    pids = [t.pid for t in plan.tasks]
    try:
        for task in plan.tasks:
            assert sorted(int(t) for t in os.listdir(f"/proc/{task.pid}/task")) == sorted(t.tid for t in task.threads)
            assert _ask_check(task.pid, run) == f"ok {((TREE_MIB << 20) + (64 << 10)) // 8}"
    finally:
        for pid in pids:  # parents first: a child killed first stays a zombie of its (paused) parent
            kill_and_wait(pid)


# --- the plan of the fill (no root) ------------------------------------------------------


def _vma(start: int, nr_pages: int, file_offset: int = 0) -> Vma:
    return Vma(start=start, end=start + nr_pages * abi.BLOB_PAGE_SIZE, pgoff=0, prot=3, flags=0x22,
               kind=VmaKind.ANON_PRIVATE, page_runs=(PageRun(start_addr=start, nr_pages=nr_pages, file_offset=file_offset),))


def test_thread_count_grows_with_the_bytes_up_to_the_cpus() -> None:
    pages_per_thread = FILL_BYTES_PER_THREAD // abi.BLOB_PAGE_SIZE
    assert fill_thread_count([], 8) == 1
    assert fill_thread_count([_vma(1 << 32, pages_per_thread - 1)], 8) == 1
    assert fill_thread_count([_vma(1 << 32, 3 * pages_per_thread)], 8) == 3
    assert fill_thread_count([_vma(1 << 32, 3 * pages_per_thread)], 2) == 2
    assert fill_thread_count([_vma(1 << 32, 1000 * pages_per_thread)], 64) == FILL_MAX_THREADS
    assert FILL_MAX_THREADS <= abi.BLOB_MAX_FILL_THREADS


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_pieces_cover_every_byte_once_in_file_order(threads: int) -> None:
    base = 0x7F00_0012_3000  # not huge-page aligned
    batches = [PageBatch(0, ((base, 300 << 20),)),
               PageBatch(300 << 20, ((base + (400 << 20), 5 << 12), (base + (500 << 20), 64 << 20))),
               PageBatch(400 << 20, ((base + (600 << 20), 4096),))]
    pieces = fill_batches(batches, threads)
    if threads == 1:
        assert pieces == batches
        return
    assert len(pieces) >= threads
    # The same (address, file offset) bytes, in the same order, nothing twice.
    def spans(bs):
        out = []
        for b in bs:
            off = b.file_off
            for addr, length in b.iovs:
                out.append((addr, off, length))
                off += length
        return out

    def merged(items):
        out = []
        for addr, off, length in items:
            if out and out[-1][0] + out[-1][2] == addr and out[-1][1] + out[-1][2] == off:
                out[-1] = (out[-1][0], out[-1][1], out[-1][2] + length)
            else:
                out.append((addr, off, length))
        return out

    assert merged(spans(pieces)) == merged(spans(batches))
    for piece in pieces:
        assert 1 <= len(piece.iovs) <= abi.BLOB_MAX_IOVS
    # Cuts inside an iovec fall on huge-page boundaries.
    for a, b in zip(spans(pieces), spans(pieces)[1:]):
        if a[0] + a[2] == b[0] and a[1] + a[2] == b[1]:
            assert b[0] % HUGE_PAGE_BYTES == 0


def test_fill_tids_avoid_the_checkpoints_ids_and_each_other(checkpoint) -> None:
    images, _run = checkpoint
    plan = build_plan(ImageSet.open(str(images)))
    reserved = {PID} | {t.tid for t in plan.tasks[0].threads}
    got = fill_tids.assign_fill_tids(plan, plan.tasks, cpus=8)
    tids = got[PID]
    assert len(tids) == min(8, FILL_MAX_THREADS) - 1
    assert len(set(tids)) == len(tids) and not set(tids) & reserved
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert all(pid_max - fill_tids.TID_WINDOW <= t < pid_max for t in tids)
    assert not [t for t in tids if os.path.exists(f"/proc/{t}")]
