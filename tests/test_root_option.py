"""--root DIR: every path of the images under DIR, and DIR the tasks' "/" (plan/reroot.py).

The shell loop of tests/test_inherit_fd.py (pid 48300: ``tick N`` to a pipe, ``log N`` to a
log file at fd 3), dumped by CRIU 4.2, is restored with ``--root`` into a copy of just the
files its checkpoint names (the shell, its libraries, /dev/null, the log, its cwd): the
restored task must run from the copies (exe, mappings, fd 3 all under DIR), have DIR as its
root, go on with the next tick, and leave the originals untouched. Without the copies the
restore is refused naming the missing file; kinds that hold a path of their own are refused.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from pathlib import Path

import pytest

from conftest import pid_max_at_least
from pycriu_restore.images import ImageSet
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import UnsupportedFeature
from pycriu_restore.plan.model import OpenFile
from pycriu_restore.plan.reroot import reroot, under
from test_inherit_fd import PID, _end, _read_lines, _restore, dumped  # noqa: F401 - the fixture

EXIT_UNSUPPORTED, EXIT_ENVIRONMENT = 3, 4


def _copy_named_files(images: Path, new_root: Path) -> None:
    """Copy into ``new_root`` every file the plan opens or maps, and its cwd (what a copied
    root filesystem would hold); device nodes are made anew with their numbers."""
    plan = build_plan(ImageSet.open(images))
    paths = {v.file.path for t in plan.tasks for v in t.vmas if v.file is not None and v.file.memfd_inode is None}
    paths |= {t.mm.exe.path for t in plan.tasks if t.mm is not None}
    paths |= {f.path for t in plan.tasks for f in t.files if isinstance(f, OpenFile)}
    for path in sorted(paths):
        dst = Path(under(str(new_root), path))
        dst.parent.mkdir(parents=True, exist_ok=True)
        st = os.stat(path)
        if stat.S_ISCHR(st.st_mode):
            os.mknod(dst, st.st_mode, st.st_rdev)
        else:
            shutil.copy2(path, dst)
    for t in plan.tasks:
        Path(under(str(new_root), t.cwd)).mkdir(parents=True, exist_ok=True)


def test_restore_under_another_root(dumped, tmp_path):
    images, old_log, last, ino = dumped
    new_root = tmp_path / "newroot"
    _copy_named_files(images, new_root)
    copied_log = Path(under(str(new_root), str(old_log)))
    copied_size, old_size = copied_log.stat().st_size, old_log.stat().st_size
    r, w = os.pipe()
    with pid_max_at_least(65536):
        try:
            res = _restore(images, tmp_path / "pid", "--root", str(new_root), f"--inherit-fd=fd[{w}]:pipe:[{ino}]",
                           pass_fds=(w,))
            os.close(w)
            assert res.returncode == 0, res.stderr
            assert _read_lines(r, 3)[:3] == [f"tick {n}" for n in range(last + 1, last + 4)]
            assert os.readlink(f"/proc/{PID}/root") == str(new_root)
            assert os.readlink(f"/proc/{PID}/exe").startswith(str(new_root) + "/")
            assert os.readlink(f"/proc/{PID}/fd/3") == str(copied_log)
            maps = Path(f"/proc/{PID}/maps").read_text().splitlines()
            files = {ln.split(None, 5)[5] for ln in maps if len(ln.split(None, 5)) == 6 and ln.split(None, 5)[5].startswith("/")}
            assert files and all(f.startswith(str(new_root) + "/") for f in files), files
            deadline = time.monotonic() + 10
            while copied_log.stat().st_size == copied_size and time.monotonic() < deadline:
                time.sleep(0.05)
            assert copied_log.read_text().splitlines()[-1].startswith("log ")
            assert old_log.stat().st_size == old_size  # the original was not written
        finally:
            os.close(r)
            _end(PID)


def test_root_without_the_files_is_refused(dumped, tmp_path):
    images, *_ = dumped
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _restore(images, tmp_path / "pid", "--root", str(empty))
    assert res.returncode == EXIT_ENVIRONMENT, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(empty) in lines[0], lines
    assert not os.path.exists(f"/proc/{PID}")
    missing = _restore(images, tmp_path / "pid", "--root", str(tmp_path / "nowhere"))
    assert missing.returncode == EXIT_ENVIRONMENT and "not a directory" in missing.stderr, missing.stderr


def test_kinds_with_paths_of_their_own_are_refused_under_root(tmp_path):
    """A plan whose task holds an fd of a kind reroot does not know is refused, naming it."""
    from dataclasses import replace

    from conftest import FIXTURES_MORE

    images = FIXTURES_MORE / "images" / "unixsrv"
    if not images.exists():
        pytest.skip(f"{images} not found: the criu-4.2-more pack is not beside the repository")
    plan = build_plan(ImageSet.open(images))
    with pytest.raises(UnsupportedFeature, match=r"unix socket .*bound to a path, under another root"):
        reroot(plan, str(tmp_path))
    assert reroot(plan, "/") is plan
    assert reroot(replace(plan, shared=()), str(tmp_path)).tasks[0].root == str(tmp_path) + "/"


def test_a_device_mapping_is_refused_under_root(dumped, tmp_path):
    """A VMA_EXT_PLUGIN mapping would be opened at its host path (no plugin file can answer
    for it under --root, those are refused too): refused, naming the task and the VMA."""
    from dataclasses import replace

    images, *_ = dumped
    plan = build_plan(ImageSet.open(images))
    task = plan.tasks[0]
    i, vma = next((i, v) for i, v in enumerate(task.vmas) if v.file is not None and v.file.memfd_inode is None)
    device = replace(vma, file=replace(vma.file, path="/dev/kfd", plugin=True))
    plan = replace(plan, tasks=(replace(task, vmas=task.vmas[:i] + (device,) + task.vmas[i + 1:]),))
    expected = f"pid {task.pid} device VMA {vma.start:#x}-{vma.end:#x} (/dev/kfd): a plugin's mapping under another root"
    with pytest.raises(UnsupportedFeature, match=re.escape(expected)):
        reroot(plan, str(tmp_path))
    assert reroot(plan, "/") is plan
