"""pycrestore: restore Linux processes from CRIU 4.x checkpoint images.

The library's entry is one function::

    import pycriu_restore
    result = pycriu_restore.restore("/path/to/images", tcp_established=True,
                                    on_notify=lambda point, pid: print(point, pid))
    print(result.root_pid, result.pids, result.timings_ms, result.stats)

(api.py says what it does with threads, asyncio and callbacks.) Errors are
:class:`PycrestoreError` subclasses; ``err.exit_code`` is the CLI's exit code for them.

``pycriu_restore.restore`` is also the subpackage of the orchestrator (restore/orchestrator.py,
tree.py, ...): so that both work, that package module is made callable here (its calls go to
:func:`pycriu_restore.api.restore`, whose signature it shows). Type checkers see a module:
typed code may call ``pycriu_restore.api.restore``, the same function.
"""

import inspect as _inspect
import types as _types

import pycriu_restore.restore as _restore_package
from pycriu_restore.api import (
    InheritFd,
    NotifyFailed,
    OptionUnsupported,
    RestoreResult,
    RestoreStats,
)
from pycriu_restore.api import restore as _restore_function
from pycriu_restore.errors import PycrestoreError


class _CallablePackage(_types.ModuleType):
    """The ``pycriu_restore.restore`` package, callable as the library's entry point."""

    def __call__(self, images_dir, **options):  # type: ignore[no-untyped-def]
        return _restore_function(images_dir, **options)


_restore_package.__class__ = _CallablePackage
_restore_package.__signature__ = _inspect.signature(_restore_function)  # type: ignore[attr-defined]
_restore_package.__doc__ = _restore_function.__doc__

__all__ = ["restore", "RestoreResult", "RestoreStats", "InheritFd", "NotifyFailed", "OptionUnsupported",
           "PycrestoreError"]
