#!/usr/bin/env python3
"""Serial against parallel GPU restore (simgpu), beside host-only and GPU-only restores.

    python benchmarks/gpu_bench.py [--host-gib 2] [--gpu-gib 1,2,4] [--cap-gbps 0] [--json out.json]

For each G in --gpu-gib, four restores of checkpoints built from the counter fixture:
  T_host      H GiB of host memory (an anonymous VMA, restore_bench.make_big_images), no GPU
  T_gpu       G GiB of simulated VRAM (2 GPUs, 64 BOs, generator.py) on the tiny counter
  serial      H host + G GPU, --no-parallel-gpu-restore (the task waits for its VRAM, then
              restores its memory)
  parallel    H host + G GPU, the fill pool copies while the blob restores host memory
all in the same run, best of --repeat. Targets (issue 5): parallel <= 1.10 x max(T_host,
T_gpu); at G ~ H a saving of at least 34.3% against serial. Needs root; kills what it restores.

--cap-gbps models the copy engine: on a real GPU, SDMA fills VRAM without the CPU, at PCIe
speed. Without a cap simgpu copies with the CPU, and on a 2-core machine the two GPU workers
and the blob compete for the cores, so parallel cannot reach max(T_host, T_gpu) there.
Results (2 cores): benchmarks/results/gpu-*.json. gpu-cap1GBps-2026-11-28.json is after serial
mode began to wait for the orchestrator's pool, which fills the GPUs side by side (before, the
task filled them one after the other): serial at G = 2 and 4 GiB fell from 5.43 s and 7.47 s
(2026-11-25) to 2.57 s and 3.67 s; parallel went from 1.15 s and 2.68 s to 1.45 s and
2.78 s, within this shared machine's noise (another engineer's tests ran beside it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from restore_bench import FIXTURES, NO_CPU_CHECK, emit_json, make_big_images, warm  # noqa: E402

from pycriu_restore.plugins.amdgpu.generator import generate_gpu_state  # noqa: E402
from pycriu_restore.plugins.amdgpu.plugin import AmdgpuPlugin  # noqa: E402
from pycriu_restore.restore.orchestrator import RestoreOptions, restore  # noqa: E402

GIB = 1 << 30


def timed_restore(images: Path, parallel: bool, cap: float | None) -> float:
    subprocess.run([str(FIXTURES / "install.sh"), "counter"], check=True, capture_output=True)
    plugin = AmdgpuPlugin()
    start = time.perf_counter()
    restored = restore(str(images), RestoreOptions(plugins=(plugin,), gpu_backend="sim", parallel_gpu=parallel,
                                                   gpu_bytes_per_s=cap, cpu_cap=NO_CPU_CHECK))
    seconds = time.perf_counter() - start
    os.kill(restored.root_pid, signal.SIGKILL)
    os.waitpid(restored.root_pid, 0)
    if plugin.sim_device is not None:
        plugin.sim_device.close()
    time.sleep(0.2)  # let the pid go
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host-gib", type=float, default=2.0)
    ap.add_argument("--gpu-gib", default="1,2,4")
    ap.add_argument("--cap-gbps", type=float, default=0.0, help="per-GPU copy cap in GB/s (0: none)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cap = args.cap_gbps * 1e9 if args.cap_gbps else None
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        tmp = Path(tmp)
        host = tmp / "host"
        make_big_images(host, args.host_gib, FIXTURES / "images" / "counter")
        subprocess.run(["sync"], check=True)
        warm(host / "pages-1.img")
        t_host = min(timed_restore(host, True, cap) for _ in range(args.repeat))
        for g in [float(x) for x in args.gpu_gib.split(",")]:
            nbytes = int(g * GIB) // 4096 * 4096
            gpu_only, both = tmp / f"gpu{g}", tmp / f"both{g}"
            generate_gpu_state(FIXTURES / "images" / "counter", gpu_only, 2, 64, nbytes, seed=1)
            generate_gpu_state(host, both, 2, 64, nbytes, seed=1)
            subprocess.run(["sync"], check=True)  # no writeback of the new files during the timings
            for d in (gpu_only, both):
                for f in [*d.glob("amdgpu-pages-*"), d / "pages-1.img"]:
                    warm(f)
            t_gpu = min(timed_restore(gpu_only, True, cap) for _ in range(args.repeat))
            serial = min(timed_restore(both, False, cap) for _ in range(args.repeat))
            parallel = min(timed_restore(both, True, cap) for _ in range(args.repeat))
            rows.append({"host_gib": args.host_gib, "gpu_gib": g, "T_host_s": t_host, "T_gpu_s": t_gpu,
                         "serial_s": serial, "parallel_s": parallel,
                         "parallel_over_max": parallel / max(t_host, t_gpu), "saving_vs_serial": 1 - parallel / serial})
            shutil.rmtree(gpu_only)
            shutil.rmtree(both)
    print(f"cap per GPU: {args.cap_gbps or 'none'} GB/s, {os.cpu_count()} CPUs")
    print(f"{'H GiB':>6}{'G GiB':>7}{'T_host s':>10}{'T_gpu s':>9}{'serial s':>10}{'parallel s':>12}{'par/max':>9}{'saving':>8}")
    for r in rows:
        print(f"{r['host_gib']:>6g}{r['gpu_gib']:>7g}{r['T_host_s']:>10.3f}{r['T_gpu_s']:>9.3f}{r['serial_s']:>10.3f}"
              f"{r['parallel_s']:>12.3f}{r['parallel_over_max']:>9.2f}{r['saving_vs_serial']:>8.1%}")
    emit_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
