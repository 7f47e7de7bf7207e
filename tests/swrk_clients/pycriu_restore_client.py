"""A restore through pycriu, CRIU's own Python RPC client (Debian's criu package ships it).

Run with Debian's /usr/bin/python3 (its python3-protobuf is what pycriu was generated for):
    pycriu_restore_client.py [--notify] CRIU_PATH IMAGES_DIR [WORK_DIR]
pycriu forks and execs CRIU_PATH as `CRIU_PATH swrk FD` (use_binary), with fds 0-2 closed.
Prints "version MAJOR.MINOR", "check ok", then "restored PID" or "error ..." (exit 1).

pycriu's ``criu.restore()`` sends one request and reads one answer, so it cannot take part
in notifications. With --notify the restore goes as CRIU's own rpc tests drive it, still
entirely through pycriu: its transport (``_criu_comm_bin`` starts the binary) and its
generated schema (``pycriu.rpc``, CRIU's rpc.proto); each NOTIFY answered with
notify_success, printed as "notify SCRIPT [PID]", before the final RESTORE answer.
"""

import os
import socket
import sys

import pycriu

args = sys.argv[1:]
notify = args[0] == "--notify"
if notify:
    args = args[1:]
criu_path, images_dir = args[0], args[1]
work_dir = args[2] if len(args) > 2 else None
c = pycriu.criu()
c.use_binary(criu_path)


def restore_with_notifications(opts):
    """RESTORE with notify_scripts over pycriu's transport; returns the criu_restore_resp."""
    rpc = pycriu.rpc
    req = rpc.criu_req()
    req.type = rpc.RESTORE
    req.opts.MergeFrom(opts)
    req.opts.notify_scripts = True
    sk = c._comm.connect(False)
    try:
        sk.send(req.SerializeToString())
        while True:
            buf = sk.recv(len(sk.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK)))
            resp = rpc.criu_resp()
            resp.ParseFromString(buf)
            if resp.type != rpc.NOTIFY:
                break
            pid = f" {resp.notify.pid}" if resp.notify.HasField("pid") and resp.notify.pid else ""
            print(f"notify {resp.notify.script}{pid}", flush=True)
            answer = rpc.criu_req()
            answer.type = rpc.NOTIFY
            answer.notify_success = True
            sk.send(answer.SerializeToString())
    finally:
        c._comm.disconnect()
    if not resp.success:
        raise pycriu.CRIUExceptionExternal(req.type, resp.type, resp.cr_errno)
    return resp.restore


try:
    version = c.get_criu_version() if hasattr(c, "get_criu_version") else None
    if version is not None:
        print(f"version {version}")
    c.check()
    print("check ok")
    c.opts.images_dir_fd = os.open(images_dir, os.O_DIRECTORY)
    c.opts.rst_sibling = True  # the root becomes our child: the test waits for it
    if work_dir is not None:
        c.opts.work_dir_fd = os.open(work_dir, os.O_DIRECTORY)
        c.opts.log_file = "restore.log"
        c.opts.log_level = 4
    resp = restore_with_notifications(c.opts) if notify else c.restore()
except pycriu.CRIUException as err:
    print(f"error {err}")
    sys.exit(1)
print(f"restored {resp.pid}", flush=True)
