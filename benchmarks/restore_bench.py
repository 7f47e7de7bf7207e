#!/usr/bin/env python3
"""Restore wall time and page-fill throughput, side by side with the physical limit.

    python benchmarks/restore_bench.py [--big-gib 2] [--repeat 3] [--json out.json]
        [--cases counter,pymem,big] [--base IMAGES --install NAME] [--hugepage]

For each image (counter, pymem, and "big": a one-task checkpoint, counter's by default or
``--base``'s, plus a multi-GiB anonymous VMA with all its pages, written through the image
layer's encoder; ``--hugepage`` adds "big+hg", the same VMA marked MADV_HUGEPAGE), it
restores with the library API twice over: with the blob's fill threads as the orchestrator
picks them ("auto") and with the leader alone (PYCRESTORE_FILL_THREADS=1: "1"), and reads
the stage durations from the timeline. In the same run it measures the limits for the same
pages file, from the page cache: preadv into fresh anonymous memory with 1 and N threads
(N: the CPUs this process may use), in 4 KiB pages and in huge pages (MADV_HUGEPAGE). Each
row's ratio is the fill rate over the limit of its kind: N threads, huge pages for "+hg".
Needs root; kills every task it restores. Prints a table, then the JSON.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FIXTURES = Path(os.environ.get("PYCRESTORE_FIXTURES", REPO.parent / "shared" / "fixtures" / "criu-4.2"))

from pycriu_restore.images import ImageSet, dump_image, load_image  # noqa: E402
from pycriu_restore.images.image import Image  # noqa: E402
from pycriu_restore.restore.fill_tids import FILL_THREADS_ENV, usable_cpus  # noqa: E402
from pycriu_restore.restore.cpucap import parse_cpu_cap  # noqa: E402
from pycriu_restore.restore.orchestrator import RestoreOptions, restore  # noqa: E402
from pycriu_restore.restore.timeline import Stage  # noqa: E402

# The pack was dumped on a CPU without AVX-512, which the default CPU policy refuses on a CPU
# with it (docs/cpu.md). A benchmark kills what it restores at once: no check, on any CPU.
NO_CPU_CHECK = parse_cpu_cap("none")

PAGE = 4096
BIG_VMA_START = 0x100000000000  # free in counter's layout (below its executable), and fillmem's
PAGES_PER_ENTRY = 256  # CRIU splits pagemap entries at 256 pages (research/feasibility-spike.md)
MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>
HUGE_PAGE = 2 << 20


def make_big_images(dst: Path, gib: float, base: Path, hugepage: bool = False) -> int:
    """Copy ``base`` (a one-task checkpoint) and add a ``gib`` GiB anonymous VMA whose every
    page is dumped; with ``hugepage`` the VMA has MADV_HUGEPAGE (VmFlags hg) in the image."""
    shutil.copytree(base, dst)
    pid = ImageSet.open(str(dst)).pstree()[0].pid
    nr_pages = int(gib * (1 << 30)) // PAGE
    mm = load_image(dst / f"mm-{pid}.img")
    template = next(v for v in mm.entries[0].vmas if v.status == (1 | 1 << 9) and v.prot == 3)
    vmas = mm.entries[0].vmas
    big = vmas.add()
    big.CopyFrom(template)
    big.start, big.end = BIG_VMA_START, BIG_VMA_START + nr_pages * PAGE
    big.madv = 1 << MADV_HUGEPAGE if hugepage else 0
    ordered = sorted(list(vmas), key=lambda v: v.start)
    del vmas[:]
    vmas.extend(ordered)
    (dst / f"mm-{pid}.img").write_bytes(dump_image(mm))

    pm = load_image(dst / f"pagemap-{pid}.img")
    head, old_entries = pm.entries[0], list(pm.entries[1:])
    old_pages = (dst / "pages-1.img").read_bytes()
    # Where each old present entry's data is in the old pages file (pagemap order).
    old_data, offset = {}, 0
    for e in old_entries:
        if e.flags & 4:
            old_data[e.vaddr] = old_pages[offset:offset + e.nr_pages * PAGE]
            offset += e.nr_pages * PAGE
    new_entries = []
    for first in range(0, nr_pages, PAGES_PER_ENTRY):
        e = type(old_entries[0])()
        e.vaddr = BIG_VMA_START + first * PAGE
        e.compat_nr_pages = 0  # required in the schema; CRIU writes 0 and uses nr_pages
        e.nr_pages = min(PAGES_PER_ENTRY, nr_pages - first)
        e.flags = 4 | 2  # PE_PRESENT | PE_LAZY, as a normal dump writes anonymous pages
        new_entries.append(e)
    entries = sorted(old_entries + new_entries, key=lambda e: e.vaddr)
    rebuilt = Image(kind=pm.kind, entries=[head, *entries])
    (dst / f"pagemap-{pid}.img").write_bytes(dump_image(rebuilt))
    block = os.urandom(1 << 20)
    with open(dst / "pages-1.img", "wb") as f:  # pages in pagemap order, as CRIU writes them
        for e in entries:
            if not e.flags & 4:
                continue
            if e.vaddr in old_data:
                f.write(old_data[e.vaddr])
            else:
                f.write(block[: e.nr_pages * PAGE])
    return nr_pages * PAGE


def preadv_limit(pages_path: Path, threads: int = 1, huge: bool = False) -> tuple[float, int]:
    """Seconds for one preadv pass of the whole file into fresh anonymous memory, by
    ``threads`` threads (each its own contiguous share, cut on huge-page boundaries; os.preadv
    lets go of the GIL), in 4 KiB pages or, with ``huge``, MADV_HUGEPAGE memory."""
    size = pages_path.stat().st_size
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        buf.madvise(mmap.MADV_HUGEPAGE)
    fd = os.open(pages_path, os.O_RDONLY)
    view = memoryview(buf)
    share = -(-size // threads)
    share = -(-share // HUGE_PAGE) * HUGE_PAGE

    def read(lo: int, hi: int) -> None:
        while lo < hi:
            lo += os.preadv(fd, [view[lo:hi]], lo)

    workers = [threading.Thread(target=read, args=(i * share, min(size, (i + 1) * share)))
               for i in range(threads)]
    try:
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - start
    finally:
        view.release()
        os.close(fd)
        buf.close()
    return seconds, size


def warm(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def restore_once(images: Path, install_name: str | None, fill_threads: str | None) -> dict:
    """One restore, with PYCRESTORE_FILL_THREADS=``fill_threads`` (None: the orchestrator's choice)."""
    if install_name:
        subprocess.run([str(FIXTURES / "install.sh"), install_name], check=True, capture_output=True)
    if fill_threads is None:
        os.environ.pop(FILL_THREADS_ENV, None)
    else:
        os.environ[FILL_THREADS_ENV] = fill_threads
    start = time.perf_counter()
    restored = restore(str(images), RestoreOptions(cpu_cap=NO_CPU_CHECK))
    total = time.perf_counter() - start
    pid = restored.root_pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    d = restored.timeline.durations_ms
    pages = sum(v.nr_present_pages for v in restored.plan.root.vmas)
    return {"total_ms": total * 1000, "memory_ms": d[Stage.MEMORY], "pages": pages,
            **{s.name.lower() + "_ms": d[s] for s in d}}


def emit_json(rows: list[dict], path: Path | None) -> None:
    """Print the rows as JSON after the table, and write them to ``path`` if given."""
    out = json.dumps(rows, indent=2)
    print(out)
    if path:
        path.write_text(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big-gib", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cases", default="counter,pymem,big", help="comma-separated: counter, pymem, big")
    ap.add_argument("--base", type=Path, default=FIXTURES / "images" / "counter",
                    help="the one-task checkpoint the big case grows (default: counter's)")
    ap.add_argument("--install", default="counter", help="install.sh NAME before each big restore ('' none)")
    ap.add_argument("--hugepage", action="store_true", help="also the big case with its VMA marked hg")
    args = ap.parse_args()
    wanted = set(args.cases.split(","))
    cpus = usable_cpus()
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        cases = [(name, FIXTURES / "images" / name, name, False) for name in ("counter", "pymem") if name in wanted]
        if "big" in wanted:
            for hugepage in (False, True) if args.hugepage else (False,):
                big = Path(tmp) / ("big-hg" if hugepage else "big")
                make_big_images(big, args.big_gib, args.base, hugepage)
                label = f"{args.base.name}+{args.big_gib:g}GiB" + ("+hg" if hugepage else "")
                cases.append((label, big, args.install or None, hugepage))
        for label, images, install_name, hugepage in cases:
            pages_file = images / "pages-1.img"
            warm(pages_file)
            limits = {}
            for threads in sorted({1, cpus}):
                for huge in (False, True):
                    runs = [preadv_limit(pages_file, threads, huge) for _ in range(args.repeat)]
                    limits[(threads, huge)] = runs[0][1] / min(s for s, _ in runs) / 1e9
            for mode in ("1", None):  # alternating would mix the page cache less; this keeps rows apart
                runs = [restore_once(images, install_name, mode) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["memory_ms"])
                fill_gbps = (best["pages"] * PAGE) / (best["memory_ms"] / 1000) / 1e9
                rows.append({"image": label, "fill_threads": mode or "auto", "pages_bytes": pages_file.stat().st_size,
                             **best, "fill_GBps": fill_gbps,
                             "preadv_1t_GBps": limits[(1, False)], f"preadv_{cpus}t_GBps": limits[(cpus, False)],
                             "preadv_1t_huge_GBps": limits[(1, True)],
                             f"preadv_{cpus}t_huge_GBps": limits[(cpus, True)],
                             "ratio": fill_gbps / limits[(cpus, hugepage)]})
    os.environ.pop(FILL_THREADS_ENV, None)
    print(f"limits: preadv into fresh memory from the page cache, 1 and {cpus} threads, 4 KiB / huge pages (GB/s)")
    print(f"{'image':<24}{'fill':>5}{'total ms':>10}{'memory ms':>11}{'pages MiB':>11}{'fill GB/s':>11}"
          f"{'1t':>7}{f'{cpus}t':>7}{'1t hp':>7}{f'{cpus}t hp':>7}{'ratio':>7}")
    for r in rows:
        print(f"{r['image']:<24}{r['fill_threads']:>5}{r['total_ms']:>10.1f}{r['memory_ms']:>11.1f}"
              f"{r['pages_bytes'] / 2**20:>11.1f}{r['fill_GBps']:>11.2f}{r['preadv_1t_GBps']:>7.2f}"
              f"{r[f'preadv_{cpus}t_GBps']:>7.2f}{r['preadv_1t_huge_GBps']:>7.2f}"
              f"{r[f'preadv_{cpus}t_huge_GBps']:>7.2f}{r['ratio']:>7.2f}")
    print("ratio: fill GB/s over the preadv limit of its kind (N threads; huge pages for +hg)")
    emit_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
