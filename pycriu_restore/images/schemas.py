"""The compiled image schemas (``proto/*.proto`` -> ``proto/*_pb2.py``), imported in one place.

The ``*_pb2`` modules are build outputs (setup.py compiles them; in a source checkout run
``python tools/build_inplace.py protos``). Importing them here turns a missing build into an
``ImportError`` that says how to fix it, instead of a bare "No module named ..._pb2".

Each module is imported on first use (``from pycriu_restore.images.schemas import core_pb2``,
or ``schemas.core_pb2``; PEP 562): building the message classes of all of them takes longer
than a small restore, and a restore needs the dozen its images hold.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and linters see; at run time, __getattr__ below
    from pycriu_restore.images.proto import (
        amdgpu_pb2,
        apparmor_pb2,
        autofs_pb2,
        binfmt_misc_pb2,
        bpfmap_data_pb2,
        bpfmap_file_pb2,
        cgroup_pb2,
        core_pb2,
        core_x86_pb2,
        cpuinfo_pb2,
        creds_pb2,
        eventfd_pb2,
        eventpoll_pb2,
        ext_file_pb2,
        fdinfo_pb2,
        fh_pb2,
        fifo_pb2,
        file_lock_pb2,
        fown_pb2,
        fs_pb2,
        fsnotify_pb2,
        ghost_file_pb2,
        ids_pb2,
        inventory_pb2,
        ipc_desc_pb2,
        ipc_msg_pb2,
        ipc_sem_pb2,
        ipc_shm_pb2,
        ipc_var_pb2,
        memfd_pb2,
        mm_pb2,
        mnt_pb2,
        net_pb2,
        ns_pb2,
        opts_pb2,
        packet_sock_pb2,
        pagemap_pb2,
        pidfd_pb2,
        pidns_pb2,
        pipe_data_pb2,
        pipe_pb2,
        pstree_pb2,
        regfile_pb2,
        remap_file_path_pb2,
        rlimit_pb2,
        rseq_pb2,
        sa_pb2,
        seccomp_pb2,
        siginfo_pb2,
        signalfd_pb2,
        sk_inet_pb2,
        sk_netlink_pb2,
        sk_opts_pb2,
        sk_queues_pb2,
        sk_unix_pb2,
        stats_pb2,
        tcp_stream_pb2,
        time_pb2,
        timens_pb2,
        timer_pb2,
        timerfd_pb2,
        tty_pb2,
        tun_pb2,
        userns_pb2,
        utsns_pb2,
        vma_pb2,
    )

__all__ = [
    "amdgpu_pb2", "apparmor_pb2", "autofs_pb2", "binfmt_misc_pb2", "bpfmap_data_pb2",
    "bpfmap_file_pb2", "cgroup_pb2", "core_pb2", "core_x86_pb2", "cpuinfo_pb2", "creds_pb2",
    "eventfd_pb2", "eventpoll_pb2", "ext_file_pb2", "fdinfo_pb2", "fh_pb2", "fifo_pb2",
    "file_lock_pb2", "fown_pb2", "fs_pb2", "fsnotify_pb2", "ghost_file_pb2", "ids_pb2",
    "inventory_pb2", "ipc_desc_pb2", "ipc_msg_pb2", "ipc_sem_pb2", "ipc_shm_pb2", "ipc_var_pb2",
    "memfd_pb2", "mm_pb2", "mnt_pb2", "net_pb2", "ns_pb2", "opts_pb2", "packet_sock_pb2",
    "pagemap_pb2", "pidfd_pb2", "pidns_pb2", "pipe_data_pb2", "pipe_pb2", "pstree_pb2",
    "regfile_pb2", "remap_file_path_pb2", "rlimit_pb2", "rseq_pb2", "sa_pb2", "seccomp_pb2",
    "siginfo_pb2", "signalfd_pb2", "sk_inet_pb2", "sk_netlink_pb2", "sk_opts_pb2", "sk_queues_pb2",
    "sk_unix_pb2", "stats_pb2", "tcp_stream_pb2", "time_pb2", "timens_pb2", "timer_pb2",
    "timerfd_pb2", "tty_pb2", "tun_pb2", "userns_pb2", "utsns_pb2", "vma_pb2",
]


def __getattr__(name: str) -> ModuleType:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f"pycriu_restore.images.proto.{name}")
    except ImportError as err:  # pragma: no cover - depends on the build, not on the code
        raise ImportError(
            f"pycrestore's image schemas are not compiled ({err}); "
            "run `python tools/build_inplace.py protos` in the source tree, or reinstall the package"
        ) from err
    globals()[name] = module  # the next lookup is a plain attribute
    return module
