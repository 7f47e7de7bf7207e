"""Kernel objects several tasks share: created once by the root task, inherited by the rest.

A pipe between two restored tasks must be *one* pipe; a MAP_SHARED memfd must be *one*
memfd; fds that several tasks got from one open() before fork must share *one* file offset.
CRIU sends such fds between tasks over unix sockets. pycrestore's tree is created by fork
from the root, so it is enough that the root creates every shared object before it forks:
each object sits at fixed "parked" fds (the same numbers in every task, above every fd of
the images and every task's service fds: files/fdlayout.py), each task dups what it needs
to its own fd numbers, then closes them all. Which objects exist, and how each is made, is
up to the kind modules (files/registry.py: ``shared`` and ``create``).

    root:  create all ──► fork children ──► install own fds ──► close parked
    child:                (inherits all) ─► fork its children ► install own ► close parked
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pycriu_restore.files import registry
from pycriu_restore.files.fdlayout import FdLayout
from pycriu_restore.plan.model import RestorePlan


@dataclass(frozen=True)
class SharedFds:
    """The parked fds of every shared object, by (kind, key); the same numbers in every task,
    and the plan-wide fd ranges (``layout``) they were placed by."""

    fds: dict[tuple[str, int], tuple[int, ...]] = field(default_factory=dict)
    layout_: FdLayout | None = None

    @staticmethod
    def layout(plan: RestorePlan) -> SharedFds:
        """Assign parked numbers to every shared object of the plan (no side effect)."""
        fd_layout = FdLayout.of(plan, sum(obj.nr_fds for obj in plan.shared))
        next_fd = fd_layout.parked_base
        out: dict[tuple[str, int], tuple[int, ...]] = {}
        for obj in plan.shared:
            kind = registry.kind_for(obj.kind)
            assert kind is not None, f"SharedFds.layout: no kind module for {obj.kind}"
            numbers = tuple(range(next_fd, next_fd + obj.nr_fds))
            next_fd += obj.nr_fds
            keys = kind.parked_keys(obj)
            assert len(keys) == obj.nr_fds, f"SharedFds.layout: {obj.kind} {obj.key}: {len(keys)} keys for {obj.nr_fds} fds"
            for key, number in zip(keys, numbers):
                out[(obj.kind, key)] = out.get((obj.kind, key), ()) + (number,)
        assert next_fd <= fd_layout.status_fd, "SharedFds.layout: parked fds overlap the status fd"
        return SharedFds(fds=out, layout_=fd_layout)

    def get(self, kind: str, key: int) -> tuple[int, ...]:
        """The parked fds of one object, or () if it is not shared (the task makes its own)."""
        return self.fds.get((kind, key), ())

    @property
    def all(self) -> list[int]:
        return sorted(fd for fds in self.fds.values() for fd in fds)

    @property
    def fd_layout(self) -> FdLayout:
        assert self.layout_ is not None, "SharedFds.fd_layout: made without SharedFds.layout"
        return self.layout_

    # Views by kind, for readers of the older attributes.
    @property
    def memfds(self) -> dict[int, int]:
        return {key: fds[0] for (kind, key), fds in self.fds.items() if kind == "MEMFD"}


def create_shared_objects(plan: RestorePlan, parked: SharedFds) -> None:
    """In the root task, before any fork: create each shared object at its parked fds."""
    for obj in plan.shared:
        kind = registry.kind_for(obj.kind)
        assert kind is not None, f"create_shared_objects: no kind module for {obj.kind}"
        temps = kind.create(obj)
        keys = kind.parked_keys(obj)
        taken: dict[int, int] = {}
        for key, temp in zip(keys, temps):
            index = taken.get(key, 0)
            taken[key] = index + 1
            _park_at(temp, parked.get(obj.kind, key)[index])


def close_parked(parked: SharedFds) -> None:
    for fd in parked.all:
        try:
            os.close(fd)
        except OSError:
            pass


def _park_at(fd: int, number: int) -> None:
    os.dup2(fd, number, inheritable=False)
    os.close(fd)
