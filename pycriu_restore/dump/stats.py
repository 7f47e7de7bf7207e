"""stats-dump: how the dump went (images/stats.proto, a service image CRIU always writes).

Times are microseconds, as CRIU counts them: freezing (seize and stop the task), frozen
(from stopped to images written), memdump (choosing and reading pages), memwrite
(writing pages-1.img). Pages: scanned in private areas, written, lazy (0: no lazy-pages
daemon), one page pipe.
"""

from __future__ import annotations

from pycriu_restore.images.schemas import stats_pb2


def dump_stats(*, freezing_us: int, frozen_us: int, memdump_us: int, memwrite_us: int,
               pages_scanned: int, pages_written: int, page_pipe_bufs: int) -> stats_pb2.StatsEntry:
    """A StatsEntry with the dump counters filled in."""
    entry = stats_pb2.StatsEntry()
    entry.dump.CopyFrom(stats_pb2.DumpStatsEntry(
        freezing_time=freezing_us, frozen_time=frozen_us, memdump_time=memdump_us,
        memwrite_time=memwrite_us, pages_scanned=pages_scanned, pages_skipped_parent=0,
        pages_written=pages_written, irmap_resolve=0, pages_lazy=0, page_pipes=1,
        page_pipe_bufs=page_pipe_bufs, shpages_scanned=0, shpages_skipped_parent=0,
        shpages_written=0))
    return entry
