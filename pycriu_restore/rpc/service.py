"""``pycrestore swrk FD``: CRIU's RPC protocol, as runc, go-criu and pycriu speak it.

A client makes a ``SOCK_SEQPACKET`` socketpair, starts ``<binary> swrk <fd>`` with one end
and sends ``criu_req`` messages on the other (images/proto/rpc.proto; one message per
packet). CRIU's side is criu/cr-service.c; what is done here, as there:

- Every request gets one ``criu_resp`` of the same type (EMPTY for one that cannot be
  parsed). A failure is ``success = false`` with ``cr_errno`` and ``cr_errmsg``: the
  socket is never simply dropped.
- Fd numbers in the request (``images_dir_fd``, ``work_dir_fd``) are the *client's*: they
  are reached as ``/proc/<peer pid>/fd/N``, the peer found with SO_PEERCRED (no SCM_RIGHTS).
- With ``notify_scripts`` the restore sends a ``criu_resp`` of type NOTIFY at each notify
  point (restore/notify.py), with ``notify.pid`` at setup-namespaces and post-restore, and
  waits for the client's ``criu_req`` of type NOTIFY with ``notify_success``.
- With ``rst_sibling`` the restored root is made with CLONE_PARENT: the client's child.
- ``keep_open`` keeps the connection for another request (not after RESTORE, as CRIU).

The restore itself is ``pycriu_restore.api.restore``: this module only translates.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from typing import Any

from pycriu_restore.errors import (EXIT_BAD_IMAGE, EXIT_ENVIRONMENT, EXIT_RESTORE, EXIT_UNSUPPORTED,
                                   PycrestoreError)

log = logging.getLogger("pycrestore")

try:
    from pycriu_restore.images.proto import rpc_pb2
except ImportError as err:  # pragma: no cover - a source checkout without its build
    raise ImportError(f"{err}: the schemas are not compiled; run `python tools/build_inplace.py protos`") from err

# The CRIU version pycrestore answers VERSION with: the image format it restores (CRIU 4.2).
# runc and go-criu compare it (major * 10000 + minor * 100 + sublevel) with their minimum.
VERSION_MAJOR = 4
VERSION_MINOR = 2
VERSION_NAME = "pycrestore"

# A request larger than this is refused (CRIU reads the size with MSG_PEEK|MSG_TRUNC; we bound it).
MAX_REQUEST_BYTES = 1 << 20

# <bits/socket.h>: struct ucred (pid, uid, gid), what SO_PEERCRED returns.
_UCRED = struct.Struct("3i")

# cr_errno for each of our exit-code categories: CRIU puts an errno there (criu/cr-errno.h).
_CR_ERRNO = {EXIT_BAD_IMAGE: errno.EBADMSG, EXIT_UNSUPPORTED: errno.ENOTSUP,
             EXIT_ENVIRONMENT: errno.EEXIST, EXIT_RESTORE: errno.EIO}

# criu_opts fields that a restore by pycrestore does not need: set or not, nothing changes.
IGNORED_OPTS = {
    "pid": "dump only: the task to dump",
    "leave_running": "dump only",
    "ext_unix_sk": "dump only in CRIU 4 (external sockets are named with --external at restore)",
    "evasive_devices": "dump only",
    "file_locks": "file locks in the images are refused by the plan (files/) whatever this says",
    "log_to_stderr": "the log goes to stderr anyway when no log_file is given",
    "manage_cgroups": "cgroups are not restored: cgroup.img is checked by the plan",
    "manage_cgroups_mode": "cgroups are not restored: cgroup.img is checked by the plan",
    "cg_root": "cgroups are not restored",
    "cgroup_props": "cgroups are not restored",
    "cgroup_props_file": "cgroups are not restored",
    "cgroup_dump_controller": "dump only",
    "cgroup_yard": "cgroups are not restored",
    "freeze_cgroup": "dump only",
    "timeout": "dump only (freezing timeout)",
    "tcp_skip_in_flight": "dump only",
    "ghost_limit": "dump only",
    "irmap_scan_paths": "dump only",
    "force_irmap": "dump only",
    "link_remap": "dump only",
    "track_mem": "dump only",
    "auto_dedup": "dump only",
    "pre_dump_mode": "dump only",
    "network_lock": "TCP connections are locked with nftables (files/inet_lock.py) whatever the method",
    "weak_sysctls": "no namespace sysctls are restored",
    "skip_file_rwx_check": "restored files are checked by the plan",
    "log_level": "sets the log file's level (0-4)",
    "log_file": "the log file, in the work dir",
    "images_dir_fd": "the images",
    "images_dir": "the images",
    "work_dir_fd": "the work dir",
    "notify_scripts": "the notify points",
    "rst_sibling": "CLONE_PARENT",
    "shell_job": "--shell-job",
    "tcp_established": "--tcp-established",
    "cpu_cap": "--cpu-cap",
    "display_stats": "--display-stats",
    "root": "--root",
    "inherit_fd": "--inherit-fd: the fd numbers are ours (the client passes them to its child, as runc does)",
    "external": "--external (refused by the API)",
    "orphan_pts_master": "--orphan-pts-master (refused by the API)",
    "mntns_compat_mode": "no mount namespace is restored",
    "config_file": "pycrestore reads no configuration file",
}


class RpcError(PycrestoreError):
    """A request pycrestore cannot serve (answered with success = false, never dropped)."""

    exit_code = EXIT_UNSUPPORTED


def serve_swrk(fd: int) -> int:
    """Serve requests on the socket at ``fd`` (the client's end of a SEQPACKET socketpair)
    until one without keep_open, RESTORE, or the client's end of file; return an exit status."""
    sk = socket.socket(fileno=fd)
    try:
        peer = _peer_pid(sk)
        while True:
            req = _recv_request(sk)
            if req is None:
                return 0  # the client closed its end: nothing more to answer
            resp, keep = _handle(sk, req, peer)
            sk.send(resp.SerializeToString())
            if req.type == rpc_pb2.RESTORE:
                return 0 if resp.success else 1
            if not (keep and resp.success):
                return 0 if resp.success else 1
    finally:
        sk.close()


def _peer_pid(sk: socket.socket) -> int:
    """The client's pid (SO_PEERCRED: for a socketpair, the process that made it)."""
    pid, _uid, _gid = _UCRED.unpack(sk.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid


def _recv_request(sk: socket.socket) -> Any | None:
    """One criu_req, None at end of file, or an EMPTY-typed placeholder for garbage."""
    data = sk.recv(MAX_REQUEST_BYTES)
    if not data:
        return None
    req = rpc_pb2.CriuReq()
    try:
        req.ParseFromString(data)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError, wrapped at the protocol's edge
        return _Garbage(f"request of {len(data)} bytes is not a criu_req: {err}")
    return req


class _Garbage:
    """A packet that did not parse: answered with type EMPTY, as CRIU's send_criu_err."""

    type = rpc_pb2.EMPTY
    keep_open = False

    def __init__(self, why: str) -> None:
        self.why = why


def _handle(sk: socket.socket, req: Any, peer: int) -> tuple[Any, bool]:
    """The response to one request, and whether the connection stays open."""
    resp = rpc_pb2.CriuResp(type=req.type, success=False)
    try:
        if isinstance(req, _Garbage):
            raise RpcError(req.why)
        if req.type == rpc_pb2.VERSION:
            resp.version.major_number = VERSION_MAJOR
            resp.version.minor_number = VERSION_MINOR
            resp.version.sublevel = 0
            resp.version.name = VERSION_NAME
        elif req.type == rpc_pb2.CHECK:
            _check()
        elif req.type == rpc_pb2.FEATURE_CHECK:
            # The three features are dump-side (memory tracking, pidfd store) or lazy pages,
            # which pycrestore does not do: all false, and success, as CRIU answers.
            resp.features.mem_track = False
            resp.features.lazy_pages = False
            resp.features.pidfd_store = False
        elif req.type == rpc_pb2.RESTORE:
            resp.restore.pid = _restore(sk, req.opts, peer)
        else:
            name = rpc_pb2.CriuReqType.Name(req.type) if req.type in rpc_pb2.CriuReqType.values() else str(req.type)
            raise RpcError(f"request {name}: pycrestore restores only (it serves RESTORE, VERSION, CHECK, "
                           "FEATURE_CHECK)")
        resp.success = True
    except PycrestoreError as err:
        log.error("swrk: %s", err)
        resp.cr_errno = _CR_ERRNO.get(err.exit_code, errno.EINVAL)
        resp.cr_errmsg = f"{err} (pycrestore exit code {err.exit_code})"
        if req.type == rpc_pb2.RESTORE:
            resp.restore.pid = -1  # required in criu_restore_resp; CRIU sends -1 too
    except Exception as err:  # noqa: BLE001 - a bug still gets an answer, never a dropped socket
        log.exception("swrk: internal error")
        resp.success = False
        resp.cr_errno = errno.EINVAL
        resp.cr_errmsg = f"pycrestore internal error: {type(err).__name__}: {err}"
        if req.type == rpc_pb2.RESTORE:
            resp.restore.pid = -1
    return resp, bool(getattr(req, "keep_open", False)) and req.type != rpc_pb2.RESTORE


def _check() -> None:
    """CHECK: can this machine restore at all (root for set_tid and ptrace, clone3 present)?"""
    if os.geteuid() != 0:
        raise RpcError(f"check: pycrestore runs as uid {os.geteuid()}; restoring needs root (clone3 set_tid, ptrace)")
    from pycriu_restore.blob.loader import load_blob

    load_blob()  # the restorer blob is built and sound (BlobError, exit 6, otherwise)


def _client_path(peer: int, fd: int, what: str) -> str:
    """The client's fd ``fd`` as a path we can open: /proc/<peer>/fd/<fd>, resolved if it can be."""
    link = f"/proc/{peer}/fd/{fd}"
    try:
        target = os.readlink(link)
    except OSError as err:
        raise RpcError(f"{what} {fd}: the client's (pid {peer}) fd cannot be read at {link}: {err.strerror}") from err
    # A path that still names the same directory is stabler than /proc (the client may close it).
    if target.startswith("/") and os.path.isdir(target) and os.path.samestat(os.stat(target), os.stat(link)):
        return target
    return link


def _restore(sk: socket.socket, opts: Any, peer: int) -> int:
    """RESTORE: translate criu_opts into the API's options, restore, return the root's pid."""
    from pycriu_restore.api import InheritFd
    from pycriu_restore.api import restore as api_restore

    _refuse_unknown(opts)
    if opts.images_dir_fd != -1:
        images_dir = _client_path(peer, opts.images_dir_fd, "images_dir_fd")
    elif opts.HasField("images_dir"):
        images_dir = opts.images_dir
    else:
        raise RpcError("restore: neither images_dir_fd nor images_dir was given")
    work_dir = _client_path(peer, opts.work_dir_fd, "work_dir_fd") if opts.HasField("work_dir_fd") else None
    handler = _log_handler(opts, work_dir or images_dir)

    def notify(point: str, pid: int | None) -> None:
        msg = rpc_pb2.CriuResp(type=rpc_pb2.NOTIFY, success=True)
        msg.notify.script = point
        if pid is not None:
            msg.notify.pid = pid
        sk.send(msg.SerializeToString())
        answer = _recv_request(sk)
        if answer is None:
            raise RpcError(f"notify {point}: the client closed the connection instead of answering")
        if answer.type != rpc_pb2.NOTIFY or not answer.notify_success:
            # The API logs it and goes on at pre-resume/post-resume, aborts elsewhere.
            raise RuntimeError(f"the RPC client reported the {point} script failed")
        log.debug("swrk: notify %s answered", point)

    try:
        cpu_cap = _cpu_cap_words(opts.cpu_cap) if opts.HasField("cpu_cap") else "fpu"
        result = api_restore(
            images_dir, pid_ns=False, cpu_cap=cpu_cap, tcp_established=opts.tcp_established,
            shell_job=opts.shell_job, restore_sibling=opts.rst_sibling,
            root=opts.root if opts.HasField("root") else None,
            inherit_fd=[InheritFd(fd=i.fd, resource=i.key) for i in opts.inherit_fd],
            external=list(opts.external), orphan_pts_master=opts.orphan_pts_master,
            work_dir=work_dir, on_notify=notify if opts.notify_scripts else None, isolate=False)
        if opts.display_stats:
            log.warning("restore statistics: %s", result.stats)
        return result.root_pid
    finally:
        if handler is not None:
            logging.getLogger("pycrestore").removeHandler(handler)
            handler.close()


def _refuse_unknown(opts: Any) -> None:
    """Refuse a request that sets an option pycrestore would otherwise silently drop: every
    criu_opts field not in IGNORED_OPTS (parent_img, exec_cmd, join_ns, lazy_pages, leave_stopped,
    status_fd, tls, ...) changes what a restore does, so set to other than its default it is
    refused, naming the field."""
    for desc, value in opts.ListFields():
        if desc.name in IGNORED_OPTS:
            continue
        repeated = desc.is_repeated
        if (repeated and not value) or (not repeated and value == desc.default_value):
            continue
        raise RpcError(f"restore: option {desc.name} = {_short(value)} is not supported by pycrestore")


def _short(value: Any) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _cpu_cap_words(bits: int) -> str:
    """criu_opts.cpu_cap (CRIU's CPU_CAP_* bits, 0xffffffff when the client did not choose)
    as the words the API takes."""
    from pycriu_restore.restore.cpucap import CPU_CAP_NAMES, CpuCap

    if bits == 0xFFFFFFFF:
        return "fpu"  # CRIU's default policy
    words = [name for name, cap in CPU_CAP_NAMES.items() if cap not in (CpuCap.NONE, CpuCap.ALL) and bits & cap.value]
    return ",".join(words) or "none"


# CRIU's log levels (criu/include/log.h: LOG_MSG 0, LOG_ERROR 1, LOG_WARN 2, LOG_INFO 3, LOG_DEBUG 4).
_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG}


def _log_handler(opts: Any, directory: str) -> logging.Handler | None:
    """With log_file: a handler writing the log there (relative to the work dir, as CRIU)."""
    if not opts.HasField("log_file"):
        return None
    if "/" in opts.log_file:
        raise RpcError(f"log_file {opts.log_file!r}: no subdirectories are allowed (as CRIU); use work_dir_fd")
    level = _LOG_LEVELS.get(max(0, min(opts.log_level, 4)), logging.WARNING)
    handler = logging.FileHandler(os.path.join(directory, opts.log_file))
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("pycrestore")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler

