"""python -m pycriu_restore: the same as the pycrestore command."""

from pycriu_restore.cli import main

main()
