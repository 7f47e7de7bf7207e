#!/usr/bin/env python3
"""Restore wall time and page-fill throughput, side by side with the physical limit.

    python benchmarks/restore_bench.py [--big-gib 2] [--repeat 3] [--json out.json]

For each image (counter, pymem, and "big": counter's images plus a multi-GiB anonymous VMA
with all its pages, written through the image layer's encoder), it restores with the
library API and reads the stage durations from the timeline; in the same run it measures
the limit: one preadv of the same pages file into fresh anonymous memory, from the page
cache. The ratio (blob fill rate / preadv rate) is what the target (>= 90%) is about.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FIXTURES = Path(os.environ.get("PYCRESTORE_FIXTURES", REPO.parent / "shared" / "fixtures" / "criu-4.2"))

from pycriu_restore.images import dump_image, load_image  # noqa: E402
from pycriu_restore.images.image import Image  # noqa: E402
from pycriu_restore.restore.orchestrator import restore  # noqa: E402
from pycriu_restore.restore.timeline import Stage  # noqa: E402

PAGE = 4096
BIG_VMA_START = 0x100000000000  # free in counter's layout (below its executable)
PAGES_PER_ENTRY = 256  # CRIU splits pagemap entries at 256 pages (research/feasibility-spike.md)


def make_big_images(dst: Path, gib: float) -> int:
    """Copy counter's images and add a ``gib`` GiB anonymous VMA whose every page is dumped."""
    shutil.copytree(FIXTURES / "images" / "counter", dst)
    nr_pages = int(gib * (1 << 30)) // PAGE
    mm = load_image(dst / "mm-31100.img")
    template = next(v for v in mm.entries[0].vmas if v.status == (1 | 1 << 9) and v.prot == 3)
    vmas = mm.entries[0].vmas
    big = vmas.add()
    big.CopyFrom(template)
    big.start, big.end = BIG_VMA_START, BIG_VMA_START + nr_pages * PAGE
    ordered = sorted(list(vmas), key=lambda v: v.start)
    del vmas[:]
    vmas.extend(ordered)
    (dst / "mm-31100.img").write_bytes(dump_image(mm))

    pm = load_image(dst / "pagemap-31100.img")
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
    (dst / "pagemap-31100.img").write_bytes(dump_image(rebuilt))
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


def preadv_limit(pages_path: Path) -> tuple[float, int]:
    """Seconds for one preadv pass of the whole file into fresh anonymous memory."""
    size = pages_path.stat().st_size
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    fd = os.open(pages_path, os.O_RDONLY)
    try:
        view = memoryview(buf)
        start = time.perf_counter()
        done = 0
        while done < size:
            done += os.preadv(fd, [view[done:]], done)
        seconds = time.perf_counter() - start
        view.release()
    finally:
        os.close(fd)
        buf.close()
    return seconds, size


def warm(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def restore_once(images: Path, install_name: str) -> dict:
    subprocess.run([str(FIXTURES / "install.sh"), install_name], check=True, capture_output=True)
    start = time.perf_counter()
    restored = restore(str(images))
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
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        big = Path(tmp) / "big"
        make_big_images(big, args.big_gib)
        cases = [("counter", FIXTURES / "images" / "counter", "counter"),
                 ("pymem", FIXTURES / "images" / "pymem", "pymem"),
                 (f"counter+{args.big_gib:g}GiB", big, "counter")]
        for label, images, install_name in cases:
            pages_file = images / "pages-1.img"
            warm(pages_file)
            runs = [restore_once(images, install_name) for _ in range(args.repeat)]
            limits = [preadv_limit(pages_file) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["total_ms"])
            limit_s = min(s for s, _ in limits)
            size = limits[0][1]
            fill_gbps = (best["pages"] * PAGE) / (best["memory_ms"] / 1000) / 1e9
            limit_gbps = size / limit_s / 1e9
            rows.append({"image": label, "pages_bytes": size, **best,
                         "fill_GBps": fill_gbps, "preadv_GBps": limit_gbps, "ratio": fill_gbps / limit_gbps})
    print(f"{'image':<18}{'total ms':>10}{'memory ms':>11}{'pages MiB':>11}{'fill GB/s':>11}{'preadv GB/s':>13}{'ratio':>8}")
    for r in rows:
        print(f"{r['image']:<18}{r['total_ms']:>10.1f}{r['memory_ms']:>11.1f}{r['pages_bytes'] / 2**20:>11.1f}"
              f"{r['fill_GBps']:>11.2f}{r['preadv_GBps']:>13.2f}{r['ratio']:>8.2f}")
    emit_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
