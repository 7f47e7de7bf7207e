"""The restorer blob: the freestanding C code (``restorer_blob/``) a restored task runs last.

==============  =================================================================
abi.py          ctypes mirror of ``restorer_blob/abi.h``: ``BlobArgs`` and the
                structs it points to, entry names, the blob's exit statuses
loader.py       ``restorer.elf`` -> ``Blob``: flat image, symbols, RELATIVE
                relocations applied for any base (pyelftools)
forkrun.py      run the blob in a forked child without ptrace (tests, self-checks)
errors.py       this layer's errors (``BlobMissing``, ``BlobMalformed`` ...)
==============  =================================================================

The package build writes ``restorer.elf`` next to these modules (``restorer_blob/build.py``;
in a source tree ``python tools/build_inplace.py blob``). The orchestrator loads it with
:func:`load_blob`, writes ``blob.image_at(base)`` and a ``BlobArgs`` into the task's
bootstrap region and enters ``restore_task`` through ptrace.
"""

from pycriu_restore.blob.loader import Blob, blob_path, load_blob

__all__ = ["Blob", "blob_path", "load_blob"]
