"""``pycrestore demo``: checkpoint a running program and restore it, on any machine.

The program (demo_program/demo.c, built into ``demo-program`` beside this file) counts
ticks and checks a memory page and the xmm15 register on every tick. The demo starts it,
checkpoints it at tick N with pycrestore's own dumper (pycriu_restore/dump/), kills it,
restores it with the ordinary restore (restore/orchestrator.py), and shows it going on
from tick N+1 with both checks passing. run.py has the steps; program.py the program.
"""

from pycriu_restore.demo.errors import DemoError
from pycriu_restore.demo.program import PROGRAM_PATH
from pycriu_restore.demo.run import DemoResult, run_demo

__all__ = ["PROGRAM_PATH", "DemoError", "DemoResult", "run_demo"]
