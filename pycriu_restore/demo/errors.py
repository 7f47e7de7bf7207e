"""Why a demo could not run: one line naming what this machine lacks or what went wrong."""

from __future__ import annotations

from pycriu_restore.errors import EXIT_BUILD, EXIT_ENVIRONMENT, EXIT_RESTORE, PycrestoreError


class DemoError(PycrestoreError):
    """The demo program misbehaved: it exited, printed BAD, or did not continue."""

    exit_code = EXIT_RESTORE


class DemoUnavailable(DemoError):
    """This machine cannot run the demo: not root, ptrace disabled, and such."""

    exit_code = EXIT_ENVIRONMENT


class DemoProgramMissing(DemoError):
    """The demo program was not built with the package (a packaging problem)."""

    exit_code = EXIT_BUILD
