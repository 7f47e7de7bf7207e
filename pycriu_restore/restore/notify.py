"""CRIU's notify points of a restore: the moments a caller may act while tasks are held.

CRIU calls them "action scripts" (criu/action-scripts.c, ``action_names``): a shell script
given with ``--action-script``, or, over RPC with ``notify_scripts``, a ``criu_notify``
message that the client must answer before the restore goes on. pycrestore sends the same
names at the matching moments of its own stages (restore/timeline.py):

    pre-restore            before the first fork (nothing exists yet)
    setup-namespaces       every task exists, stopped (FORK done); carries the root's pid
    post-setup-namespaces  right after: a client's namespace set-up is finished
    post-restore           every blob has run (MEMORY done); carries the root's pid
    network-unlock         only when the images hold a network namespace (CRIU's order)
    pre-resume             registers are the application's, tasks still held (RESUME)
    post-resume            the tasks run, detached

A failure at the first four aborts the restore (every task is killed), as in CRIU's
restore_root_task; at pre-resume and post-resume CRIU only logs it, and so do the callers
of this module (api.py, rpc/service.py).
"""

from __future__ import annotations

import enum


class Notify(str, enum.Enum):
    """One notify point; the value is CRIU's name for it (criu/action-scripts.c)."""

    PRE_RESTORE = "pre-restore"
    SETUP_NAMESPACES = "setup-namespaces"
    POST_SETUP_NAMESPACES = "post-setup-namespaces"
    POST_RESTORE = "post-restore"
    NETWORK_LOCK = "network-lock"
    NETWORK_UNLOCK = "network-unlock"
    PRE_RESUME = "pre-resume"
    POST_RESUME = "post-resume"


# CRIU's restore_root_task logs a failed script at these points and goes on.
NON_FATAL = frozenset({Notify.PRE_RESUME, Notify.POST_RESUME, Notify.NETWORK_UNLOCK})

# Points at which CRIU's notify message carries the root task's pid (cr-service.c,
# send_criu_rpc_script: ACT_SETUP_NS and ACT_POST_RESTORE).
CARRIES_PID = frozenset({Notify.SETUP_NAMESPACES, Notify.POST_RESTORE})
