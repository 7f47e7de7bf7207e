"""A caller's fd in place of a restored file: CRIU's ``--inherit-fd fd[N]:RESOURCE``.

Some files of a checkpoint cannot, or should not, be re-created from the images: the pipe
a container runtime connected to the container's stdout, a log file opened on another
host. The caller opens the replacement itself and names the file it stands for by the
RESOURCE string CRIU gives that file (``file_desc_ops.name``: ``pipe:[INO]`` for a pipe,
``socket:[INO]`` for a unix socket, the path without its leading "/" for a regular file,
``file[MNT:INODE]`` for one dumped with --external; the kind modules' ``inherit_key``).
Every fd of the tree whose file has that name then gets a dup of the caller's fd, as it
is: no data written back into a pipe or a socket's queue, no offset or flags set, as CRIU
does (criu/files.c: inherited_fd; criu/pipes.c and criu/sk-unix.c skip an inherited
object's data).

How the fd travels: the orchestrator holds the caller's fd N (``pycrestore`` inherited it,
or swrk's client passed it as runc does). Before the root task is cloned it is duplicated
above every number of the fd layout (``hand_over``), so the root inherits it where no
image fd, service fd or parked object can land; the root parks a dup of it with the other
shared objects (``create``) and closes the hand-over copy before it forks, and each task
dups from the parked number as for any shared object (restore/shared.py).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable

from pycriu_restore.files import install as install_fd, park
from pycriu_restore.files.registry import FdContext, InstallContext, SharedObject, TreeContext
from pycriu_restore.plan.model import InheritedFile

SPECS = (InheritedFile,)

# RESOURCE -> the hand-over copy of the caller's fd, in the orchestrator and (inherited
# through clone) in the root task until it has parked its own dup.
_handed_over: dict[str, int] = {}


def read(ctx: FdContext) -> InheritedFile:  # pragma: no cover - the plan builds these itself
    raise AssertionError("files/inherited.py: InheritedFile is made by the plan (plan/build.py), not read")


def shared(ctx: TreeContext) -> tuple[SharedObject, ...]:
    """One object per RESOURCE some fd of the tree inherits, keyed by the spec's index."""
    used = {f.index: f.key for t in ctx.tasks for f in t.files if isinstance(f, InheritedFile)}
    return tuple(SharedObject("INHERITED", index, 1, key) for index, key in sorted(used.items()))


def hand_over(fds: dict[str, int], lowest: int) -> None:
    """In the orchestrator, before the root is cloned: copy each caller fd (RESOURCE -> fd)
    to a number >= ``lowest`` (above the fd layout), close-on-exec."""
    release()
    try:
        for key, fd in fds.items():
            try:
                _handed_over[key] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
            except OSError as err:  # EBADF: not open; EINVAL/EMFILE: RLIMIT_NOFILE below ``lowest``
                raise OSError(err.errno, f"--inherit-fd fd[{fd}]:{key}: cannot copy fd {fd} to a number "
                                         f">= {lowest} for the root task: {err.strerror}") from err
    except BaseException:
        release()
        raise


def handed_over() -> Iterable[int]:
    """The hand-over copies: the root keeps them until ``create`` has run."""
    return tuple(_handed_over.values())


def release() -> None:
    """Close the hand-over copies: in the orchestrator once the root exists, in the root once
    its shared objects are parked (its children must not inherit them)."""
    while _handed_over:
        _, fd = _handed_over.popitem()
        try:
            os.close(fd)
        except OSError:
            pass


def create(obj: SharedObject) -> tuple[int]:
    """In the root task: a parked dup of the caller's fd for RESOURCE ``obj.spec``."""
    key: str = obj.spec
    if key not in _handed_over:
        raise OSError(f"--inherit-fd {key}: the caller's fd was not handed to the root task")
    return (park(os.dup(_handed_over[key])),)


def install(spec: InheritedFile, ctx: InstallContext) -> None:
    """A dup of the parked caller fd at ``spec.fd``, with the image's close-on-exec."""
    (parked,) = ctx.parked("INHERITED", spec.index)
    install_fd(park(os.dup(parked)), spec.fd, spec.cloexec)
