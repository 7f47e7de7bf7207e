"""Pagemap images: which pages of a task (or of a shared memory object) were dumped, and where.

``pagemap-<pid>.img`` (and ``pagemap-shmem-<shmid>.img``) hold a PagemapHead naming the
pages image, then one PagemapEntry per run of pages::

    pagemap-N.img                          pages-<pages_id>.img
    head: pages_id ----------------------> +--------------------+ offset 0
    entry: vaddr A, 2 pages, PRESENT ----> | A, A+4096          |
    entry: vaddr B, 5 pages, LAZY|PRESENT> | B .. B+4*4096      | offset 2*4096
    entry: vaddr C, 1 page, PARENT         | (in a parent dump, no bytes here)
    entry: vaddr D, 3 pages, 0 (zero)      | (no bytes: the pages are zero)

Runs with PE_PRESENT take the next ``nr_pages`` pages of the pages image, in file order;
runs without it take none. Entries are read one at a time (``iter_entries``): a large
process has hundreds of thousands of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pycriu_restore.images.errors import BadRecord, MissingImage
from pycriu_restore.images.framing import iter_records
from pycriu_restore.images.kinds import ImageKind
from pycriu_restore.images.schemas import pagemap_pb2

# CRIU's criu/include/pagemap.h: PagemapEntry.flags bits.
PE_PARENT = 1 << 0   # the pages are in the parent (pre-dump) images
PE_LAZY = 1 << 1     # the pages may be restored lazily (userfaultfd); the data is still here
PE_PRESENT = 1 << 2  # the pages' data is in this dump's pages image

PAGE_SIZE = 4096


def entry_nr_pages(entry: pagemap_pb2.PagemapEntry) -> int:
    """The length of a run in pages: ``nr_pages``, or the legacy ``compat_nr_pages``."""
    return entry.nr_pages if entry.HasField("nr_pages") else entry.compat_nr_pages


class PagemapImage:
    """A pagemap file: the head read at open, the entries read on demand.

    A missing file is an empty pagemap (``exists`` False, ``pages_id`` None, no entries), as
    CRIU treats it: the task has no dumped pages.
    """

    def __init__(self, path: str | os.PathLike[str], kind: ImageKind) -> None:
        """Read the head record of ``path``. Raises ImageError subclasses for a bad file."""
        self.path = os.fspath(path)
        self._kind = kind
        self.exists = True
        self.pages_id: int | None = None
        records = iter_records(self.path, kind)
        try:
            head = next(records, None)
        except MissingImage:
            self.exists = False
            return
        finally:
            records.close()
        if head is None:
            raise BadRecord(self.path, "pagemap has no PagemapHead record")
        self.pages_id = head.message.pages_id

    def iter_entries(self) -> Iterator[pagemap_pb2.PagemapEntry]:
        """Yield the PagemapEntry records in file order, reading the file as it goes."""
        if not self.exists:
            return
        records = iter_records(self.path, self._kind)
        next(records)  # the head, read in __init__
        for record in records:
            yield record.message

    def entries(self) -> list[pagemap_pb2.PagemapEntry]:
        """Every PagemapEntry, as a list."""
        return list(self.iter_entries())
