"""The root of pycrestore's error families, and the exit code each family maps to.

Every layer has its own family (``ImageError`` in images/, ``PlanError`` in plan/,
``RestoreError`` in restore/ ...), all derived from :class:`PycrestoreError`. A family
wraps foreign exceptions (``OSError``, protobuf's ``DecodeError``) at its layer's edge with
``raise ... from err``, and prints as one line that names the object and the cause::

    files.img: offset 812: record of 5000 bytes runs past the end of the file (3000 bytes)

The CLI prints ``str(err)`` and exits with ``err.exit_code``; ``-v`` adds the traceback.
"""

from __future__ import annotations


class PycrestoreError(Exception):
    """Base of every error pycrestore raises on purpose (bad input, failed restore).

    A broken internal invariant is an ``AssertionError`` instead: that is a bug, not input.
    Subclasses set ``exit_code`` so that each family exits with a distinct status.
    """

    exit_code: int = 1

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        # Context such as pid=412 or image="core-412.img", printed after the message.
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        if not self.context:
            return self.message
        ctx = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({ctx})"


# Exit codes, one per family (documented in the CLI's --help and in docs/errors.md).
EXIT_OK = 0
EXIT_FAILURE = 1       # PycrestoreError without a more specific family
EXIT_BAD_IMAGE = 2     # ImageError: the checkpoint images are unreadable or inconsistent
EXIT_UNSUPPORTED = 3   # a feature the images use that pycrestore cannot restore
EXIT_ENVIRONMENT = 4   # the machine does not match the images (pid in use, file changed)
EXIT_RESTORE = 5       # the restore itself failed (a task died, a syscall failed)
EXIT_BUILD = 6         # the restorer blob is missing or malformed (a packaging problem)
