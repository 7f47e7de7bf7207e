"""``pycriu_restore.restore(...)``: the library entry, from a plain program, a thread pool and
asyncio, with CRIU's notify points, errors carrying their exit codes, and stats-restore.

Restores criu-4.2-more's posixtimer (one task, pid 40400); each test kills it by pid and
checks it is gone. In a process with threads the restore runs in a single-threaded helper
(api.py): the restored root must still be the caller's child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading

import pytest

from conftest import FIXTURES_MORE, kill_and_wait, pid_max_at_least, skip_module_without_fixtures

skip_module_without_fixtures(FIXTURES_MORE)

from packs import MORE  # noqa: E402

import pycriu_restore  # noqa: E402
from pycriu_restore.images import load_image  # noqa: E402

WORKLOAD = "posixtimer"
ROOT_PID = 40400
ORDER = ["pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore", "pre-resume", "post-resume"]


@pytest.fixture
def images():
    with pid_max_at_least(65536):
        MORE.install(WORKLOAD)
        yield str(MORE.images / WORKLOAD)
        if os.path.exists(f"/proc/{ROOT_PID}"):
            kill_and_wait(ROOT_PID)


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _check_restored(result: pycriu_restore.RestoreResult, events: list) -> None:
    assert result.root_pid == ROOT_PID and result.pids == {ROOT_PID: ROOT_PID}
    assert [name for name, _, _ in events] == ORDER
    assert {name: pid for name, pid, _ in events if pid is not None} == {
        "setup-namespaces": ROOT_PID, "post-restore": ROOT_PID}
    assert set(result.timings_ms) == {"plan", "preflight", "fork", "bootstrap", "memory", "resume"}
    assert result.stats.pages_restored > 0 and result.stats.restore_time_us > result.stats.forking_time_us > 0
    assert _parent_of(ROOT_PID) == os.getpid()  # our child, also when a helper did the work
    verify = MORE.verify(WORKLOAD)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    kill_and_wait(ROOT_PID)


def _recorder(events: list):
    return lambda point, pid: events.append((point, pid, threading.get_ident()))


def test_restore_from_a_thread_pool(images):
    events: list = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        busy = [pool.submit(threading.Event().wait, 1.0) for _ in range(2)]  # threads that hold no GIL
        result = pool.submit(pycriu_restore.restore, images, on_notify=_recorder(events)).result(timeout=120)
        caller = {ident for _, _, ident in events}
        for f in busy:
            f.result()
    assert len(caller) == 1 and caller != {threading.get_ident()}  # callbacks ran on the calling worker
    _check_restored(result, events)


def test_restore_from_asyncio(images):
    events: list = []

    async def main() -> pycriu_restore.RestoreResult:
        loop = asyncio.get_running_loop()
        ticker = asyncio.create_task(asyncio.sleep(0.2))  # the loop keeps running meanwhile
        result = await loop.run_in_executor(None, functools.partial(pycriu_restore.restore, images,
                                                                     on_notify=_recorder(events)))
        await ticker
        return result

    _check_restored(asyncio.run(main()), events)


def test_restore_in_process_writes_stats_restore(images, tmp_path):
    events: list = []
    result = pycriu_restore.restore(images, on_notify=_recorder(events), work_dir=tmp_path, isolate=False,
                                    pidfile=tmp_path / "pid")
    assert (tmp_path / "pid").read_text() == f"{ROOT_PID}\n"
    stats = load_image(tmp_path / "stats-restore").entries[0].restore
    assert (stats.pages_restored, stats.forking_time, stats.restore_time) == (
        result.stats.pages_restored, result.stats.forking_time_us, result.stats.restore_time_us)
    _check_restored(result, events)


@pytest.mark.parametrize("isolate", [False, True])
def test_a_failing_callback_aborts_with_the_package_error(images, isolate):
    def refuse(point: str, pid: int | None) -> None:
        if point == "post-restore":
            raise RuntimeError("no room for it")

    with pytest.raises(pycriu_restore.NotifyFailed) as info:
        pycriu_restore.restore(images, on_notify=refuse, isolate=isolate)
    assert info.value.exit_code == 5 and "post-restore" in str(info.value) and "no room" in str(info.value)
    assert not os.path.exists(f"/proc/{ROOT_PID}")  # killed and reaped: no zombie left with us


@pytest.mark.parametrize("isolate", [False, True])
def test_errors_keep_their_class_and_exit_code(tmp_path, isolate):
    from pycriu_restore.api import InheritFdInvalid
    from pycriu_restore.images.errors import ImageError

    with pytest.raises(ImageError) as info:
        pycriu_restore.restore(tmp_path, isolate=isolate)  # an empty directory: no inventory
    assert info.value.exit_code == 2
    with pytest.raises(pycriu_restore.OptionUnsupported) as refused:
        pycriu_restore.restore(tmp_path, orphan_pts_master=True, isolate=isolate)
    assert refused.value.exit_code == 3 and "--orphan-pts-master" in str(refused.value)
    with pytest.raises(InheritFdInvalid) as closed:  # checked before the images are read
        pycriu_restore.restore(tmp_path, inherit_fd=[pycriu_restore.InheritFd(999, "pipe:[7]")], isolate=isolate)
    assert closed.value.exit_code == 4 and "fd[999]:pipe:[7]: fd 999 is not open" in str(closed.value)
