"""A restore through pycriu, CRIU's own Python RPC client (Debian's criu package ships it).

Run with Debian's /usr/bin/python3 (its python3-protobuf is what pycriu was generated for):
    pycriu_restore_client.py CRIU_PATH IMAGES_DIR [WORK_DIR]
pycriu forks and execs CRIU_PATH as `CRIU_PATH swrk FD` (use_binary), with fds 0-2 closed.
Prints "version MAJOR.MINOR", "check ok", then "restored PID" or "error ..." (exit 1).
"""

import os
import sys

import pycriu

criu_path, images_dir = sys.argv[1], sys.argv[2]
c = pycriu.criu()
c.use_binary(criu_path)
try:
    version = c.get_criu_version() if hasattr(c, "get_criu_version") else None
    if version is not None:
        print(f"version {version}")
    c.check()
    print("check ok")
    c.opts.images_dir_fd = os.open(images_dir, os.O_DIRECTORY)
    c.opts.rst_sibling = True  # the root becomes our child: the test waits for it
    if len(sys.argv) > 3:
        c.opts.work_dir_fd = os.open(sys.argv[3], os.O_DIRECTORY)
        c.opts.log_file = "restore.log"
        c.opts.log_level = 4
    resp = c.restore()
except pycriu.CRIUException as err:
    print(f"error {err}")
    sys.exit(1)
print(f"restored {resp.pid}", flush=True)
