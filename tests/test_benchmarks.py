"""The benchmark scripts run: each prints its table, tiny sizes (speed is their job, not ours).

A benchmark broken by a change elsewhere (a helper's signature, the CPU policy on a new
machine) is otherwise found only when someone needs its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import needs_fixtures

pytestmark = needs_fixtures

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str, tmp_path: Path) -> list[dict]:
    out = tmp_path / f"{script}.json"
    res = subprocess.run([sys.executable, str(BENCHMARKS / script), *args, "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads(out.read_text())


def test_restore_bench_runs(tmp_path):
    rows = _run("restore_bench.py", "--cases", "counter", "--repeat", "1", tmp_path=tmp_path)
    assert rows and all(r["total_ms"] > 0 for r in rows), rows


def test_gpu_bench_runs(tmp_path):
    rows = _run("gpu_bench.py", "--host-gib", "0.01", "--gpu-gib", "0.01", "--repeat", "1", tmp_path=tmp_path)
    assert len(rows) == 1 and rows[0]["serial_s"] > 0 and rows[0]["parallel_s"] > 0, rows
