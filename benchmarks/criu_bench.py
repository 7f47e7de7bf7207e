#!/usr/bin/env python3
"""pycrestore against upstream CRIU on the same checkpoints, beside the raw limit for the bytes.

    python benchmarks/criu_bench.py [--repeat 5] [--big] [--cold] [--label NAME] [--json PATH]
                                    [--pycrestore CMD] [--engine NAME=CMD]... [--only ROW[,ROW]]

Checkpoints are made here, at the start of the run, by upstream CRIU (``criu dump``) of small
programs compiled or copied from benchmarks/workloads/ into a temporary directory:

    row        program                                   pids
    tiny       counter.c: one process, a few pages       51100
    tree       memhold.py 24 51201: python + 1 child,    51200, 51201
               24 MiB of random bytes each
    py256      memhold.py 256: python, 256 MiB           51300
    anon2g     bigmem.c 2048: 2 GiB anonymous memory,    51400       (only with --big)
               every page written

Each row restores the same images with ``criu restore -D DIR -d`` and ``pycrestore restore -D
DIR -d`` (the real console script, not pyenv's shim), alternating which goes first, and takes
the wall time of the whole command as the shell would see it: interpreter start-up, imports,
the restore and the exit. Both get ``-o LOG`` (pycrestore's log gives its phase durations).
After every restore (outside the timed window) each restored process is checked: alive, and,
for the memory rows, its buffer hashed again by the process itself on SIGUSR1 and compared
with the hash it wrote before the dump (byte identity). Then every pid is killed and reaped
(this process is the child subreaper, so the restored trees are its children) and checked
gone.

Beside each row, the raw limit for the same bytes (every pages-*.img of the checkpoint):
preadv into fresh anonymous memory with 1 and N threads, 4 KiB pages (MADV_NOHUGEPAGE) and
transparent huge pages (MADV_HUGEPAGE), from the page cache and with a cold cache
(POSIX_FADV_DONTNEED on the pages files after fsync). ``--cold`` also drops the pages files
before every timed restore.

Needs root and /usr/local/sbin/criu (../shared/tools/criu-4.2/install.sh installs it). Pids
51000-51999 are this benchmark's. Prints a table, then the JSON (also written to --json, or
benchmarks/results/criu-DATE[-LABEL].json).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import mmap
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = Path(__file__).resolve().parent / "workloads"
RESULTS = Path(__file__).resolve().parent / "results"
CRIU = Path("/usr/local/sbin/criu")
CRIU_INSTALL = REPO.parent / "shared" / "tools" / "criu-4.2" / "install.sh"
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
PID_MAX = Path("/proc/sys/kernel/pid_max")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
HUGE_PAGE = 2 << 20  # x86-64 PMD size: the unit of a transparent huge page
PHASE_RE = re.compile(r"\[\s*([\d.]+) ms\] (\w+)")


@dataclass
class Workload:
    """One checkpoint of the benchmark: how its program starts, and its processes."""

    name: str
    what: str
    argv: list[str]
    pids: list[int]  # root first
    memory_bytes: int  # what the program holds of its own (0: nothing to check)
    optional: bool = False
    images: Path = field(default=Path())
    workdir: Path = field(default=Path())

    @property
    def pages_files(self) -> list[Path]:
        return sorted(self.images.glob("pages-*.img"))


def workloads(tmp: Path) -> list[Workload]:
    counter, bigmem = tmp / "counter", tmp / "bigmem"
    memhold = tmp / "memhold.py"
    return [
        Workload("tiny", "C counter, 1 process", [str(counter)], [51100], 0),
        Workload("tree", "python tree, 2 processes x 24 MiB", [PYTHON, str(memhold), "24", "51201"],
                 [51200, 51201], 24 << 20),
        Workload("py256", "python, 256 MiB", [PYTHON, str(memhold), "256"], [51300], 256 << 20),
        Workload("anon2g", "C, 2 GiB anonymous", [str(bigmem), "2048"], [51400], 2048 << 20, optional=True),
    ]


# ---------------------------------------------------------------------------------------------
# Processes: start a workload at its pids, wait for it, kill and reap what a restore made.

def set_subreaper() -> None:
    """Orphans of the restored trees (their criu/pycrestore parent exits) become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def alive(pid: int) -> bool:
    """True if /proc/PID exists and is not a zombie (proc(5): state after the last ')')."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def reap_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    """Reap our children until every pid of ``pids`` has left /proc; raise if one stays."""
    deadline = time.monotonic() + timeout_s
    while any(os.path.exists(f"/proc/{p}") for p in pids):
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            left = [p for p in pids if os.path.exists(f"/proc/{p}")]
            raise RuntimeError(f"pids {left} still exist {timeout_s:.0f} s after SIGKILL")
        time.sleep(0.002)


def kill_all(pids: list[int]) -> None:
    """SIGKILL every pid (by pid only), then reap them and check that none is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap_gone(pids)


def check_free(pids: list[int]) -> None:
    used = [p for p in pids if os.path.exists(f"/proc/{p}")]
    if used:
        raise RuntimeError(f"pids {used} are in use: the benchmark's range is 51000-51999")


def start(w: Workload) -> None:
    """Start ``w`` at its root pid (ns_last_pid, put back afterwards) and wait until it is ready."""
    check_free(w.pids)
    old_last = NS_LAST_PID.read_text().strip()
    NS_LAST_PID.write_text(str(w.pids[0] - 1))
    proc = subprocess.Popen(w.argv, cwd=w.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    try:
        if proc.pid != w.pids[0]:
            raise RuntimeError(f"{w.name}: started as pid {proc.pid}, wanted {w.pids[0]} (another fork raced)")
        deadline = time.monotonic() + 120
        while w.memory_bytes and not all((w.workdir / f"ready-{p}").exists() for p in w.pids):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{w.name}: never became ready (exit {proc.poll()}); pids {w.pids}")
            time.sleep(0.05)
        time.sleep(0.3)  # the counter has no ready file; everyone else: asleep in its loop now
        for pid in w.pids:
            if not alive(pid):
                raise RuntimeError(f"{w.name}: pid {pid} is not running (a fork raced for its pid?)")
    except BaseException:
        kill_all(w.pids)
        raise
    finally:
        NS_LAST_PID.write_text(old_last)  # the machine's other forks carry on where they were


def dump(w: Workload, logs: Path) -> None:
    """criu dump the running tree of ``w`` into w.images (the dump kills it)."""
    w.images.mkdir()
    cmd = [str(CRIU), "dump", "-t", str(w.pids[0]), "-D", str(w.images), "-v4", "-o", str(logs / f"dump-{w.name}.log")]
    run = subprocess.run(cmd, cwd=w.workdir, capture_output=True, text=True)
    if run.returncode != 0:
        kill_all(w.pids)  # a failed dump leaves the tree running
        raise RuntimeError(f"{w.name}: criu dump failed ({run.returncode}): {run.stderr.strip()[-500:]}; "
                           f"log {logs / f'dump-{w.name}.log'}")
    reap_gone(w.pids)  # the dump killed them: reaped (the root was our child), and gone
    for f in w.workdir.glob("ready-*"):
        f.unlink()


# ---------------------------------------------------------------------------------------------
# Restores, timed from the outside.

def drop_cache(files: list[Path]) -> None:
    """Evict ``files`` from the page cache (clean pages only: fsync first)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(files: list[Path]) -> None:
    for path in files:
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass


def verify(w: Workload) -> str:
    """Every process of ``w`` runs; for memory rows each one's buffer hashes as at dump time."""
    for pid in w.pids:
        if not alive(pid):
            raise RuntimeError(f"{w.name}: restored pid {pid} is not running")
    if not w.memory_bytes:
        return "running"
    for pid in w.pids:
        (w.workdir / f"sum-{pid}.txt").unlink(missing_ok=True)
    sends = 0
    for pid in w.pids:
        got = w.workdir / f"sum-{pid}.txt"
        deadline = time.monotonic() + 60
        next_send = 0.0
        while not got.exists():
            if not alive(pid):
                raise RuntimeError(f"{w.name}: pid {pid} died after SIGUSR1, before writing its checksum")
            if time.monotonic() > deadline:
                status = Path(f"/proc/{pid}/status").read_text()
                state = next((line for line in status.splitlines() if line.startswith("State:")), "?")
                raise RuntimeError(f"{w.name}: pid {pid} wrote no checksum within 60 s of SIGUSR1 ({sends} sent; "
                                   f"{state.strip()}, {' '.join(line.strip() for line in status.splitlines() if line.startswith(('SigPnd', 'ShdPnd', 'SigBlk', 'SigCgt')))})")
            if time.monotonic() >= next_send:
                # Sent again every 5 s: once in a few dozen runs a signal sent right after
                # `criu restore -d` returned was never handled (the handler is idempotent).
                os.kill(pid, signal.SIGUSR1)
                sends += 1
                next_send = time.monotonic() + 5
            time.sleep(0.01)
        expected = (w.workdir / f"expected-{pid}.txt").read_text().strip()
        if got.read_text().strip() != expected:
            raise RuntimeError(f"{w.name}: pid {pid}: memory differs after restore: "
                               f"hash {got.read_text().strip()}, at dump {expected}")
    resent = sends - len(w.pids)
    return "checksum ok" + (f" (SIGUSR1 sent again {resent} time(s))" if resent else "")


def restore_once(w: Workload, engine: str, cmd: list[str], logs: Path, cold: bool) -> dict:
    """Restore ``w`` with ``cmd``; its wall time, its phases (pycrestore), the check; kill it."""
    check_free(w.pids)
    if cold:
        drop_cache(w.pages_files)
    log = logs / f"restore-{engine}-{w.name}.log"
    log.unlink(missing_ok=True)
    full = [*cmd, "restore", "-D", str(w.images), "-d", "-o", str(log)]
    start_s = time.perf_counter()
    run = subprocess.run(full, cwd=w.workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall_ms = (time.perf_counter() - start_s) * 1000
    try:
        if run.returncode != 0:
            raise RuntimeError(f"{w.name}: {engine} restore failed ({run.returncode}): "
                               f"{(run.stderr or run.stdout).strip()[-800:]}; log {log}")
        try:
            check = verify(w)
        except RuntimeError as err:
            raise RuntimeError(f"after a restore by {engine}: {err}; log {log}") from err
    finally:
        kill_all(w.pids)
    phases = {}
    if engine != "criu" and log.exists():
        for m in PHASE_RE.finditer(log.read_text()):
            phases[m.group(2).lower()] = float(m.group(1))
    return {"wall_ms": wall_ms, "phases_ms": phases, "check": check}


def time_command(cmd: list[str], repeat: int) -> float:
    """Median wall ms of a command that does nothing but start and exit."""
    times = []
    for _ in range(repeat):
        start_s = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - start_s) * 1000)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# The raw limit: the same bytes read into fresh memory, nothing else.

def _anon_huge_kib(addr: int) -> int:
    """AnonHugePages (KiB) of the mapping of this process that starts at ``addr`` (proc(5) smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = int(line.split("-", 1)[0], 16) == addr
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def raw_fill(files: list[Path], threads: int, huge: bool, cold: bool) -> tuple[float, float]:
    """Seconds to preadv every byte of ``files`` into one fresh anonymous mapping with
    ``threads`` threads, each taking one contiguous share; and the fraction of the mapping
    the kernel backed with huge pages."""
    sizes = [p.stat().st_size for p in files]
    total = sum(sizes)
    length = -(-total // HUGE_PAGE) * HUGE_PAGE
    buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    fds = [os.open(p, os.O_RDONLY) for p in files]
    view = memoryview(buf)
    try:
        if cold:
            drop_cache(files)
        # Where each file's bytes go: [start, end) of the mapping, file order.
        spans, at = [], 0
        for fd, size in zip(fds, sizes):
            spans.append((fd, at, at + size))
            at += size
        share = -(-total // threads // HUGE_PAGE) * HUGE_PAGE

        def fill(lo: int, hi: int) -> None:
            for fd, start, end in spans:
                a, b = max(lo, start), min(hi, end)
                while a < b:
                    n = os.preadv(fd, [view[a:b]], a - start)
                    if n <= 0:
                        raise RuntimeError(f"raw_fill: short read at {a - start} of fd {fd}")
                    a += n

        workers = [threading.Thread(target=fill, args=(i * share, min(total, (i + 1) * share)))
                   for i in range(threads)]
        start_s = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        seconds = time.perf_counter() - start_s
        anchor = ctypes.c_char.from_buffer(buf)
        addr = ctypes.addressof(anchor)
        del anchor
        huge_fraction = _anon_huge_kib(addr) * 1024 / length
    finally:
        view.release()
        for fd in fds:
            os.close(fd)
        buf.close()
    return seconds, huge_fraction


def raw_limits(w: Workload, repeat: int, threads: int) -> list[dict]:
    rows = []
    files = w.pages_files
    total = sum(p.stat().st_size for p in files)
    for cold in (False, True):
        for huge in (False, True):
            for n in sorted({1, threads}):
                if not cold:
                    warm_cache(files)
                runs = [raw_fill(files, n, huge, cold) for _ in range(repeat)]
                ms = statistics.median(s for s, _ in runs) * 1000
                rows.append({"row": w.name, "bytes": total, "threads": n, "pages": "2M THP" if huge else "4K",
                             "cache": "cold" if cold else "warm", "ms": ms, "GBps": total / ms / 1e6,
                             "huge_fraction": min(h for _, h in runs)})
    warm_cache(files)
    return rows


# ---------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_gib": round(mem_kib / 2**20, 1), "kernel": platform.release(),
            "thp": thp, "load_avg": os.getloadavg()}


def default_pycrestore() -> str:
    """The console script beside this interpreter: pyenv's bash shim would add ~60 ms of its own."""
    beside = Path(sys.executable).parent / "pycrestore"
    return str(beside) if beside.exists() else (shutil.which("pycrestore") or f"{sys.executable} -m pycriu_restore")


def build(tmp: Path) -> None:
    for name in ("counter", "bigmem"):
        subprocess.run(["gcc", "-O2", "-o", str(tmp / name), str(WORKLOADS / f"{name}.c")], check=True)
    shutil.copy(WORKLOADS / "memhold.py", tmp / "memhold.py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="restores per engine and row (median)")
    ap.add_argument("--big", action="store_true", help="also the 2 GiB anonymous row (needs ~6 GiB of disk and RAM)")
    ap.add_argument("--cold", action="store_true", help="drop the pages files from the cache before every restore")
    ap.add_argument("--only", help="comma-separated rows (tiny,tree,py256,anon2g); anon2g needs no --big then")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw preadv limits")
    ap.add_argument("--pycrestore", default=default_pycrestore(), help="the pycrestore command (shell words)")
    ap.add_argument("--engine", action="append", default=[], metavar="NAME=CMD",
                    help="one more restore command, timed in the same rotation (e.g. an older tree: "
                         "before='env PYTHONPATH=/tmp/old python -m pycriu_restore')")
    ap.add_argument("--label", default="", help="a suffix for the results file (e.g. before, after)")
    ap.add_argument("--json", type=Path, help="where to write the JSON (default: benchmarks/results/criu-DATE[-LABEL].json)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("criu_bench: needs root (criu dump/restore, pids)", file=sys.stderr)
        return 1
    if not CRIU.exists():
        subprocess.run([str(CRIU_INSTALL)], check=True, capture_output=True)
    if int(PID_MAX.read_text()) < 52000:
        PID_MAX.write_text("65536")
    set_subreaper()
    engines = {"criu": [str(CRIU)], "pycrestore": shlex.split(args.pycrestore)}
    for spec in args.engine:
        name, sep, cmd = spec.partition("=")
        if not sep or not cmd or name in engines:
            ap.error(f"--engine {spec!r}: expected NAME=CMD with a new NAME")
        engines[name] = shlex.split(cmd)
    threads = os.cpu_count() or 1

    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine(), "repeat": args.repeat, "cold_restores": args.cold,
                    "engines": {k: " ".join(v) for k, v in engines.items()},
                    "criu_version": subprocess.run([str(CRIU), "--version"], capture_output=True, text=True).stdout.split("\n")[0],
                    "startup_ms": {}, "rows": [], "raw": []}
    # What every command pays before it does anything: the interpreter and the CLI's imports.
    result["startup_ms"] = {"python -c pass": time_command([sys.executable, "-c", "pass"], 7),
                            "python -S -c pass": time_command([sys.executable, "-S", "-c", "pass"], 7),
                            "pycrestore --help": time_command([*engines["pycrestore"], "--help"], 7),
                            "criu --help": time_command([str(CRIU), "--help"], 7)}
    with tempfile.TemporaryDirectory(prefix="pycrestore-criu-bench-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        logs = tmp / "logs"
        logs.mkdir()
        build(tmp)
        only = args.only.split(",") if args.only else None
        chosen = [w for w in workloads(tmp) if (w.name in only if only else not w.optional or args.big)]
        for w in chosen:
            w.workdir = tmp / f"run-{w.name}"
            w.workdir.mkdir()
            w.images = tmp / f"images-{w.name}"
            print(f"criu_bench: {w.name}: start, dump", file=sys.stderr, flush=True)
            start(w)
            dump(w, logs)
            runs: dict[str, list[dict]] = {e: [] for e in engines}
            warm_cache(w.pages_files)
            for i in range(args.repeat):
                # Who goes first rotates: each engine restores after each other one as often.
                names = list(engines)
                order = names[i % len(names):] + names[:i % len(names)]
                if (i // len(names)) % 2:
                    order.reverse()
                for engine in order:
                    runs[engine].append(restore_once(w, engine, engines[engine], logs, args.cold))
            med = {e: statistics.median(r["wall_ms"] for r in runs[e]) for e in engines}
            # Each phase's median over the runs (pycrestore's -o log: PLAN ... RESUME).
            phase_names = {p for r in runs["pycrestore"] for p in r["phases_ms"]}
            phases = {p: statistics.median(r["phases_ms"].get(p, 0.0) for r in runs["pycrestore"])
                      for p in sorted(phase_names)}
            row = {"row": w.name, "what": w.what, "pids": w.pids,
                   "pages_bytes": sum(p.stat().st_size for p in w.pages_files),
                   "criu_ms": med["criu"], "pycrestore_ms": med["pycrestore"],
                   "ratio": med["pycrestore"] / med["criu"],
                   "pycrestore_phases_ms": phases, "pycrestore_phases_sum_ms": sum(phases.values()),
                   "others_ms": {e: med[e] for e in engines if e not in ("criu", "pycrestore")},
                   "check": sorted({r["check"] for e in engines for r in runs[e]}),
                   "runs_ms": {e: [round(r["wall_ms"], 1) for r in runs[e]] for e in engines}}
            if not args.no_raw:
                raw = raw_limits(w, args.repeat if w.pages_files else 1, threads)
                result["raw"].extend(raw)
                best = [r for r in raw if r["cache"] == ("cold" if args.cold else "warm")
                        and r["threads"] == threads and r["pages"] == "2M THP"]
                if best:
                    row["raw_nthread_thp_ms"] = best[0]["ms"]
                    row["pycrestore_vs_raw"] = med["pycrestore"] / best[0]["ms"]
            result["rows"].append(row)
            shutil.rmtree(w.images)  # the 2 GiB row's pages file is not kept beyond its row
        left = [p for w in chosen for p in w.pids if os.path.exists(f"/proc/{p}")]
        if left:
            raise RuntimeError(f"criu_bench: pids {left} are still running after the run")

    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cpus']} cpus, {result['machine']['mem_gib']} GiB, "
          f"kernel {result['machine']['kernel']}, THP {result['machine']['thp']}")
    print(f"criu: {result['engines']['criu']} ({result['criu_version']}); "
          + "; ".join(f"{k}: {v}" for k, v in result["engines"].items() if k != "criu"))
    print("start-up alone: " + ", ".join(f"{k} {v:.1f} ms" for k, v in result["startup_ms"].items()))
    print(f"\nwall time of the whole command, median of {args.repeat}, alternating"
          f"{' (cold cache)' if args.cold else ''}:")
    print(f"{'row':<8}{'what':<36}{'MiB':>8}{'CRIU ms':>10}{'pycrestore':>12}{'ratio':>8}{'phases':>9}{'raw N-thr THP':>15}")
    for r in result["rows"]:
        raw = f"{r['raw_nthread_thp_ms']:.1f}" if "raw_nthread_thp_ms" in r else "-"
        print(f"{r['row']:<8}{r['what']:<36}{r['pages_bytes'] / 2**20:>8.1f}{r['criu_ms']:>10.1f}"
              f"{r['pycrestore_ms']:>12.1f}{r['ratio']:>7.2f}x{r['pycrestore_phases_sum_ms']:>9.1f}{raw:>15}"
              + "".join(f"   {k} {v:.1f} ms ({v / r['criu_ms']:.2f}x)" for k, v in r["others_ms"].items()))
    if result["raw"]:
        print("\nraw limit: preadv of the pages files into fresh anonymous memory (median ms, GB/s, huge-page share):")
        print(f"{'row':<8}{'cache':<6}{'pages':<8}{'threads':>8}{'ms':>10}{'GB/s':>8}{'THP':>6}")
        for r in result["raw"]:
            print(f"{r['row']:<8}{r['cache']:<6}{r['pages']:<8}{r['threads']:>8}{r['ms']:>10.1f}{r['GBps']:>8.2f}"
                  f"{r['huge_fraction']:>6.0%}")
    out = json.dumps(result, indent=2)
    print(out)
    path = args.json or RESULTS / f"criu-{datetime.date.today().isoformat()}{'-' + args.label if args.label else ''}.json"
    path.write_text(out + "\n")
    print(f"criu_bench: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
