"""ImageSet on the real CRIU 4.2 dumps: typed access agrees with crit's decoding, optional
images read as empty, required ones raise MissingImage, and nothing is read before it is asked
for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pycriu_restore.images import BadMagic, BadRecord, ImageSet, MissingImage, dump_image, load_image
from pycriu_restore.images.pagemap import PAGE_SIZE, PE_PRESENT, entry_nr_pages

from conftest import FIXTURES, skip_module_without_fixtures

skip_module_without_fixtures(FIXTURES)  # before the pack is read below


def _fixtures() -> Path:
    path = FIXTURES
    assert (path / "images").is_dir(), f"fixture pack not found at {path} (set PYCRESTORE_FIXTURES)"
    return path


FIXTURES = _fixtures()
WORKLOADS = sorted(p.name for p in (FIXTURES / "images").iterdir())


def _crit(workload: str, name: str) -> dict:
    return json.loads((FIXTURES / "decoded" / workload / f"{name}.json").read_text())


def test_counter() -> None:
    images = ImageSet.open(FIXTURES / "images/counter")
    assert images.inventory.img_version == 2
    [task] = images.pstree()
    assert (task.pid, task.ppid, task.pgid, task.sid, list(task.threads)) == (31100, 0, 31100, 31100, [31100])
    core = images.core(31100)
    assert core.tc.comm == "counter" and core.thread_info.gpregs.orig_ax == 230  # clock_nanosleep
    mm = images.mm(31100)
    assert len(mm.vmas) == len(_crit("counter", "mm-31100")["entries"][0]["vmas"])
    ids = images.ids(31100)
    fds = images.fdinfo(ids.files_id)
    assert [fd.fd for fd in fds] == [0, 1, 2, 3]
    assert [fd.flags for fd in fds] == [0, 0, 0, 1]  # FD_CLOEXEC on the log
    files = {f.id: f for f in images.files()}
    assert files[fds[3].id].reg.name == "/var/tmp/pycrestore-fixtures/counter/log"
    fs = images.fs(31100)
    assert files[fs.root_id].reg.name == "/" and files[mm.exe_file_id].reg.name.endswith("/counter")
    assert images.timens().monotonic.tv_sec == 2477
    assert images.stats().dump.pages_written == 26


@pytest.mark.parametrize("workload", WORKLOADS)
def test_pagemaps_account_for_every_page(workload: str) -> None:
    # Each process's present runs, in order, take exactly the bytes of its pages image.
    images = ImageSet.open(FIXTURES / "images" / workload)
    for task in images.pstree():
        pagemap = images.pagemap(task.pid)
        entries = pagemap.entries()
        crit_entries = _crit(workload, f"pagemap-{task.pid}")["entries"]
        assert pagemap.pages_id == crit_entries[0]["pages_id"]
        assert len(entries) == len(crit_entries) - 1
        present = sum(entry_nr_pages(e) for e in entries if e.flags & PE_PRESENT)
        assert present * PAGE_SIZE == images.pages_path(pagemap.pages_id).stat().st_size


def test_threads_have_their_cores() -> None:
    images = ImageSet.open(FIXTURES / "images/threads")
    [task] = images.pstree()
    assert list(task.threads) == [31200, 31201, 31202, 31203, 31204]
    assert [images.core(tid).thread_core.comm for tid in task.threads[1:]] == ["t1", "t2", "t3", "t4"]
    assert not images.core(31201).HasField("tc")  # task-wide state is in the leader's core only


def test_pipes_and_their_data() -> None:
    images = ImageSet.open(FIXTURES / "images/pipes")
    assert [t.pid for t in images.pstree()] == [31300, 31301]
    pipes = [f for f in images.files() if f.HasField("pipe")]
    assert len(pipes) == 2 and len({f.pipe.pipe_id for f in pipes}) == 1
    [(entry, data)] = images.pipes_data()
    assert entry.pipe_id == pipes[0].pipe.pipe_id and data == b"".join(b"%d\n" % n for n in range(51, 64))


def test_shared_memfd() -> None:
    images = ImageSet.open(FIXTURES / "images/shmem")
    [inode] = images.memfd_inodes()
    assert (inode.name, inode.size, inode.shmid) == ("/dev/zero", 1 << 20, 1610)
    shmem = images.shmem_pagemap(inode.shmid)
    assert shmem.pages_id == 1 and [e.vaddr for e in shmem.entries()] == [0x0, 0x10000]


def test_unix_socket_queues() -> None:
    images = ImageSet.open(FIXTURES / "images/unixsk")
    sockets = {f.id: f.usk for f in images.files() if f.HasField("usk")}
    queues = images.sk_queues()
    assert {e.id_for: len(data) for e, data in queues} == {7: 160, 12: 56}
    assert all(e.id_for in sockets for e, _ in queues)
    assert sockets[7].peer == sockets[12].ino and sockets[12].peer == sockets[7].ino


def test_missing_optional_images_are_empty() -> None:
    images = ImageSet.open(FIXTURES / "images/counter")
    assert images.pipes_data() == [] and images.sk_queues() == [] and images.memfd_inodes() == []
    assert images.fdinfo(999) == [] and images.sigacts(31100) == []
    assert images.stats("restore") is None
    empty = images.pagemap(4242)
    assert not empty.exists and empty.pages_id is None and empty.entries() == []


def test_missing_required_images_raise() -> None:
    images = ImageSet.open(FIXTURES / "images/counter")
    with pytest.raises(MissingImage) as info:
        images.core(4242)
    assert str(info.value) == f"{FIXTURES / 'images/counter/core-4242.img'}: required image is missing"
    with pytest.raises(MissingImage, match="pages-7.img"):
        images.pages_path(7)


def test_open_reads_only_the_inventory(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "images/counter/inventory.img", tmp_path)
    (tmp_path / "core-31100.img").write_bytes(b"garbage!")
    images = ImageSet.open(tmp_path)  # neither the missing pstree nor the bad core matter yet
    with pytest.raises(MissingImage, match="pstree.img"):
        images.pstree()
    with pytest.raises(BadMagic, match="core-31100.img: offset 0"):
        images.core(31100)


def test_single_record_images_hold_one_record(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "images/counter/inventory.img", tmp_path)
    fs = load_image(FIXTURES / "images/counter/fs-31100.img")
    fs.entries.append(fs.entries[0])
    fs.extras.append(None)
    (tmp_path / "fs-31100.img").write_bytes(dump_image(fs))
    with pytest.raises(BadRecord, match="fs-31100.img: holds 2 records, expected 1"):
        ImageSet.open(tmp_path).fs(31100)
