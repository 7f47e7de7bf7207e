#!/usr/bin/env python3
"""Long fuzz runs over structured mutations of real checkpoints (issue 11).

    python tools/fuzz_restore.py --cases 10000             # plan level: build_plan only
    python tools/fuzz_restore.py --restores 300 --seed 7   # real restores (root; counter, pipes)

Plan level: each case copies the criu-4.2 counter or pipes images, applies 1-3 mutations
(tests/fuzz_mutations.py) and builds the plan in a child process with a time limit; the
outcome must be a plan or a PycrestoreError with exit 2 or 3, in under ``--timeout`` seconds.

Real restores: each case mutates only structural fields (ids, addresses, sizes, counts,
flags) or deletes, truncates or swaps files, installs the workload (install.sh), and runs
``pycrestore restore -d --cpu-cap none`` (this CPU refuses the AMD-dumped pack otherwise,
docs/cpu.md). Required: no traceback, exit 0/2/3/4/5 with one line on failure, no hang,
no process left with a pid of the workload after a failure (and none after the kill of a
success), and after exit 0 the workload's verify.py PASS. Anything else is a finding:
printed with its seed and mutations, and counted. Exit status 1 if there was a finding.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fuzz_mutations import apply, copy_fixture, random_ops  # noqa: E402

PACK = Path(os.environ.get("PYCRESTORE_FIXTURES", ROOT.parent / "shared" / "fixtures" / "criu-4.2"))
WORKLOADS = {"counter": [31100], "pipes": [31300, 31301]}


def _plan_child(d: str, queue) -> None:
    from pycriu_restore.errors import PycrestoreError
    from pycriu_restore.images import ImageSet
    from pycriu_restore.plan.build import build_plan
    try:
        build_plan(ImageSet.open(d))
        queue.put(("plan", ""))
    except PycrestoreError as err:
        queue.put((f"exit {err.exit_code}", str(err)))
    except BaseException as err:  # noqa: BLE001 - exactly what we look for
        import traceback
        queue.put(("TRACEBACK", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


def plan_case(work: Path, seed: int, timeout: float) -> tuple[str, str, list[str]]:
    rng = random.Random(seed)
    name = rng.choice(sorted(WORKLOADS))
    d = copy_fixture(PACK / "images" / name, work / "case")
    done = apply(d, random_ops(rng))
    queue: multiprocessing.Queue = multiprocessing.Queue()
    child = multiprocessing.Process(target=_plan_child, args=(str(d), queue))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return "HANG", f"build_plan ran past {timeout} s", done
    if queue.empty():
        return "CRASH", f"child exit {child.exitcode}", done
    outcome, message = queue.get()
    if outcome.startswith("exit") and (outcome not in ("exit 2", "exit 3") or "\n" in message):
        return "BAD-ERROR", f"{outcome}: {message}", done
    return outcome, message, done


def _kill_wait(pids: list[int], timeout: float = 10.0) -> bool:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(os.path.exists(f"/proc/{p}") for p in pids):
            return True
        time.sleep(0.05)
    return False


def restore_case(work: Path, seed: int, timeout: float) -> tuple[str, str, list[str]]:
    rng = random.Random(seed)
    name = rng.choice(sorted(WORKLOADS))
    pids = WORKLOADS[name]
    if any(os.path.exists(f"/proc/{p}") for p in pids):
        return "SKIP", f"a pid of {name} is in use", []
    d = copy_fixture(PACK / "images" / name, work / "case")
    done = apply(d, random_ops(rng), structural_only=True)
    subprocess.run([str(PACK / "install.sh"), name], check=True, capture_output=True)
    try:
        r = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-d", "--cpu-cap", "none", "-D", str(d)],
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        _kill_wait(pids)
        return "HANG", f"restore ran past {timeout} s", done
    err_lines = [l for l in r.stderr.strip().splitlines() if "XSAVE state the dump CPU lacked" not in l]
    if "Traceback" in r.stderr:
        _kill_wait(pids)
        return "TRACEBACK", r.stderr[-2000:], done
    if r.returncode != 0:
        left = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if left:
            _kill_wait(pids)
            return "LEFTOVER", f"exit {r.returncode}, yet {left} exist: {err_lines}", done
        if r.returncode not in (2, 3, 4, 5) or len(err_lines) != 1:
            return "BAD-ERROR", f"exit {r.returncode}: {err_lines}", done
        return f"exit {r.returncode}", err_lines[0], done
    v = subprocess.run([sys.executable, str(PACK / "verify.py"), name, "--timeout", "8"], capture_output=True, text=True)
    verdict = v.stdout.strip().splitlines()[0] if v.stdout.strip() else v.stderr.strip()
    gone = _kill_wait(pids)
    if not gone:
        return "LEFTOVER", f"exit 0, {pids} not gone after SIGKILL", done
    if v.returncode != 0:
        return "EXIT0-VERIFY-FAIL", verdict, done
    return "exit 0 PASS", verdict, done


FINDINGS = {"HANG", "CRASH", "TRACEBACK", "BAD-ERROR", "LEFTOVER", "EXIT0-VERIFY-FAIL"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=0, help="plan-level cases")
    ap.add_argument("--restores", type=int, default=0, help="real restores (root)")
    ap.add_argument("--seed", type=int, default=0, help="first seed; case i uses seed + i")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--json", type=Path, help="write every case's outcome here")
    ap.add_argument("--progress", type=int, default=500, metavar="N",
                    help="print a line of counts every N cases (0: only at the end)")
    args = ap.parse_args()
    counts: collections.Counter = collections.Counter()
    cases = []
    with tempfile.TemporaryDirectory(prefix="pycrestore-fuzz-") as tmp:
        work = Path(tmp)
        for mode, n, fn in (("plan", args.cases, plan_case), ("restore", args.restores, restore_case)):
            start = time.monotonic()
            for i in range(n):
                seed = args.seed + i
                outcome, message, done = fn(work, seed, args.timeout if mode == "restore" else min(args.timeout, 20))
                counts[(mode, outcome)] += 1
                cases.append({"mode": mode, "seed": seed, "outcome": outcome, "message": message, "mutations": done})
                if outcome in FINDINGS:
                    print(f"FINDING {mode} seed {seed}: {outcome}: {message}\n  mutations: {done}", flush=True)
                if args.progress and (i + 1) % args.progress == 0 and i + 1 < n:
                    print(f"{mode}: {i + 1}/{n} cases, {time.monotonic() - start:.0f} s: "
                          + ", ".join(f"{o} {c}" for (m, o), c in sorted(counts.items()) if m == mode), flush=True)
            if n:
                print(f"{mode}: {n} cases in {time.monotonic() - start:.0f} s", flush=True)
    for (mode, outcome), c in sorted(counts.items()):
        print(f"{mode:8} {outcome:20} {c}")
    if args.json:
        args.json.write_text(json.dumps(cases, indent=1))
    return 1 if any(o in FINDINGS for _, o in counts) else 0


if __name__ == "__main__":
    sys.exit(main())
