"""python -m pycriu_restore, and the ``pycrestore`` script: the command line of cli.py.

The stop-signal handlers (interruption.py) are installed before anything else is
imported: a Ctrl-C while click and the restore code load ends in one line and exit 130,
not in a KeyboardInterrupt traceback. The ``pycrestore`` command is a small C launcher
(launcher/launcher.c) that holds those signals while Python itself starts, and runs this.
"""

from pycriu_restore import interruption


def main() -> None:
    try:
        interruption.install()  # raises for a signal the launcher held during start-up
        from pycriu_restore.cli import main as cli_main
    except interruption.Interrupted as err:  # while the imports ran
        import sys

        print(f"pycrestore: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    # Usage lines say "pycrestore", not "python -m pycriu_restore", when run as the command.
    cli_main(prog_name="pycrestore" if interruption.launched() else None)


if __name__ == "__main__":
    main()
