"""Make a CRIU 4.x checkpoint of a simple task: the other half of pycrestore, for the demo.

A checkpoint is a directory of image files (images/framing.py draws their layout). This
package writes one for a single-threaded task in the dumper's namespaces, with the same
files and fields `criu dump` writes for such a task, so that both `pycrestore restore`
and upstream `criu restore` bring it back:

    seize_stopped(pid)                  stop it where it is (PTRACE_SEIZE + INTERRUPT)
    dump_task(pid, "DIR")               read it from /proc and ptrace, write DIR/*.img

One module per image or concept, in the order a dump needs them:

    procfs.py     /proc/PID files, parsed          ids.py       kernel-object and file ids
    registers.py  gpregs, FPU/XSAVE, TLS           core.py      core-PID.img
    vmas.py       smaps -> VmaEntry                mm.py        mm-PID.img
    files.py      files.img, fdinfo-N.img          fs.py        fs-PID.img
    pages.py      pagemap-PID.img, pages-1.img     pstree.py    pstree.img
    inventory.py  inventory.img                    timens.py    timens-0.img
    stats.py      stats-dump                       checkpoint.py  the whole, in order

Unlike CRIU, nothing runs inside the task (no parasite): what only the task could report
(signal handlers, itimers, sigaltstack) must be at its default, and CannotDump says so
otherwise. errors.py has the rules.
"""

from pycriu_restore.dump.checkpoint import Checkpoint, dump_task, seize_stopped
from pycriu_restore.dump.errors import CannotDump, DumpError

__all__ = ["CannotDump", "Checkpoint", "DumpError", "dump_task", "seize_stopped"]
