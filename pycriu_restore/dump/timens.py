"""timens-0.img: the clocks at dump time (images/timens.proto).

CRIU 4.2 writes it for every dump (criu/timens.c dump_time_ns, id 0 when the task shares
the dumper's time namespace): CLOCK_MONOTONIC and CLOCK_BOOTTIME as they read now. A
restore into a new time namespace sets its offsets so that both clocks continue from
these values.
"""

from __future__ import annotations

import time

from pycriu_restore.images.schemas import timens_pb2

NS_PER_S = 1_000_000_000
# The id in the file name for the dumper's own time namespace.
TIMENS_IMAGE_ID = 0


def timens_entry() -> timens_pb2.TimensEntry:
    """CLOCK_MONOTONIC and CLOCK_BOOTTIME now, as seconds and nanoseconds."""
    entry = timens_pb2.TimensEntry()
    for field, clock in (("monotonic", time.CLOCK_MONOTONIC), ("boottime", time.CLOCK_BOOTTIME)):
        ns = time.clock_gettime_ns(clock)
        getattr(entry, field).CopyFrom(timens_pb2.Timespec(tv_sec=ns // NS_PER_S, tv_nsec=ns % NS_PER_S))
    return entry
