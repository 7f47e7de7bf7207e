"""The restorer blob: the freestanding C code (``restorer_blob/``) a restored task runs last.

==================  ==============================================================
abi.py              ctypes mirror of ``restorer_blob/abi.h``: ``BlobArgs`` and the
                    structs it points to, flags, step ids, the status record
bootstrap.py        plan + running task -> ``Bootstrap``: the whole region (blob,
                    args, vdso park, one signal frame and one stack per thread)
                    as bytes, with its addresses; ``RuntimeLayout``; the diagram
sigframe.py         a thread's rt_sigframe (registers, mask, sigaltstack)
xsave.py            the frame's XSAVE area (legacy region, header, components)
sigframe_layout.py  ctypes mirrors of the kernel's sigcontext/ucontext/_fpstate
cpuid.py            CPUID from Python; this CPU's XSAVE component offsets
status.py           ``decode_status``: the blob's status record, in words
loader.py           ``restorer.elf`` -> ``Blob``: flat image, symbols, RELATIVE
                    relocations applied for any base (pyelftools)
forkrun.py          run the blob in a forked child without ptrace (tests)
errors.py           this layer's errors (``BlobMissing``, ``VdsoMismatch`` ...)
==================  ==============================================================

The orchestrator calls :func:`build_bootstrap` for a stopped task, maps
``bootstrap_size`` bytes at the chosen base, writes ``Bootstrap.image`` there and enters
the blob; at each thread's int3 it reads that thread's record at
``Bootstrap.thread_status_addrs[i]`` (entry 0: ``status_addr``, the leader's) and decodes it
with :func:`decode_status` (restorer_blob/abi.h, "status protocol" and "Threads").
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers see; at run time, __getattr__ below
    from pycriu_restore.blob.bootstrap import Bootstrap, RuntimeLayout, bootstrap_size, build_bootstrap
    from pycriu_restore.blob.loader import Blob, blob_path, load_blob
    from pycriu_restore.blob.status import BlobStatus, decode_status

# Each name is imported from its module on first use (PEP 562), so that importing one module
# of this package (cpuid.py for the CPU check, abi.py, loader.py at build time) does not load
# bootstrap.py and, through it, the plan and the image schemas.
_EXPORTS = {
    "Bootstrap": "bootstrap", "RuntimeLayout": "bootstrap", "bootstrap_size": "bootstrap",
    "build_bootstrap": "bootstrap", "Blob": "loader", "blob_path": "loader", "load_blob": "loader",
    "BlobStatus": "status", "decode_status": "status",
}


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Blob", "BlobStatus", "Bootstrap", "RuntimeLayout", "blob_path", "bootstrap_size",
           "build_bootstrap", "decode_status", "load_blob"]
