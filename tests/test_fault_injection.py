"""Every fault point (pycriu_restore/faults.py) fails a real restore, and the failure is clean.

For each point, ``pycrestore restore`` runs with PYCRESTORE_FAULT=<point> and must end with
one line on stderr naming the failure, the documented exit code (5: the restore failed),
and nothing left behind: no process (the checkpoint's pids, and any process that carries
this run's marker in its environment: every task the orchestrator forks inherits it until
the blob replaces its memory), no fd the orchestrator opened (faults.py lists them at exit),
no new mount, nft table, /dev/shm entry or file in the run's TMPDIR. Namespaces need no
check of their own: a namespace lives only as long as a process, an fd or a bind mount
holds it, and all three are checked.

Checkpoints of our own, used by nobody else: a two-task tree (sh's ``sleep &``, pids
47000-47001) dumped by CRIU 4.2 at the start, and evloop (criu-4.2-more, pid 40300) with
simulated GPU state for the amdgpu points. ``python tests/test_fault_injection.py`` runs
the same cases and prints a table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FIXTURES_MORE, ensure_criu, kill_session, needs_fixtures_more, pid_max_at_least  # noqa: E402
from pycriu_restore.blob.status import STEP_NAMES  # noqa: E402
from pycriu_restore.errors import EXIT_RESTORE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TREE_PIDS = (47000, 47001)
EVLOOP_PID = 40300
GONE_TIMEOUT_S = 10.0  # a killed task's zombie is reaped by init (pid 1) when it gets to it

TREE_POINTS = (
    [f"stage.{s}" for s in ("plan", "preflight", "fork", "bootstrap", "memory", "resume")]
    + ["ptrace:1", "ptrace:3", "ptrace:10", "ptrace:40", "bootstrap.mmap", "bootstrap.write_memory"]
    + [f"task.{s}" for s in ("start", "session", "shared_objects", "fork", "fs", "service_files")]
    + ["task.install_fd.REG"]
    + [f"blob.{name}" for name in sorted(STEP_NAMES.values())]
)
GPU_POINTS = ("amdgpu.restore_init", "amdgpu.post_forking", "amdgpu.fill")


@dataclass
class Outcome:
    point: str
    rc: int
    stderr: str
    leftovers: list[str]


def _make_tree(dst: Path) -> None:
    """Start ``sh -c 'sleep & exec sleep'`` at pid 47000 (its child at 47001) and dump it with CRIU."""
    criu = ensure_criu()
    for _ in range(50):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(TREE_PIDS[0] - 1))
        proc = subprocess.Popen(["/bin/sh", "-c", "sleep 1000000 & exec sleep 1000000"], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if proc.pid == TREE_PIDS[0]:
            break
        kill_session(proc.pid)  # its background sleep too: it would keep the session's pid
        proc.wait()
    else:
        pytest.fail(f"could not start the tree at pid {TREE_PIDS[0]} (pids are busy)")
    deadline = time.monotonic() + 5
    while not Path(f"/proc/{TREE_PIDS[1]}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    dst.mkdir(parents=True)
    subprocess.run([str(criu), "dump", "-t", str(proc.pid), "-D", str(dst), "-o", "/dev/null"], check=True)
    proc.wait()
    kill_session(TREE_PIDS[0])
    _wait_gone(TREE_PIDS)


def _wait_gone(pids) -> list[int]:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while time.monotonic() < deadline:
        left = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if not left:
            return []
        time.sleep(0.05)
    return left


def _marked(token: str) -> list[int]:
    needle = f"PYCRESTORE_FAULT_RUN={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _snapshot() -> dict[str, set[str]]:
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout if shutil.which("nft") else ""
    return {
        "mount": {" ".join(line.split()[3:5]) for line in Path("/proc/self/mountinfo").read_text().splitlines()},
        "nft table": set(nft.splitlines()),
        "/dev/shm": set(os.listdir("/dev/shm")),
    }


def run_point(point: str, images: Path, pids: tuple[int, ...], extra: list[str] = (), install=None) -> Outcome:
    """One restore with ``point`` armed; what it printed and what it left."""
    if install:
        install()
    token = uuid.uuid4().hex
    work = Path(tempfile.mkdtemp(prefix="pycrestore-fault-"))
    tmpdir = work / "tmp"
    tmpdir.mkdir()
    fds_file = work / "fds"
    env = {**os.environ, "PYCRESTORE_FAULT": point, "PYCRESTORE_FAULT_FDS": str(fds_file),
           "PYCRESTORE_FAULT_RUN": token, "TMPDIR": str(tmpdir)}
    before = _snapshot()
    proc = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(images), "-d", *extra],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    leftovers = []
    if proc.returncode == 0:  # the point was not reached: the restore succeeded; end it
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    left = _wait_gone(pids)
    if left and proc.returncode != 0:
        leftovers.append(f"pids {left}")
    marked = _marked(token)
    if marked:
        leftovers.append(f"processes of this run {marked}")
        for pid in marked:
            os.kill(pid, 9)
    if fds_file.exists() and fds_file.read_text().strip():
        leftovers.append(f"orchestrator fds: {fds_file.read_text().strip()!r}")
    after = _snapshot()
    for what in before:
        if after[what] - before[what]:
            leftovers.append(f"{what}: {sorted(after[what] - before[what])}")
    if any(tmpdir.iterdir()):
        leftovers.append(f"temporary files: {sorted(p.name for p in tmpdir.iterdir())}")
    shutil.rmtree(work)
    return Outcome(point, proc.returncode, proc.stderr, leftovers)


def _check(outcome: Outcome) -> None:
    lines = outcome.stderr.splitlines()
    assert outcome.rc == EXIT_RESTORE, f"{outcome.point}: exit {outcome.rc}, expected {EXIT_RESTORE}: {outcome.stderr}"
    assert len(lines) == 1 and lines[0].startswith("pycrestore: error: "), f"{outcome.point}: {outcome.stderr!r}"
    assert "EIO" in lines[0] or "Input/output error" in lines[0], f"{outcome.point}: the cause is not named: {lines[0]}"
    assert not outcome.leftovers, f"{outcome.point}: left {outcome.leftovers}"


@pytest.fixture(scope="module")
def tree_images(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("fault injection restores real processes: run as root")
    with pid_max_at_least(65536):
        images = tmp_path_factory.mktemp("faults") / "tree"
        _make_tree(images)
        yield images


@pytest.mark.parametrize("point", TREE_POINTS)
def test_fault_point_fails_cleanly(tree_images, point):
    _check(run_point(point, tree_images, TREE_PIDS))


def test_unreached_point_changes_nothing(tree_images):
    """A point the restore never reaches (amdgpu.fill: the tree has no GPU state) leaves it whole."""
    outcome = run_point("amdgpu.fill", tree_images, TREE_PIDS)
    assert outcome.rc == 0, outcome.stderr
    assert not outcome.leftovers


@pytest.fixture(scope="module")
def gpu_images(tmp_path_factory):
    from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state

    if not (FIXTURES_MORE / "images" / "evloop").is_dir():
        pytest.fail(f"{FIXTURES_MORE}: the criu-4.2-more pack is missing")
    with pid_max_at_least(65536):
        dst = tmp_path_factory.mktemp("faults-gpu") / "evloop"
        generate_gpu_state(FIXTURES_MORE / "images" / "evloop", dst, 1, 4, 4 << 20, seed=11)
        yield dst


def _install_evloop() -> None:
    subprocess.run([str(FIXTURES_MORE / "install.sh"), "evloop"], check=True, capture_output=True)


@needs_fixtures_more
@pytest.mark.parametrize("point", GPU_POINTS)
def test_amdgpu_fault_point_fails_cleanly(gpu_images, point):
    outcome = run_point(point, gpu_images, (EVLOOP_PID,), ["--gpu-backend", "sim"], install=_install_evloop)
    _check(outcome)


def test_fault_spec_is_checked():
    """A malformed PYCRESTORE_FAULT or an unknown blob step is refused with one line, not ignored."""
    env = {**os.environ, "PYCRESTORE_FAULT": "task.fork:x"}
    proc = subprocess.run([sys.executable, "-c", "import pycriu_restore.faults"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("pycrestore: PYCRESTORE_FAULT="), proc.stderr


def test_blob_fault_step_is_in_the_abi():
    """fault_step is a field of struct blob_args on both sides (test_blob_abi compares offsets);
    faults.blob_step maps each step name to its BLOB_STEP_* number."""
    from pycriu_restore import faults
    from pycriu_restore.blob import abi

    assert "fault_step" in dict(abi.BlobArgs._fields_)
    saved = dict(faults._ARMED)
    try:
        faults._ARMED.clear()
        faults._ARMED["blob.fill_pages"] = 1
        assert faults.blob_step(STEP_NAMES) == abi.BLOB_STEP_FILL_PAGES
        faults._ARMED.clear()
        assert faults.blob_step(STEP_NAMES) == 0
    finally:
        faults._ARMED.clear()
        faults._ARMED.update(saved)


if __name__ == "__main__":  # the whole table, by hand
    with pid_max_at_least(65536):
        base = Path(tempfile.mkdtemp(prefix="pycrestore-faults-"))
        _make_tree(base / "tree")
        from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state
        generate_gpu_state(FIXTURES_MORE / "images" / "evloop", base / "evloop", 1, 4, 4 << 20, seed=11)
        cases = [(p, base / "tree", TREE_PIDS, [], None) for p in TREE_POINTS]
        cases += [(p, base / "evloop", (EVLOOP_PID,), ["--gpu-backend", "sim"], _install_evloop) for p in GPU_POINTS]
        bad = 0
        for point, images, pids, extra, install in cases:
            o = run_point(point, images, pids, extra, install)
            ok = o.rc == EXIT_RESTORE and len(o.stderr.splitlines()) == 1 and not o.leftovers
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {point:<28} exit {o.rc}  {o.stderr.strip()[:110]}  {o.leftovers or ''}")
        shutil.rmtree(base)
        print(f"{len(cases)} points, {bad} bad")
        sys.exit(1 if bad else 0)
