"""Every cross-check of plan/validate.py fails on a mutated real image, naming the image (issue 11).

``CASES`` holds, for every row of ``validate.CHECKS``, mutations of the criu-4.2 counter or
pipes images that this row (and no earlier one) rejects, with the message expected. The
first test checks that every row has a case, so a new check cannot go untested. The cases
named "issue11-*" are the images that restored with exit 0 before this module existed
(seen with `pycrestore restore -d --cpu-cap none` on each: exit 0, then counter's verify.py
said "FAIL counter: pid 31100 does not exist", or pipes' "child seq: expected 51 at
position 50, got 64"; timens-0.img and seccomp.img were silently done without).
Each one is also run through the CLI: exit 2, one line, and no task made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from conftest import FIXTURES, needs_fixtures
from pycriu_restore.errors import EXIT_BAD_IMAGE
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.plan import validate
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import InconsistentImages

pytestmark = needs_fixtures

COUNTER, PIPES = 31100, 31300
PIPES_CHILD = 31301


def edit(path: Path, change: Callable) -> None:
    """Decode one image, let ``change(image)`` edit it, write it back."""
    image = load_image(path)
    change(image)
    path.write_bytes(dump_image(image))


def _set_entry(index: int, **fields: int) -> Callable:
    def change(image) -> None:
        for name, value in fields.items():
            setattr(image.entries[index], name, value)
    return change


def _dup_thread(image) -> None:
    image.entries[0].threads.append(image.entries[0].threads[0])


def _other_tasks_pid_as_thread(image) -> None:
    image.entries[1].threads.append(PIPES)


def _fd_twice(image) -> None:
    image.entries.append(type(image.entries[0])())
    image.entries[-1].CopyFrom(image.entries[0])
    image.extras.append(None)


def _dup_record(index: int) -> Callable:
    def change(image) -> None:
        image.entries.insert(index, image.entries[index])
        image.extras.insert(index, image.extras[index])
    return change


def _drop_record(index: int) -> Callable:
    def change(image) -> None:
        del image.entries[index]
        del image.extras[index]
    return change


def _vma_status(index: int, status: int) -> Callable:
    def change(image) -> None:
        image.entries[0].vmas[index].status = status
    return change


def _pipe_data_for_unknown_pipe(image) -> None:
    image.entries[0].pipe_id = 0x7777777


def _pipe_data_too_full(image) -> None:
    image.entries[0].size = 1


# check name -> [(case name, fixture, mutation(dir), expected message regex)]
Mutation = Callable[[Path], None]
CASES: dict[str, list[tuple[str, str, Mutation, str]]] = {
    "pstree-tids": [
        ("thread-twice", "counter", lambda d: edit(d / "pstree.img", _dup_thread), r"pstree.img: task 31100: a thread is listed twice"),
        ("thread-is-other-task", "pipes", lambda d: edit(d / "pstree.img", _other_tasks_pid_as_thread),
         r"pstree.img: task 31301: thread 31300 is also task/thread of 31300"),
    ],
    "task-images": [
        ("no-mm", "counter", lambda d: (d / f"mm-{COUNTER}.img").unlink(), rf"mm-{COUNTER}.img: missing"),
        ("no-fs", "pipes", lambda d: (d / f"fs-{PIPES_CHILD}.img").unlink(), rf"fs-{PIPES_CHILD}.img: missing"),
        ("no-pagemap", "counter", lambda d: (d / f"pagemap-{COUNTER}.img").unlink(), rf"pagemap-{COUNTER}.img: missing"),
    ],
    "files-image": [
        ("no-files", "counter", lambda d: (d / "files.img").unlink(), r"files.img: missing: mm-31100.img names exe"),
        # found by tools/fuzz_restore.py (seed 5074): a duplicated entry restored with exit 0
        ("duplicate-id", "pipes", lambda d: edit(d / "files.img", _dup_record(0)),
         r"files.img: entry 1: file id \d+ is used by an earlier entry too"),
    ],
    "fd-tables": [
        ("issue11-no-fdinfo", "counter", lambda d: (d / "fdinfo-2.img").unlink(),
         r"fdinfo-2.img: missing: ids-31100.img names fd table 2, and files.img entries \[.*\] belong to no fd"),
        ("no-child-fdinfo", "pipes", lambda d: (d / "fdinfo-3.img").unlink(), r"fdinfo-3.img: missing: ids-31301.img"),
        ("unnamed-fdinfo", "counter", lambda d: shutil.copy(d / "fdinfo-2.img", d / "fdinfo-9.img"),
         r"fdinfo-9.img: no task's ids image names fd table 9"),
        # found by tools/fuzz_restore.py (seed 5142): the log's fd record dropped, exit 0, task died
        ("fd-record-dropped", "counter", lambda d: edit(d / "fdinfo-2.img", _drop_record(3)),
         r"files.img: entries \[\d+\] belong to no fd, mapping, exe, cwd or root"),
        ("fd-twice", "counter", lambda d: edit(d / "fdinfo-2.img", _fd_twice), r"fdinfo-2.img: fd 0 is listed twice"),
        ("fd-negative", "counter", lambda d: edit(d / "fdinfo-2.img", _set_entry(0, fd=2**31)),
         r"fdinfo-2.img: fd 2147483648 is not an fd number"),
    ],
    "pipe-data": [
        ("issue11-no-pipes-data", "pipes", lambda d: (d / "pipes-data.img").unlink(),
         r"pipes-data.img: missing: pipe 0x[0-9a-f]+ has a read end"),
        ("unknown-pipe", "pipes", lambda d: edit(d / "pipes-data.img", _pipe_data_for_unknown_pipe),
         r"pipes-data.img: entry 0 \(pipe 0x7777777\): no fd of the tree is an end of this pipe"),
        ("data-over-size", "pipes", lambda d: edit(d / "pipes-data.img", _pipe_data_too_full),
         r"pipes-data.img: entry 0 \(pipe 0x[0-9a-f]+\): \d+ unread bytes in a 1-byte buffer"),
    ],
    "always-written": [
        ("issue11-no-seccomp", "counter", lambda d: (d / "seccomp.img").unlink(), r"seccomp.img: missing: CRIU >= 4.1"),
        ("issue11-no-timens", "counter", lambda d: (d / "timens-0.img").unlink(), r"timens-0.img: missing: CRIU >= 4.1"),
    ],
    "vmas": [
        # found by tools/fuzz_restore.py (seed 9121): status 0x7fffffff read as [vsyscall], so the
        # VMA was skipped; exit 0 and the task died
        ("vsyscall-elsewhere", "counter", lambda d: edit(d / f"mm-{COUNTER}.img", _vma_status(6, 0x45 | 0x4)),
         r"mm-31100.img: VMA 6 at 0x[0-9a-f]+-0x[0-9a-f]+: marked \[vsyscall\]"),
        ("unknown-status-bit", "counter", lambda d: edit(d / f"mm-{COUNTER}.img", _vma_status(6, 0x7FFFFFFF)),
         r"mm-31100.img: VMA 6 at 0x[0-9a-f]+: status 0x7fffffff has bits 0x77fc0010 that CRIU does not define"),
    ],
    "pagemaps": [
        ("issue11-unaligned", "counter", lambda d: edit(d / f"pagemap-{COUNTER}.img", _add_to_vaddr(1, 1)),
         r"pagemap-31100.img: entry 0 at 0x[0-9a-f]+: not page-aligned"),
        ("issue11-zero-pages", "counter", lambda d: edit(d / f"pagemap-{COUNTER}.img", _set_entry(2, nr_pages=0)),
         r"pagemap-31100.img: entry 1 at 0x[0-9a-f]+: 0 pages"),
        ("issue11-duplicate-vaddr", "counter", lambda d: edit(d / f"pagemap-{COUNTER}.img", _same_vaddr(1, 2)),
         r"pagemap-31100.img: entry 1 at 0x[0-9a-f]+: overlaps or comes before the previous entry"),
        ("unsorted", "counter", lambda d: edit(d / f"pagemap-{COUNTER}.img", _swap(1, 2)),
         r"pagemap-31100.img: entry 1 at 0x[0-9a-f]+: overlaps or comes before"),
        ("outside-vma", "counter", lambda d: edit(d / f"pagemap-{COUNTER}.img", _set_entry(1, vaddr=0x1000)),
         r"pagemap-31100.img: entry 0 at 0x1000: page 0x1000 is outside every VMA"),
        ("above-task-size", "counter", lambda d: edit(d / f"pagemap-{COUNTER}.img", _set_entry(-1, nr_pages=2**40)),
         r"pagemap-31100.img: entry \d+ at 0x[0-9a-f]+: 1099511627776 pages end above TASK_SIZE"),
        ("pages-extra-bytes", "counter", lambda d: _append(d / "pages-1.img", b"\0"),
         r"pagemap-31100.img: its present entries hold 26 pages \(106496 bytes\), pages-1.img has 106497 bytes"),
        ("pages-short", "counter", lambda d: _truncate(d / "pages-1.img", 4096),
         r"pagemap-31100.img: entry 1 covers 2 pages, pages-1.img has 0 left"),
        ("pages-missing", "counter", lambda d: (d / "pages-1.img").unlink(), r"pages-1.img: missing: pagemap-31100.img"),
        ("pages-shared", "pipes", lambda d: edit(d / f"pagemap-{PIPES_CHILD}.img", _set_entry(0, pages_id=1)),
         r"pagemap-31301.img: names pages-1.img, which pagemap-31300.img names too"),
        ("pages-unnamed", "counter", lambda d: shutil.copy(d / "pages-1.img", d / "pages-7.img"),
         r"pages-7.img: no pagemap names pages image 7"),
    ],
}


def _add_to_vaddr(index: int, delta: int) -> Callable:
    def change(image) -> None:
        image.entries[index].vaddr += delta
    return change


def _same_vaddr(a: int, b: int) -> Callable:
    def change(image) -> None:
        image.entries[b].vaddr = image.entries[a].vaddr
    return change


def _swap(a: int, b: int) -> Callable:
    def change(image) -> None:
        ea, eb = type(image.entries[a])(), type(image.entries[b])()
        ea.CopyFrom(image.entries[a])
        eb.CopyFrom(image.entries[b])
        image.entries[a].CopyFrom(eb)
        image.entries[b].CopyFrom(ea)
    return change


def _append(path: Path, data: bytes) -> None:
    path.write_bytes(path.read_bytes() + data)


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


ALL = [(check, *case) for check, cases in CASES.items() for case in cases]


def _copy(tmp_path: Path, fixture: str) -> Path:
    d = tmp_path / fixture
    shutil.copytree(FIXTURES / "images" / fixture, d)
    return d


def test_every_check_has_a_case() -> None:
    """The table and the cases agree: each check of validate.CHECKS is exercised below."""
    names = [c.name for c in validate.CHECKS]
    assert len(names) == len(set(names))
    assert sorted(CASES) == sorted(names)
    assert all(CASES[name] for name in names)


@pytest.mark.parametrize("fixture", ["counter", "pipes"])
def test_real_images_pass_every_check(fixture: str) -> None:
    validate.check_images(ImageSet.open(FIXTURES / "images" / fixture))


@pytest.mark.parametrize("check,name,fixture,mutate,expected", ALL, ids=[f"{c}:{n}" for c, n, *_ in ALL])
def test_check_rejects_its_case(tmp_path: Path, check: str, name: str, fixture: str, mutate: Mutation,
                                expected: str) -> None:
    d = _copy(tmp_path, fixture)
    mutate(d)
    with pytest.raises(InconsistentImages, match=expected) as caught:
        build_plan(ImageSet.open(d))
    assert "\n" not in str(caught.value)
    # The row that raised is this case's row: run the rows one by one.
    scope = validate._scope(ImageSet.open(d))
    for row in validate.CHECKS:
        if row.name == check:
            with pytest.raises(InconsistentImages, match=expected):
                row.run(scope)
            break
        row.run(scope)  # the earlier rows accept it


ISSUE_CASES = [(c, n, f, m, e) for c, n, f, m, e in ALL if n.startswith("issue11-")]


@pytest.mark.parametrize("check,name,fixture,mutate,expected", ISSUE_CASES, ids=[n for _, n, *_ in ISSUE_CASES])
def test_issue_case_exits_2_through_the_cli(tmp_path: Path, check: str, name: str, fixture: str,
                                            mutate: Mutation, expected: str) -> None:
    """Before plan/validate.py each of these restored with exit 0 (see the module docstring)."""
    d = _copy(tmp_path, fixture)
    mutate(d)
    pid = COUNTER if fixture == "counter" else PIPES
    assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} is in use before the test"
    result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-d", "--cpu-cap", "none",
                             "-D", str(d)], capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_BAD_IMAGE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("pycrestore: error: ") and __import__("re").search(expected, lines[0]), lines[0]
    assert not os.path.exists(f"/proc/{pid}")
