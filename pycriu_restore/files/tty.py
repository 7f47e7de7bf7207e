"""Terminals (TTY entries in files.img, tty-info.img, tty-data.img): Unix98 pty pairs.

A pty is a pair: the master, opened through /dev/ptmx, and the slave /dev/pts/N, where N
is the pair's *index*. Only the master can create a pair, and the kernel picks the index
(the lowest free one of the devpts instance), so the pair is recreated as CRIU does it
(criu/tty.c __pty_open_ptmx_index): open the master until TIOCGPTN says the dumped index,
closing the others; unlock it (TIOCSPTLCK 0) so the slave can be opened; set the terminal
state (TIOCSLCKTRMIOS, TCSETS, TIOCSWINSZ, TIOCPKT); open each slave file by its path and
give it its own state; write back the bytes each side had not read; lock again if it was.

Everything of a pair is one shared object, created by the root task before it forks
(files/registry.py, "custom shared objects"), because the slave can only be opened after
the master, whoever holds each: the master, one fd per slave FileEntry, and a *control*
fd on the slave for the session's controlling terminal are parked, and every task dups
what it holds. The controlling terminal is a property of the session, not of an fd: the
session leader takes it (TIOCSCTTY) right after its setsid and before it forks, so its
children inherit it, and the leader of the foreground group sets that group (TIOCSPGRP)
once the group exists (``after_session``, called by restore/task.py). CRIU does the same
from its session leader (tty_restore_ctl_terminal).

A slave whose master is not in the images belongs to a terminal outside the tree: the
shell the program ran from. CRIU restores it only with ``--shell-job``, by giving the tree
its own stdin instead (tty.c pty_open_unpaired_slave); restore/terminals.py checks the
option and hands the caller's terminal over, this module installs it (``CallerTerminal``).

CRIU's image quirk: ``TermiosEntry.c_cc`` is a list of uint32, but criu/tty.c termios_copy
memcpy()s glibc's 32-byte ``c_cc`` array into it, so each word holds four control
characters (little-endian) and the words after the eighth are whatever the heap held (see
the master's entry of criu-4.2-more/ptyjob). CRIU's restore copies the 32 bytes back; the
kernel reads the first 19 (NCCS). So does :func:`_control_chars`.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable

from pycriu_restore.files import install as install_fd, park
from pycriu_restore.files.registry import FdContext, InstallContext, SharedObject, TreeContext
from pycriu_restore.linux import tty as kt
from pycriu_restore.plan.errors import InconsistentImages, UnsupportedFeature

# tty.proto TtyType
TTY_TYPE_PTY = 1
TTY_TYPE_NAMES = {0: "unknown", 1: "pty", 2: "console (/dev/console)", 3: "virtual console", 4: "/dev/tty",
                  5: "external tty (--external)", 6: "serial line"}
# CRIU's TERMIOS_NCC (criu/tty.c): a dumped c_cc list is never shorter.
TERMIOS_NCC = 19
C_CC_BYTES = 32  # glibc's NCCS: the bytes CRIU copies in and out of the word list
# How many masters CRIU opens at most looking for one index (__pty_open_ptmx_index fds[32]).
PTMX_TRIES = 32
# NR_UNIX98_PTY_MAX (drivers/tty/pty.c): no index is this high.
PTY_INDEX_LIMIT = 1 << 20
# File status flags restored with F_SETFL; access mode and O_LARGEFILE come with open().
SETTABLE_FLAGS = os.O_NONBLOCK | os.O_APPEND
ACCESS_MODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
O_LARGEFILE = 0o100000
# Parked keys besides FileEntry ids (which are positive): the control fd of pair N is
# parked under -(N + 1), the caller's terminal under CALLER_KEY.
CALLER_KEY = -(PTY_INDEX_LIMIT + 1)


def control_key(index: int) -> int:
    return -(index + 1)


@dataclass(frozen=True)
class Termios:
    """The kernel's struct termios (linux/tty.py KernelTermios) of one TtyInfoEntry."""

    iflag: int
    oflag: int
    cflag: int
    lflag: int
    line: int
    cc: bytes  # NCCS control characters

    def to_kernel(self) -> kt.KernelTermios:
        t = kt.KernelTermios(c_iflag=self.iflag, c_oflag=self.oflag, c_cflag=self.cflag,
                             c_lflag=self.lflag, c_line=self.line)
        t.c_cc[:] = list(self.cc)
        return t


@dataclass(frozen=True)
class TtyParams:
    """The settings of one side of a terminal (one TtyInfoEntry), applied as CRIU's
    restore_tty_params: locked termios, termios, window size; owner of the slave node."""

    info_id: int
    termios: Termios | None
    termios_locked: Termios | None
    winsize: tuple[int, int, int, int] | None  # rows, cols, xpixel, ypixel
    owner: tuple[int, int] | None  # uid, gid of the /dev/pts node (slaves only)
    exclusive: bool = False


@dataclass(frozen=True)
class PtyFd:
    """One fd on a pty: the master, a slave of a pair in the images, or (``external``) the
    terminal outside the tree that ``--shell-job`` replaces with the caller's."""

    fd: int
    cloexec: bool
    file_id: int
    index: int
    master: bool
    flags: int
    path: str  # the path CRIU recorded (regf_id): /dev/ptmx, /dev/pts/N
    external: bool = False


@dataclass(frozen=True)
class SlaveFile:
    """One open of a pair's slave (one FileEntry): its own open file description."""

    file_id: int
    path: str
    flags: int
    params: TtyParams


@dataclass(frozen=True)
class PtyPair:
    """A pty whose master is in the images: what the root creates before it forks."""

    index: int
    master_file_id: int
    master_path: str
    master_flags: int
    master_params: TtyParams
    slaves: tuple[SlaveFile, ...]
    slave_params: TtyParams | None  # the slave side's settings (None: no slave fd was open)
    control_path: str  # the slave's path, for the controlling terminal
    packet_mode: bool
    locked: bool
    session: int  # the session whose controlling terminal the slave is; 0: none
    foreground: int  # that session's foreground process group; 0: none
    to_slave_reader: bytes = b""  # tty-data of the slave side: written into the master
    to_master_reader: bytes = b""  # tty-data of the master side: written into a slave

    @property
    def has_control(self) -> bool:
        return self.session != 0


@dataclass(frozen=True)
class CallerTerminal:
    """--shell-job: the caller's terminal (its stdin) standing in for the one outside the tree.

    ``held_fd`` is where restore/terminals.py put the caller's terminal before the root was
    forked (the object's parked number, so the root keeps it); None in the plan as built.
    """

    index: int  # the dumped index of the outside terminal, for messages
    path: str
    params: TtyParams
    session: int  # the dumped session of that terminal (outside the tree)
    held_fd: int | None = None


SPECS = (PtyFd,)


# --- plan time -----------------------------------------------------------------------------

def _infos(images: Any) -> dict[int, Any]:
    return {info.id: info for info in images.tty_info()}


def _control_chars(where: str, words: Any) -> bytes:
    """The NCCS control characters from CRIU's word list (the module docstring says why)."""
    if len(words) < TERMIOS_NCC:
        raise InconsistentImages("tty-info.img", f"{where}: c_cc has {len(words)} entries, CRIU writes {TERMIOS_NCC}")
    raw = struct.pack(f"<{C_CC_BYTES // 4}I", *words[:C_CC_BYTES // 4])
    return raw[:kt.NCCS]


def _termios(where: str, entry: Any) -> Termios:
    if entry.c_line > 0xFF:
        raise InconsistentImages("tty-info.img", f"{where}: c_line {entry.c_line} does not fit the kernel's byte")
    return Termios(iflag=entry.c_iflag, oflag=entry.c_oflag, cflag=entry.c_cflag, lflag=entry.c_lflag,
                   line=entry.c_line, cc=_control_chars(where, entry.c_cc))


def _params(info: Any, slave: bool) -> TtyParams:
    """One TtyInfoEntry's settings. As CRIU's verify_info: a master has all three, a slave
    all or none (a hung-up slave has none)."""
    where = f"tty-info entry {info.id}"
    present = [info.HasField(n) for n in ("termios", "termios_locked", "winsize")]
    if not all(present) and (not slave or any(present)):
        raise InconsistentImages("tty-info.img", f"{where}: termios, termios_locked and winsize must all be "
                                 f"present{' or all absent' if slave else ''} (found {present})")
    w = info.winsize
    for name in ("ws_row", "ws_col", "ws_xpixel", "ws_ypixel"):
        if getattr(w, name) > 0xFFFF:
            raise InconsistentImages("tty-info.img", f"{where}: winsize.{name} {getattr(w, name)} is not a u16")
    owner = (info.uid, info.gid) if slave and info.HasField("uid") and info.HasField("gid") else None
    return TtyParams(
        info_id=info.id,
        termios=_termios(f"{where} termios", info.termios) if info.HasField("termios") else None,
        termios_locked=_termios(f"{where} termios_locked", info.termios_locked)
        if info.HasField("termios_locked") else None,
        winsize=(w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel) if info.HasField("winsize") else None,
        owner=owner,
        exclusive=info.exclusive,
    )


def _describe_info(info: Any, where: str) -> tuple[int, bool]:
    """(index, is master) of a pty's TtyInfoEntry; anything but a Unix98 pty is refused."""
    if info.type != TTY_TYPE_PTY:
        raise UnsupportedFeature("tty-info.img", f"{where}: a terminal of type "
                                 f"{TTY_TYPE_NAMES.get(info.type, info.type)} (only ptys are restored)")
    if not info.HasField("pty"):
        raise InconsistentImages("tty-info.img", f"{where}: type PTY without its pty index")
    index = info.pty.index
    if index >= PTY_INDEX_LIMIT:
        raise InconsistentImages("tty-info.img", f"{where}: pty index {index} is above the kernel's {PTY_INDEX_LIMIT}")
    if kt.is_pty_master(info.rdev):
        return index, True
    slave_index = kt.pty_slave_index(info.rdev)
    if slave_index is None:
        raise InconsistentImages("tty-info.img", f"{where}: rdev {os.major(info.rdev)}:{os.minor(info.rdev)} "
                                 "is neither a pty master nor a pty slave")
    if slave_index != index:
        raise InconsistentImages("tty-info.img", f"{where}: pty index {index}, but rdev "
                                 f"{os.major(info.rdev)}:{os.minor(info.rdev)} is the slave of pty {slave_index}")
    return index, False


def _path(files: dict[int, Any], tfe: Any, default: str) -> str:
    if not tfe.HasField("regf_id"):
        return default
    reg = files.get(tfe.regf_id)
    if reg is None or not reg.HasField("reg"):
        raise InconsistentImages("files.img", f"tty file {tfe.id}: regf_id {tfe.regf_id} is not a REG entry")
    return reg.reg.name


def _check_flags(ctx: FdContext, flags: int, what: str) -> None:
    extra = flags & ~(ACCESS_MODE | SETTABLE_FLAGS | O_LARGEFILE)
    if extra:
        raise ctx.refuse(f"{what} with file flags {flags:#o} ({extra:#o} is not restored)")


def read(ctx: FdContext) -> PtyFd:
    if not ctx.entry.HasField("tty"):
        raise ctx.inconsistent("type TTY without its tty payload")
    tfe = ctx.entry.tty
    infos = _infos(ctx.images)
    info = infos.get(tfe.tty_info_id)
    if info is None:
        raise ctx.inconsistent(f"tty_info_id {tfe.tty_info_id} is not in tty-info.img")
    index, master = _describe_info(info, f"pid {ctx.pid} fd {ctx.fd}")
    path = _path(ctx.files, tfe, "/dev/ptmx" if master else f"/dev/pts/{index}")
    what = f"pty {'master' if master else 'slave'} {path} (index {index})"
    _check_flags(ctx, tfe.flags, what)
    external = not master and not _masters_of(ctx.files, infos, index)
    return PtyFd(fd=ctx.fd, cloexec=ctx.cloexec, file_id=ctx.file_id, index=index, master=master,
                 flags=tfe.flags, path=path, external=external)


def _masters_of(files: dict[int, Any], infos: dict[int, Any], index: int) -> list[int]:
    """The TtyInfoEntry ids of the masters in files.img with pty index ``index``."""
    out = []
    for entry in files.values():
        if entry.HasField("tty") and entry.tty.tty_info_id in infos:
            info = infos[entry.tty.tty_info_id]
            if info.type == TTY_TYPE_PTY and info.HasField("pty") and info.pty.index == index \
                    and kt.is_pty_master(info.rdev):
                out.append(info.id)
    return out


def shared(ctx: TreeContext) -> tuple[SharedObject, ...]:
    """One object per pty pair whose master is in the images, plus the caller's terminal if
    a slave's master is outside the tree (restore/terminals.py decides whether that is allowed)."""
    held = [f for t in ctx.tasks for f in t.files if isinstance(f, PtyFd)]
    if not held:
        return ()
    infos = _infos(ctx.images)
    data = _queued_data(ctx.images, infos)
    out: list[SharedObject] = []
    for index in sorted({f.index for f in held}):
        fds = [f for f in held if f.index == index]
        if any(f.external for f in fds):
            out.append(_caller_terminal(ctx, infos, index, fds))
        else:
            out.append(_pair(ctx, infos, data, index, fds))
    externals = [obj for obj in out if isinstance(obj.spec, CallerTerminal)]
    if len(externals) > 1:
        raise UnsupportedFeature("tty-info.img", f"slaves of {len(externals)} ptys whose masters are outside the "
                                 f"tree (indexes {[o.spec.index for o in externals]}); as CRIU, only one "
                                 "terminal can be the caller's (--shell-job)")
    return tuple(out)


def _entry_of(ctx: TreeContext, file_id: int) -> Any:
    return ctx.files[file_id].tty


def _pair(ctx: TreeContext, infos: dict[int, Any], data: dict[int, bytes], index: int,
          fds: list[PtyFd]) -> SharedObject:
    master_ids = sorted({f.file_id for f in fds if f.master})
    all_masters = _masters_of(ctx.files, infos, index)
    if len(set(all_masters)) > 1:
        raise InconsistentImages("tty-info.img", f"pty {index} has {len(set(all_masters))} masters "
                                 f"(tty-info entries {sorted(set(all_masters))}); a pair has one")
    if not master_ids:
        # The master is in files.img (read() found it) but no live task holds it: CRIU
        # would need a task to open it too.
        raise UnsupportedFeature("files.img", f"pty {index}: its master is in the images but held by no task")
    if len(master_ids) > 1:
        raise InconsistentImages("files.img", f"pty {index}: master opened as {len(master_ids)} files "
                                 f"{master_ids}; /dev/ptmx makes a new pair on every open")
    mtfe = _entry_of(ctx, master_ids[0])
    minfo = infos[mtfe.tty_info_id]
    slaves: list[SlaveFile] = []
    slave_info = None
    for file_id in sorted({f.file_id for f in fds if not f.master}):
        stfe = _entry_of(ctx, file_id)
        slave_info = infos[stfe.tty_info_id]
        spec = next(f for f in fds if f.file_id == file_id)
        slaves.append(SlaveFile(file_id=file_id, path=spec.path, flags=stfe.flags, params=_params(slave_info, True)))
    session, foreground = _session_of(minfo, slave_info, index)
    _check_session(ctx, index, session, foreground)
    control_path = slaves[0].path if slaves else f"/dev/pts/{index}"
    slave_params = slaves[0].params if slaves else None
    pair = PtyPair(
        index=index, master_file_id=master_ids[0], master_path=next(f.path for f in fds if f.master),
        master_flags=mtfe.flags, master_params=_params(minfo, False), slaves=tuple(slaves),
        slave_params=slave_params, control_path=control_path, packet_mode=minfo.packet_mode,
        locked=minfo.locked, session=session, foreground=foreground,
        to_slave_reader=data.get(slave_info.id, b"") if slave_info is not None else b"",
        to_master_reader=data.get(minfo.id, b""),
    )
    return SharedObject("TTY", index, 1 + len(slaves) + (1 if pair.has_control else 0), pair)


def _session_of(minfo: Any, sinfo: Any, index: int) -> tuple[int, int]:
    """The session and foreground group of the pair; the master and slave entries must agree
    (both are read from the same tty_struct at dump)."""
    pairs = {(i.sid, i.pgrp) for i in (minfo, sinfo) if i is not None and (i.sid or i.pgrp)}
    if len(pairs) > 1:
        raise InconsistentImages("tty-info.img", f"pty {index}: master and slave disagree on (sid, pgrp): {sorted(pairs)}")
    return next(iter(pairs), (0, 0))


def _check_session(ctx: TreeContext, index: int, session: int, foreground: int) -> None:
    """The session leader must be a live task of the tree, the foreground group's leader too."""
    if not session:
        return
    by_pid = {t.pid: t for t in ctx.tasks}
    leader = by_pid.get(session)
    if leader is None or leader.sid != session or leader.is_zombie:
        raise UnsupportedFeature("tty-info.img", f"pty {index} is the controlling terminal of session {session}, "
                                 "whose leader is not a live task of the images")
    if foreground and foreground != session:
        group_leader = by_pid.get(foreground)
        if group_leader is None or group_leader.pgid != foreground or group_leader.sid != session \
                or group_leader.is_zombie:
            raise UnsupportedFeature("tty-info.img", f"pty {index}: the foreground process group {foreground} of "
                                     f"session {session} has no live leader in the images")


def _caller_terminal(ctx: TreeContext, infos: dict[int, Any], index: int, fds: list[PtyFd]) -> SharedObject:
    info = infos[_entry_of(ctx, fds[0].file_id).tty_info_id]
    spec = CallerTerminal(index=index, path=fds[0].path, params=_params(info, True), session=info.sid)
    return SharedObject("TTY", CALLER_KEY, 1, spec)


def _queued_data(images: Any, infos: dict[int, Any]) -> dict[int, bytes]:
    """tty-data.img: the bytes each side had not read, by TtyInfoEntry id."""
    out: dict[int, bytes] = {}
    for entry in images.tty_data():
        if entry.tty_id not in infos:
            raise InconsistentImages("tty-data.img", f"queued data for tty {entry.tty_id}, which tty-info.img lacks")
        out[entry.tty_id] = out.get(entry.tty_id, b"") + entry.data
    return out


def external_fds(plan: Any) -> list[tuple[int, PtyFd]]:
    """(pid, fd spec) of every fd on a terminal outside the tree."""
    return [(t.pid, f) for t in plan.tasks for f in t.files if isinstance(f, PtyFd) and f.external]


def pairs(plan: Any) -> tuple[PtyPair, ...]:
    return tuple(s for s in plan.shared_of("TTY") if isinstance(s, PtyPair))


# --- in the root, before it forks ------------------------------------------------------------

def parked_keys(obj: SharedObject) -> tuple[int, ...]:
    spec = obj.spec
    if isinstance(spec, CallerTerminal):
        return (CALLER_KEY,)
    keys = [spec.master_file_id, *(s.file_id for s in spec.slaves)]
    if spec.has_control:
        keys.append(control_key(spec.index))
    return tuple(keys)


def create(obj: SharedObject) -> tuple[int, ...]:
    """The object's fds, parked high, in ``parked_keys`` order."""
    if isinstance(obj.spec, CallerTerminal):
        return (_take_caller_terminal(obj.spec),)
    return _create_pair(obj.spec)


def _create_pair(pair: PtyPair) -> tuple[int, ...]:
    made: list[int] = []
    try:
        master = _open_master_at(pair.master_path, pair.master_flags, pair.index)
        made.append(master)
        kt.set_pty_locked(master, False)  # the slave can be opened from now on
        _apply(master, pair.master_params, f"pty {pair.index} master")
        if pair.packet_mode:
            kt.set_packet_mode(master, True)
        slaves = []
        for slave in pair.slaves:
            fd = park(os.open(slave.path, (slave.flags & ACCESS_MODE) | os.O_NOCTTY | os.O_CLOEXEC))
            made.append(fd)
            fcntl.fcntl(fd, fcntl.F_SETFL, slave.flags & SETTABLE_FLAGS)
            _apply(fd, slave.params, f"pty {pair.index} slave {slave.path}")
            slaves.append(fd)
        control = None
        if pair.has_control:
            control = park(os.open(pair.control_path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC))
            made.append(control)
        # Queued bytes, after the settings as in CRIU: written into one side, read from the other.
        if pair.to_master_reader:
            _write_all(slaves[0] if slaves else control, pair.to_master_reader, pair)
        if pair.to_slave_reader:
            _write_all(master, pair.to_slave_reader, pair)
        # Last, once every open is done: exclusive refuses further opens, a lock the slave's.
        if pair.master_params.exclusive:
            kt.set_exclusive(master)
        if pair.slave_params is not None and pair.slave_params.exclusive and slaves:
            kt.set_exclusive(slaves[0])
        if pair.locked:
            kt.set_pty_locked(master, True)
        fcntl.fcntl(master, fcntl.F_SETFL, pair.master_flags & SETTABLE_FLAGS)
        return (master, *slaves, *([control] if control is not None else []))
    except BaseException:
        for fd in made:
            os.close(fd)
        raise


def _open_master_at(path: str, flags: int, index: int) -> int:
    """A new pty master with index ``index``: open ``path`` until TIOCGPTN says so.

    The kernel gives the lowest free index, so lower free ones are taken by the masters
    opened on the way and closed after; a lowest free index above the one wanted means
    it is in use (CRIU: "Unable to open /dev/ptmx with specified index").
    """
    opened: list[int] = []
    try:
        for _ in range(PTMX_TRIES):
            fd = park(os.open(path, (flags & ACCESS_MODE) | os.O_NOCTTY | os.O_CLOEXEC))
            opened.append(fd)
            got = kt.pty_index(fd)
            if got == index:
                return opened.pop()
            if got > index:
                raise RuntimeError(f"pty index {index} is in use: {path} gave index {got} (the lowest free one "
                                   f"is above it); the pty must get its dumped index {index}, so free "
                                   f"/dev/pts/{index} or restore with --pid-ns (a devpts of its own)")
        raise RuntimeError(f"pty index {index}: {PTMX_TRIES} opens of {path} did not reach it")
    finally:
        for fd in opened:
            os.close(fd)


def _apply(fd: int, params: TtyParams, what: str) -> None:
    """CRIU's restore_tty_params: owner, locked termios, termios, window size (in that order:
    the locked bits limit what TCSETS may change, and the size may depend on termios)."""
    try:
        if params.owner is not None:
            os.fchown(fd, *params.owner)
        with kt.job_control_stops_blocked():  # TCSETS from a background group: see set_foreground_group
            if params.termios_locked is not None:
                kt.set_termios(fd, params.termios_locked.to_kernel(), locked=True)
            if params.termios is not None:
                kt.set_termios(fd, params.termios.to_kernel())
        if params.winsize is not None:
            kt.set_winsize(fd, kt.Winsize(*params.winsize))
    except OSError as err:
        raise OSError(err.errno, f"{what}: setting the terminal's state (tty-info {params.info_id}): "
                      f"{err.strerror}") from err


def _write_all(fd: int | None, data: bytes, pair: PtyPair) -> None:
    if fd is None:
        raise AssertionError(f"_write_all: pty {pair.index} has queued data and no open slave")
    view = memoryview(data)
    while view:  # as CRIU: the terminal's buffer held it at dump, so it fits again
        view = view[os.write(fd, view):]


def _take_caller_terminal(term: CallerTerminal) -> int:
    """A dup of the caller's terminal (restore/terminals.py put it at ``held_fd``), with the
    dumped terminal's settings applied, as CRIU's pty_open_unpaired_slave does."""
    if term.held_fd is None:
        raise AssertionError("_take_caller_terminal: the caller's terminal was not handed over (--shell-job)")
    fd = park(os.dup(term.held_fd))
    try:
        _apply(fd, term.params, f"the caller's terminal (for {term.path})")
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- in each task ------------------------------------------------------------------------

def after_session(task: Any, plan: Any, parked: Callable[[str, int], tuple[int, ...]]) -> None:
    """Controlling terminal and foreground group, in the task that owns each.

    Precondition: the task's session and group exist (setsid / setpgid done), the shared
    objects exist, and the task has not forked its children yet (they must inherit the
    controlling terminal, which TIOCSCTTY gives only to the caller).
    """
    for obj in plan.shared:
        if obj.kind != "TTY":
            continue
        spec = obj.spec
        if isinstance(spec, PtyPair) and spec.has_control:
            control = parked("TTY", control_key(spec.index))[0]
            if task.pid == spec.session:
                kt.make_controlling(control)  # sets the foreground group to ours, too
            if spec.foreground and task.pid == spec.foreground and task.pid != spec.session:
                kt.set_foreground_group(control, task.pid)
        elif isinstance(spec, CallerTerminal) and task is plan.root and task.sid != task.pid:
            # CRIU (pty_open_unpaired_slave): a job moved into the caller's session becomes
            # its terminal's foreground group, so that keys reach it and the shell sees it stop.
            kt.set_foreground_group(parked("TTY", CALLER_KEY)[0], os.getpgrp())


def install(spec: PtyFd, ctx: InstallContext) -> None:
    """A dup of the parked pty end (or of the caller's terminal) at ``spec.fd``."""
    key = CALLER_KEY if spec.external else spec.file_id
    parked_fds = ctx.parked("TTY", key)
    if not parked_fds:
        raise AssertionError(f"tty install: fd {spec.fd}: nothing parked under key {key}")
    install_fd(park(os.dup(parked_fds[0])), spec.fd, spec.cloexec)
