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

import types as _types

import pycriu_restore.restore as _restore_package
from pycriu_restore.errors import PycrestoreError

# Loaded on first use (PEP 562): `pycrestore` installs its signal handlers right after this
# package is imported (__main__.py), and a Ctrl-C before that is CPython's traceback.
_API_NAMES = ("InheritFd", "NotifyFailed", "OptionUnsupported", "RestoreResult", "RestoreStats")


def __getattr__(name: str) -> object:
    if name in _API_NAMES:
        from pycriu_restore import api

        return getattr(api, name)
    raise AttributeError(f"module 'pycriu_restore' has no attribute {name!r}")


class _CallablePackage(_types.ModuleType):
    """The ``pycriu_restore.restore`` package, callable as the library's entry point."""

    def __call__(self, images_dir, **options):  # type: ignore[no-untyped-def]
        from pycriu_restore.api import restore

        return restore(images_dir, **options)

    @property
    def __signature__(self):  # type: ignore[no-untyped-def]
        import inspect

        from pycriu_restore.api import restore

        return inspect.signature(restore)

    @property
    def __doc__(self):  # type: ignore[no-untyped-def,override]
        from pycriu_restore.api import restore

        return restore.__doc__


_restore_package.__class__ = _CallablePackage

__all__ = ["restore", *_API_NAMES, "PycrestoreError"]
