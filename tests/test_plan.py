"""images -> plan on the real fixtures, and the errors for images that contradict themselves."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from conftest import FIXTURES, needs_fixtures
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature
from pycriu_restore.plan.model import PipeEnd, VmaKind
from pycriu_restore.restore.errors import FileMismatch
from pycriu_restore.restore.preflight import check_mapped_file, elf_build_id

pytestmark = needs_fixtures

IMAGES = FIXTURES / "images"


def plan_of(name: str):
    return build_plan(ImageSet.open(IMAGES / name))


def test_counter_plan_matches_the_images():
    images = ImageSet.open(IMAGES / "counter")
    plan = build_plan(images)
    task = plan.root
    mm = images.mm(31100)
    assert (task.pid, task.sid, task.pgid) == (31100, 31100, 31100)
    # Every VMA but [vsyscall], in order, with the dumped range and protection.
    dumped = [v for v in mm.vmas if v.end <= 1 << 47]
    assert [(v.start, v.end, v.prot) for v in task.vmas] == [(v.start, v.end, v.prot) for v in dumped]
    kinds = [v.kind for v in task.vmas]
    assert kinds.count(VmaKind.VDSO) == 1 and kinds.count(VmaKind.VVAR) == 1
    # The page runs hold exactly the present pages, each at its offset in pages-1.img.
    present = sum(e.nr_pages for e in images.pagemap(31100).iter_entries() if e.flags & 4)
    runs = sorted((r for v in task.vmas for r in v.page_runs), key=lambda r: r.file_offset)
    assert sum(r.nr_pages for r in runs) == present == 26
    offset = 0
    for r in runs:
        assert r.file_offset == offset
        offset += r.nr_pages * 4096
    assert offset == (IMAGES / "counter" / "pages-1.img").stat().st_size
    # fds: /dev/null, stdout, stderr with a size check; the O_APPEND log without one, CLOEXEC.
    fds = {f.fd: f for f in task.files}
    assert fds[1].expected_size == 0 and fds[3].expected_size is None and fds[3].cloexec
    assert task.mm.exe.path.endswith("/counter/counter") and task.mm.exe.build_id
    assert plan.timens is not None and plan.timens.monotonic_sec == 2477


def test_sigactions_skip_sigkill_and_sigstop():
    task = plan_of("signals").root
    signos = [sa.signo for sa in task.sigactions]
    assert len(signos) == 62 and 9 not in signos and 19 not in signos and signos[-1] == 64
    alarm = next(sa for sa in task.sigactions if sa.signo == 14)
    assert alarm.handler != 0 and alarm.flags & 0x10000000  # SA_RESTART
    assert task.shared_pending_signals and len(task.main_thread.pending_signals) == 2


def test_pipe_between_two_tasks_is_one_pipe_with_its_queued_data():
    plan = plan_of("pipes")
    parent, child = plan.tasks
    assert [t.pid for t in plan.children(parent)] == [child.pid]
    ends = {t.pid: [f for f in t.files if isinstance(f, PipeEnd)] for t in plan.tasks}
    assert [(e.fd, e.flags) for e in ends[parent.pid]] == [(5, 1)]  # write end
    assert [(e.fd, e.flags) for e in ends[child.pid]] == [(4, 0)]  # read end
    (buf,) = plan.pipes
    assert buf.pipe_id == ends[parent.pid][0].pipe_id == ends[child.pid][0].pipe_id
    assert buf.queued == b"".join(b"%d\n" % i for i in range(51, 64))
    # stdin/stdout/stderr were inherited through fork: one open file each, shared.
    assert sorted(f.fd for f in plan.shared_files) == [0, 1, 2]


def test_socketpair_with_queued_data_both_ways():
    plan = plan_of("unixsk")
    (unix,) = plan.unix_sockets
    a, b = unix.sockets
    assert {a.making.value, b.making.value} == {"pair"} and (a.peer, b.peer) == (b.socket_id, a.socket_id)
    assert sum(map(len, a.queued)) + sum(map(len, b.queued)) == 160 + 56
    pongs = b"".join(a.queued if sum(map(len, a.queued)) == 160 else b.queued)
    assert pongs.startswith(b"pong 36\n") and pongs.endswith(b"pong 55\n")


def test_threads_plan_has_every_thread_with_its_registers():
    task = plan_of("threads").root
    assert [t.tid for t in task.threads] == [31200, 31201, 31202, 31203, 31204]
    assert len({t.gpregs["fs_base"] for t in task.threads}) == 5


def test_shared_anonymous_memory_is_one_memfd_for_both_tasks():
    plan = plan_of("shmem")
    (mem,) = plan.shared_memory
    assert (mem.name, mem.size_bytes, mem.seals) == ("/dev/zero", 1 << 20, 1)
    assert sum(r.nr_pages for r in mem.page_runs) == 241
    for task in plan.tasks:
        (vma,) = [v for v in task.vmas if v.kind is VmaKind.MEMFD_SHARED]
        assert vma.file.memfd_inode == mem.inode_id and vma.start == 0x7EFE1A1ED000


def test_unsupported_feature_is_named(tmp_path):
    d = _copy(tmp_path, "counter")
    core = load_image(d / "core-31100.img")
    core.entries[0].tc.task_state = 6  # compel's TASK_ZOMBIE: never in an image (zombies are DEAD, 2)
    (d / "core-31100.img").write_bytes(dump_image(core))
    with pytest.raises(UnsupportedFeature, match=r"core-31100.img: unsupported: tc.task_state = 6"):
        build_plan(ImageSet.open(d))
    assert UnsupportedFeature.exit_code == 3


def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(IMAGES / name, dst)
    return dst


def test_short_pages_image_is_inconsistent(tmp_path):
    d = _copy(tmp_path, "counter")
    pages = d / "pages-1.img"
    pages.write_bytes(pages.read_bytes()[: 10 * 4096])
    with pytest.raises(InconsistentImages, match=r"pagemap-31100.img: entry \d+ covers \d+ pages, pages-1.img has \d+ left"):
        build_plan(ImageSet.open(d))


def test_page_outside_every_vma_is_inconsistent(tmp_path):
    d = _copy(tmp_path, "counter")
    image = load_image(d / "pagemap-31100.img")
    image.entries[1].vaddr = 0x1000  # no VMA there
    (d / "pagemap-31100.img").write_bytes(dump_image(image))
    with pytest.raises(InconsistentImages, match="page 0x1000 is outside every VMA"):
        build_plan(ImageSet.open(d))


def test_overlapping_vmas_are_inconsistent(tmp_path):
    d = _copy(tmp_path, "counter")
    image = load_image(d / "mm-31100.img")
    image.entries[0].vmas[1].start -= 0x1000
    (d / "mm-31100.img").write_bytes(dump_image(image))
    with pytest.raises(InconsistentImages, match="overlaps the previous one"):
        build_plan(ImageSet.open(d))


def test_a_vma_prot_with_bits_no_dump_writes_is_inconsistent(tmp_path):
    """A dump writes r, w and x; other bits are refused by the plan, not left to the blob's
    mprotect (EINVAL there, after the task was made)."""
    d = _copy(tmp_path, "counter")
    image = load_image(d / "mm-31100.img")
    image.entries[0].vmas[1].prot |= 0x80
    (d / "mm-31100.img").write_bytes(dump_image(image))
    with pytest.raises(InconsistentImages, match=r"mm-31100.img: VMA 1 at 0x[0-9a-f]+: prot 0x8[0-7] has bits other "
                                                 r"than PROT_READ, PROT_WRITE and PROT_EXEC \(0x7\)"):
        build_plan(ImageSet.open(d))


def test_build_id_of_libc_matches_the_image_and_a_changed_binary_is_refused():
    exe = plan_of("counter").root
    libc = next(v.file for v in exe.vmas if v.file and v.file.path.endswith("libc.so.6"))
    assert elf_build_id(libc.path) == libc.build_id
    check_mapped_file(libc)
    impostor = dataclasses.replace(libc, path="/bin/true", expected_size=None)
    with pytest.raises(FileMismatch, match=r"/bin/true: ELF build-id is [0-9a-f]+, dumped [0-9a-f]+"):
        check_mapped_file(impostor)
    missing = dataclasses.replace(libc, path="/nonexistent/libc.so.6")
    with pytest.raises(FileMismatch, match="missing"):
        check_mapped_file(missing)
