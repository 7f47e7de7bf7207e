"""python -m pycriu_restore, and the ``pycrestore`` script: the command line of cli.py.

The stop-signal handlers (interruption.py) are installed before anything else is
imported: a Ctrl-C while click and the restore code load ends in one line and exit 130,
not in a KeyboardInterrupt traceback.
"""

from pycriu_restore import interruption


def main() -> None:
    interruption.install()
    try:
        from pycriu_restore.cli import main as cli_main
    except interruption.Interrupted as err:  # while the imports ran
        import sys

        print(f"pycrestore: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    cli_main()


if __name__ == "__main__":
    main()
