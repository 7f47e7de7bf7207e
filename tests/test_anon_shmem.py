"""Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS): one object for every task that maps it.

CRIU 4.2 running as root dumps this memory through its memfd path (a MEMFD entry named
"/dev/zero"); without access to /proc/PID/map_files, and before the memfd path existed, it
writes VMA_ANON_SHARED VMAs that name the object by ``shmid`` (files/anon_shmem.py). This
CRIU cannot be made to write the second form here (it runs as root), so
:func:`to_anon_shared` rewrites a dump of the first form into the second: the same VMAs
with status VMA_ANON_SHARED, MAP_ANONYMOUS and the object's shmid, the memfd entries gone,
the content left in pagemap-shmem-<shmid>.img. (Upstream ``criu restore`` restores the
rewritten images too: the report of issue 10 shows it.)

    plan      the converted shmem fixture: one AnonSharedMemory, sized by the largest
              pgoff + size, mapped by both tasks; bad images are refused
    restore   the shmem fixture (converted) and tests/c/anon_shared.c dumped by CRIU during
              the test, in both forms: one region (same inode, a write by one task read by
              the other), named "/dev/zero (deleted)" as before the dump, pgoff kept
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, PACK_CPU_CAP, kill_and_wait, needs_fixtures, wait_gone
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.images.flags import MMAP_FLAGS, MMAP_STATUS
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature
from pycriu_restore.plan.model import VmaKind
from realprogs import dumped_program, restored, wait_for

REPO = Path(__file__).resolve().parent.parent
PROGRAM = REPO / "tests" / "c" / "anon_shared.c"
_STATUS = dict(MMAP_STATUS)
VMA_AREA_REGULAR = _STATUS["VMA_AREA_REGULAR"]
VMA_ANON_SHARED = _STATUS["VMA_ANON_SHARED"]
VMA_AREA_MEMFD = _STATUS["VMA_AREA_MEMFD"]
MAP_ANONYMOUS = dict(MMAP_FLAGS)["MAP_ANON"]
PAGE = 4096

SHMEM_FIXTURE = FIXTURES / "images" / "shmem"
SHMEM_START = 0x7EFE1A1ED000  # the 1 MiB region of the shmem fixture, in both tasks
SHMEM_SHMID = 1610


def to_anon_shared(images: Path) -> list[int]:
    """Rewrite a CRIU dump whose anonymous shared memory went through the memfd path into
    the VMA_ANON_SHARED form, in place; returns the shmids."""
    inodes = {i.inode_id: i for i in load_image(images / "memfd.img").entries}
    files = load_image(images / "files.img")
    memfds = {e.id: e.memfd.inode_id for e in files.entries if e.HasField("memfd")}
    shmids = set()
    for path in sorted(images.glob("mm-*.img")):
        mm = load_image(path)
        for vma in mm.entries[0].vmas:
            if vma.status & VMA_AREA_MEMFD:
                inode = inodes[memfds[vma.shmid]]
                assert inode.name == "/dev/zero", f"{path.name}: memfd {inode.name!r} is a real memfd"
                vma.status = VMA_AREA_REGULAR | VMA_ANON_SHARED
                vma.flags |= MAP_ANONYMOUS
                vma.shmid = inode.shmid
                shmids.add(inode.shmid)
        path.write_bytes(dump_image(mm))
    kept = [(e, x) for e, x in zip(files.entries, files.extras) if not e.HasField("memfd")]
    files.entries[:] = [e for e, _ in kept]
    files.extras[:] = [x for _, x in kept]
    (images / "files.img").write_bytes(dump_image(files))
    (images / "memfd.img").unlink()
    return sorted(shmids)


def _converted_fixture(tmp_path: Path) -> Path:
    dst = tmp_path / "shmem"
    shutil.copytree(SHMEM_FIXTURE, dst)
    assert to_anon_shared(dst) == [SHMEM_SHMID]
    return dst


# --- plan -------------------------------------------------------------------------------

@needs_fixtures
def test_plan_maps_one_object_per_shmid_in_every_task(tmp_path):
    plan = build_plan(ImageSet.open(_converted_fixture(tmp_path)))
    assert plan.shared_memory == ()  # no memfd left
    (mem,) = plan.anon_shared_memory
    assert (mem.shmid, mem.size_bytes) == (SHMEM_SHMID, 1 << 20)
    assert sum(r.nr_pages for r in mem.page_runs) == 241  # as the memfd form holds
    assert all(r.start_addr + r.nr_pages * PAGE <= mem.size_bytes for r in mem.page_runs)
    for task in plan.tasks:
        (vma,) = [v for v in task.vmas if v.kind is VmaKind.ANON_SHARED]
        assert vma.start == SHMEM_START and vma.file.shmem_id == SHMEM_SHMID
        assert not vma.flags & MAP_ANONYMOUS  # mapped from the object's fd
        assert vma.page_runs == ()  # its pages are the object's, not the task's


@needs_fixtures
def test_plan_sizes_the_object_by_the_largest_pgoff_plus_size(tmp_path):
    d = _converted_fixture(tmp_path)
    # The child maps only the last 16 pages, at pgoff 1 MiB - 64 KiB + 1 MiB: the object grows.
    mm = load_image(d / "mm-31701.img")
    (vma,) = [v for v in mm.entries[0].vmas if v.status & VMA_ANON_SHARED]
    vma.start, vma.pgoff = vma.end - 16 * PAGE, 2 * (1 << 20) - 16 * PAGE
    (d / "mm-31701.img").write_bytes(dump_image(mm))
    (mem,) = build_plan(ImageSet.open(d)).anon_shared_memory
    assert mem.size_bytes == 2 << 20


@needs_fixtures
def test_plan_refuses_pages_past_the_object_and_a_missing_pagemap(tmp_path):
    d = _converted_fixture(tmp_path)
    name = f"pagemap-shmem-{SHMEM_SHMID}.img"
    pagemap = load_image(d / name)
    pagemap.entries[-1].vaddr = 1 << 20  # past the 1 MiB both VMAs map
    (d / name).write_bytes(dump_image(pagemap))
    with pytest.raises(InconsistentImages, match=rf"{name}: entry \d+: pages 0x100000-.* past the object's size"):
        build_plan(ImageSet.open(d))
    (d / name).unlink()
    with pytest.raises(InconsistentImages, match=rf"{name}: missing"):
        build_plan(ImageSet.open(d))


@needs_fixtures
def test_plan_refuses_shared_anonymous_hugetlb(tmp_path):
    d = _converted_fixture(tmp_path)
    mm = load_image(d / "mm-31700.img")
    (vma,) = [v for v in mm.entries[0].vmas if v.status & VMA_ANON_SHARED]
    vma.flags |= 0x40000  # MAP_HUGETLB
    (d / "mm-31700.img").write_bytes(dump_image(mm))
    with pytest.raises(UnsupportedFeature, match=r"mm-31700.img: .*shared anonymous hugetlb memory"):
        build_plan(ImageSet.open(d))


# --- restore: the helpers ---------------------------------------------------------------

def _maps_line(pid: int, addr: int) -> list[str]:
    """The fields of the /proc/PID/maps line of the VMA holding ``addr`` (name: fields[5:])."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= addr < end:
                return line.split()
    raise AssertionError(f"no VMA holds {addr:#x} in {pid}")


def _read(pid: int, addr: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(addr)
        return mem.read(size)


def _write(pid: int, addr: int, data: bytes) -> None:
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(addr)
        mem.write(data)


def _assert_one_region(a: tuple[int, int], b: tuple[int, int], probe_offset: int) -> None:
    """Tasks a and b map one anonymous shmem object at (pid, address of the same offset):
    the same device and inode, named as before the dump, and a write by a is read by b."""
    la, lb = _maps_line(*a), _maps_line(*b)
    assert (la[3], la[4]) == (lb[3], lb[4]) and la[4] != "0", (la, lb)
    for line in (la, lb):
        assert line[1].endswith("s") and line[5:] == ["/dev/zero", "(deleted)"], line
    marker = b"one-region:%d" % time.monotonic_ns()
    _write(a[0], a[1] + probe_offset, marker)
    assert _read(b[0], b[1] + probe_offset, len(marker)) == marker


def _kill_tree(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        kill_and_wait(pid)


# --- restore: the shmem fixture in the VMA_ANON_SHARED form -----------------------------

@needs_fixtures
def test_restored_fixture_shares_one_region(tmp_path):
    d = _converted_fixture(tmp_path)
    subprocess.run([str(FIXTURES / "install.sh"), "shmem"], check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(d), "-d",
                             "--cpu-cap", PACK_CPU_CAP], capture_output=True, text=True, timeout=120)
    try:
        assert result.returncode == 0, result.stderr
        # After the seq word and 4096 slots, before the pattern: bytes the workload never uses.
        _assert_one_region((31700, SHMEM_START), (31701, SHMEM_START), 0xF000)
        check = subprocess.run([sys.executable, str(FIXTURES / "verify.py"), "shmem"],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        _kill_tree([31700, 31701])
    assert wait_gone(31700) and wait_gone(31701)


# --- restore: tests/c/anon_shared.c, dumped by CRIU now ---------------------------------

PROGRAM_PID = 47600


@pytest.fixture(scope="module")
def anon_shared_dump():
    def setup(workdir: Path) -> None:
        subprocess.run(["gcc", "-O2", "-o", str(workdir / "anon_shared"), str(PROGRAM)], check=True)

    with dumped_program("anon-shared", PROGRAM_PID, ["./anon_shared", "log"], setup=setup,
                        ready=lambda w: (w / "stdout").exists() and b"ready" in (w / "stdout").read_bytes()) as dumped:
        yield dumped


def _log(workdir: Path) -> list[tuple[int, int]]:
    lines = (workdir / "log").read_text().splitlines()
    return [tuple(map(int, line.split())) for line in lines if len(line.split()) == 2]


def _shared_start(pid: int) -> int:
    """The start of the one shared (rw-s) VMA of the program's task ``pid``."""
    with open(f"/proc/{pid}/maps") as f:
        starts = [int(line.split("-")[0], 16) for line in f if line.split()[1] == "rw-s"]
    assert len(starts) == 1, starts
    return starts[0]


@pytest.mark.parametrize("form", ["memfd", "anon-shared"])
def test_forked_program_shares_one_region_after_restore(anon_shared_dump, form, tmp_path):
    dumped = anon_shared_dump
    if form == "anon-shared":
        images = tmp_path / "images"
        shutil.copytree(dumped.images, images)
        assert len(to_anon_shared(images)) == 1
        dumped = dataclasses.replace(dumped, images=images)
    parent, child = dumped.pids
    before = _log(dumped.workdir)
    counter_at_dump = before[-1][0]
    with restored(dumped) as result:
        assert result.returncode == 0, result.stderr
        start = _shared_start(parent)
        # The child unmapped the first page before the dump: its VMA keeps pgoff 4096.
        assert _shared_start(child) == start + PAGE and _maps_line(child, start + PAGE)[2] == "00001000"
        assert _read(parent, start, PAGE) == bytes((i * 7 + 3) & 0xFF for i in range(PAGE))
        _assert_one_region((parent, start + 3 * PAGE), (child, start + 3 * PAGE), 512)
        _assert_one_region((child, start + 2 * PAGE), (parent, start + 2 * PAGE), 512)
        # Both run on, through the one object: the child echoes counters the parent
        # writes after the restore.
        wait_for("the child to echo a counter written after the restore",
                 lambda: any(echo > counter_at_dump + 2 for _c, echo in _log(dumped.workdir)[len(before):]))
