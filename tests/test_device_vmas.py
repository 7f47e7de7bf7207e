"""Device mappings (VMA_EXT_PLUGIN) in the core, without a restore: the task's side
(restore/task.py _map_device_vmas, the status pipe's record) and the orchestrator's
(restore/orchestrator.py _with_device_offsets). tests/test_amdgpu_e2e.py restores them whole.
"""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import pytest

from conftest import FIXTURES, needs_fixtures
from pycriu_restore.files.fdlayout import ServiceFds
from pycriu_restore.plan.model import MappedFile, Vma, VmaKind
from pycriu_restore.plugins.api import Plugin
from pycriu_restore.restore import task as task_module
from pycriu_restore.restore.task import READY, ChildStepFailed, parse_ready, ready_report

PAGE = 4096


def _device_vma(start: int, path: str, pgoff: int) -> Vma:
    return Vma(start=start, end=start + PAGE, prot=3, flags=1, kind=VmaKind.FILE_SHARED, pgoff=pgoff,
               file=MappedFile(file_id=9, path=path, open_flags=os.O_RDWR, plugin=True))


class _Answers(Plugin):
    """A plugin that answers from a table: (path, start, pgoff) -> (new pgoff, fd maker or None)."""

    name = "answers"

    def __init__(self, table):
        self.table, self.calls = table, []

    def update_vma_map(self, ctx, task, path, start, pgoff):
        self.calls.append((path, start, pgoff))
        answer = self.table.get((path, start, pgoff))
        if answer is None:
            return None
        new_pgoff, make_fd = answer
        return new_pgoff, None if make_fd is None else make_fd()


def _run(vmas, plugins, slots):
    task = SimpleNamespace(vmas=tuple(vmas), pid=4242)
    tree = SimpleNamespace(plugins=tuple(plugins), plugin_ctx=None)
    return task_module._map_device_vmas(task, ServiceFds(pages=60, exe=61, plugin=slots), tree)


def _free_slots(n: int) -> list[int]:
    """Fd numbers nothing of this process uses (checked, not assumed)."""
    out, fd = [], 700
    while len(out) < n:
        try:
            os.fstat(fd)
        except OSError:
            out.append(fd)
        fd += 1
    return out


def test_each_device_vma_gets_its_plugins_fd_at_its_service_fd_and_the_new_offset(tmp_path):
    device = tmp_path / "kfd"  # stands in for /dev/kfd, which the core opens when the fd is None
    device.write_bytes(b"d" * PAGE)
    memfd_made = []

    def memfd():
        fd = os.memfd_create("vma-target", os.MFD_CLOEXEC)
        memfd_made.append(fd)
        return fd

    vmas = [_device_vma(0x10000, "/dev/dri/renderD128", 0x5000), _device_vma(0x20000, str(device), 0x9000)]
    first = Plugin()  # answers None for everything: the next plugin is asked
    plugin = _Answers({("/dev/dri/renderD128", 0x10000, 0x5000): (0x77000, memfd),
                       (str(device), 0x20000, 0x9000): (0x3000, None)})
    slots = _free_slots(2)
    try:
        moved = _run(vmas, [first, plugin], {0x10000: slots[0], 0x20000: slots[1]})
        assert moved == {0x10000: 0x77000, 0x20000: 0x3000}
        assert os.readlink(f"/proc/self/fd/{slots[0]}") == "/memfd:vma-target (deleted)"
        assert os.readlink(f"/proc/self/fd/{slots[1]}") == str(device)  # opened by path
        assert os.get_inheritable(slots[0]) is False
        with pytest.raises(OSError):
            os.fstat(memfd_made[0])  # the plugin's fd was closed once it was at its slot
    finally:
        for fd in slots:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.mark.parametrize("answer, match", [
    (None, r"no plugin maps it \(update_vma_map of answers answered None for offset 0x5000\)"),
    ((0x1001, None), r"the plugin answered offset 4097, expected a multiple of 4096 bytes"),
], ids=["no-answer", "unaligned"])
def test_a_device_vma_without_a_usable_answer_fails_naming_it(answer, match):
    table = {} if answer is None else {("/dev/dri/renderD128", 0x10000, 0x5000): answer}
    with pytest.raises(ChildStepFailed, match=match) as err:
        _run([_device_vma(0x10000, "/dev/dri/renderD128", 0x5000)], [_Answers(table)], {0x10000: _free_slots(1)[0]})
    assert err.value.step == "device VMA 0x10000-0x11000 (/dev/dri/renderD128)"


def test_the_ready_report_carries_the_offsets_and_nothing_else_reads_as_ready():
    assert ready_report({}) == READY and parse_ready(READY) == {}
    report = ready_report({0x7F0000200000: 0x5133 << 36})
    assert report.endswith(b"\n" + READY) and parse_ready(report) == {0x7F0000200000: 0x5133 << 36}
    # a failure (one JSON line, no READY), a torn report, a JSON line of another kind
    for bad in (b'{"step": "x", "cause": "y", "path": null}\n', b"", report[:-1], b'{"other": {}}\nR'):
        assert parse_ready(bad) is None, bad


@needs_fixtures
def test_the_orchestrator_maps_each_device_vma_at_its_reported_offset(tmp_path):
    from pycriu_restore.images import ImageSet
    from pycriu_restore.plan.build import build_plan
    from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state
    from pycriu_restore.restore.errors import RestoreFailed
    from pycriu_restore.restore.orchestrator import _with_device_offsets

    dst = tmp_path / "counter"
    state = generate_gpu_state(FIXTURES / "images" / "counter", dst, n_gpus=1, n_bos=2, total_bytes=8 * PAGE, seed=2,
                               render_nodes=True, device_vmas=True)
    task = build_plan(ImageSet.open(dst)).root
    moved = {dev.start: (i + 1) * PAGE for i, dev in enumerate(state.device_vmas)}
    spawned = SimpleNamespace(task=task, device_offsets=moved)
    placed = _with_device_offsets(spawned)
    for before, after in zip(task.vmas, placed.vmas):
        expected = moved.get(before.start, before.pgoff)
        assert after == dataclasses.replace(before, pgoff=expected)
    plain = dataclasses.replace(task, vmas=tuple(v for v in task.vmas if v.start not in moved))
    assert _with_device_offsets(SimpleNamespace(task=plain, device_offsets={})) is plain  # nothing to move

    first = state.device_vmas[0]
    missing = SimpleNamespace(task=task, device_offsets={k: v for k, v in moved.items() if k != first.start})
    with pytest.raises(RestoreFailed, match=rf"device VMA {first.start:#x}-{first.end:#x} \({first.path}, "
                       rf"offset {first.pgoff:#x}\): the task reported no new offset for it") as err:
        _with_device_offsets(missing)
    assert err.value.exit_code == 5
    stray = SimpleNamespace(task=task, device_offsets={**moved, 0x1000: 0})
    with pytest.raises(RestoreFailed, match="reported offsets for 0x1000, which is not a device VMA"):
        _with_device_offsets(stray)
