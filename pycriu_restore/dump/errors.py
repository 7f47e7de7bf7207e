"""Errors of the dump layer: a checkpoint that could not be taken, and why.

    DumpError          /proc or ptrace gave something unexpected, or an image could not
                       be written (names the file or pid and the cause)
    CannotDump         the task uses something this dumper does not record (signal
                       handlers, threads, sockets ...): names the pid and the feature

pycrestore's dumper reads a task from outside only (/proc, ptrace), where CRIU also runs
code inside it (a parasite). What only the inside can see - signal handler addresses,
itimers, sigaltstack - is therefore checked to be at its default, and CannotDump says so
otherwise, rather than writing a checkpoint that would restore something else.
"""

from __future__ import annotations

from pycriu_restore.errors import EXIT_UNSUPPORTED, PycrestoreError


class DumpError(PycrestoreError):
    """Taking the checkpoint failed: a /proc file, a ptrace request or a write."""


class CannotDump(DumpError):
    """The task uses a feature this dumper does not record; nothing was written."""

    exit_code = EXIT_UNSUPPORTED
