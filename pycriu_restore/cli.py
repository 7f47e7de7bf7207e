"""The ``pycrestore`` command line: a thin shell over the library.

Every command turns a :class:`~pycriu_restore.errors.PycrestoreError` into one line on
stderr and that error's exit code; ``-v`` adds the traceback. Nothing else lives here:
the work is done by ``images/``, ``summary.py`` and (later) ``restore/``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from typing import Any, Callable

import click

from pycriu_restore.errors import EXIT_FAILURE, PycrestoreError

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  other failure
  2  bad or missing image (names the file, offset and cause)
  3  the images use a feature pycrestore cannot restore
  4  the machine does not match the images (pid in use, file changed)
  5  the restore failed (a task died, a syscall failed)
  6  the restorer blob is missing or malformed (a packaging problem)
"""


def _reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; print a PycrestoreError as one line and exit with its code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        verbose = ctx.find_root().params.get("verbose", 0)
        try:
            return func(*args, **kwargs)
        except PycrestoreError as err:
            if verbose:
                traceback.print_exc()
            click.echo(f"pycrestore: error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More detail; -v also prints tracebacks on errors.")
@click.version_option(package_name="pycrestore")
def main(verbose: int) -> None:
    """pycrestore: restore Linux processes from CRIU 4.x checkpoint images.

    \b
    pycrestore demo [--ticks N] [--keep DIR]     checkpoint and restore a demo program
    pycrestore restore -D DIR [-d] [--pid-ns]   bring a checkpoint back to life
    pycrestore info DIR                          what a checkpoint holds
    pycrestore show FILE / encode               one image file as JSON and back
    """


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.File("w"), default="-", help="Write the JSON here (default: stdout).")
@_reports_errors
def show(image: str, output: Any) -> None:
    """Print one image file as JSON, in the shape of CRIU's `crit show`.

    Hex fields print as "0x..." strings, flag fields as "A | B", enums by name.
    `pycrestore encode` turns the JSON back into the identical image.
    """
    from pycriu_restore.images import image_to_dict, load_image

    json.dump(image_to_dict(load_image(image)), output, indent=4)
    output.write("\n")


@main.command()
@click.option("-i", "--input", "input_", type=click.File("r"), default="-", help="JSON from `show` (default: stdin).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Image file to write.")
@_reports_errors
def encode(input_: Any, output: str) -> None:
    """Turn `pycrestore show` JSON back into a binary image file, byte for byte."""
    from pycriu_restore.images import dict_to_image, dump_image

    try:
        data = json.load(input_)
    except json.JSONDecodeError as err:
        raise PycrestoreError(f"{input_.name}: not JSON: {err}") from err
    blob = dump_image(dict_to_image(data))
    with open(output, "wb") as f:
        f.write(blob)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--section",
    type=click.Choice(["all", "ps", "fds", "mems"]),
    default="all",
    help="Only one part: ps (process tree), fds (open files), mems (memory map).",
)
@_reports_errors
def info(directory: str, section: str) -> None:
    """Summarise a checkpoint: process tree, threads, memory, open files.

    The ps, fds and mems sections print the same listings as `crit x DIR ps|fds|mems`;
    `all` adds a short overview with sizes and page counts.
    """
    from pycriu_restore.images import ImageSet
    from pycriu_restore.summary import render

    click.echo(render(ImageSet.open(directory), section), nl=False)


@main.command()
@click.option("-D", "--images-dir", required=True, type=click.Path(file_okay=False), help="The checkpoint directory.")
@click.option("-d", "--restore-detached", is_flag=True, help="Return once the tasks run (default: wait for the root task and exit with its status).")
@click.option("--pid-ns", is_flag=True, help="Restore in a new pid namespace under a small init, so pids cannot collide.")
@click.option("--pidfile", type=click.Path(dir_okay=False), help="Write the restored root task's pid here (as seen from this namespace).")
@click.option("-o", "--log-file", type=click.Path(dir_okay=False), help="Also write the log (one line per restore phase, with its duration) here.")
@click.option("--gpu-backend", type=click.Choice(["kfd", "sim"]), default="kfd", show_default=True,
              help="amdgpu plugin: the real /dev/kfd, or the simulated device (simgpu).")
@click.option("--no-parallel-gpu-restore", is_flag=True,
              help="amdgpu plugin: fill GPU memory in the task, before its host memory (the serial, pre-gCROP way).")
@click.option("--cpu-cap", "cpu_cap", default="fpu", show_default=True, metavar="CAP[,CAP]",
              help="What the CPU check compares, as CRIU's: fpu (refuse XSAVE state this CPU cannot hold), "
                   "ins and cpu (also the dump CPU's capability words, from cpuinfo.img), all, none (no check).")
@click.option("--tcp-established", is_flag=True,
              help="Restore ESTABLISHED TCP connections (TCP repair), as CRIU's; without it they are refused.")
@click.option("--shell-job", is_flag=True,
              help="As CRIU's: the tree ran on a terminal and in a session outside it (dumped with --shell-job); "
                   "it gets this process's session and its stdin terminal.")
@_reports_errors
def restore(images_dir: str, restore_detached: bool, pid_ns: bool, pidfile: str | None, log_file: str | None,
            gpu_backend: str, no_parallel_gpu_restore: bool, cpu_cap: str, tcp_established: bool,
            shell_job: bool) -> None:
    """Restore the processes checkpointed in IMAGES_DIR, with their pids, memory and files.

    Needs root. Without -d, pycrestore stays the parent of the restored root task and
    exits with its exit status, as `criu restore` does.
    """
    from pycriu_restore.restore.cpucap import parse_cpu_cap
    from pycriu_restore.restore.orchestrator import RestoreOptions
    from pycriu_restore.restore.orchestrator import restore as do_restore

    try:
        caps = parse_cpu_cap(cpu_cap)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--cpu-cap") from err
    verbose = click.get_current_context().find_root().params.get("verbose", 0)
    _setup_logging(verbose, log_file)
    restored = do_restore(images_dir, RestoreOptions(pid_ns=pid_ns, gpu_backend=gpu_backend,
                                                     parallel_gpu=not no_parallel_gpu_restore,
                                                     cpu_cap=caps, tcp_established=tcp_established,
                                                     shell_job=shell_job))
    root = restored.root_pid
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{root}\n")
    where = f" (pid {restored.plan.root.pid} in its pid namespace, init {restored.init_pid})" if pid_ns else ""
    logging.getLogger("pycrestore").info("restored task %d%s in %.1f ms", root, where, restored.timeline.total_ms)
    if restore_detached:
        return
    _, status = os.waitpid(root, 0)
    sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


@main.command()
@click.option("--ticks", "ticks", type=click.IntRange(min=1), default=5, show_default=True,
              help="Checkpoint the program at this tick.")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the checkpoint (and the program's output file) in this new or empty directory.")
@_reports_errors
def demo(ticks: int, keep: str | None) -> None:
    """Checkpoint a small running program and restore it: no images needed.

    Starts pycrestore's demo program (it counts, and checks a memory page and the xmm15
    register on every tick), checkpoints it at tick N in CRIU 4.x format with pycrestore's
    own dumper, kills it, restores it, and shows it going on from tick N+1. Needs root.
    Leaves nothing running and, without --keep, nothing on disk.
    """
    import pathlib

    from pycriu_restore.demo import run_demo

    run_demo(ticks, pathlib.Path(keep) if keep else None, echo=click.echo)


@main.command()
@_reports_errors
def plugins() -> None:
    """List the installed restore plugins (entry point group pycrestore.plugins)."""
    from pycriu_restore.plugins.api import installed_plugins

    found = installed_plugins()
    if not found:
        click.echo("no plugins installed")
    for p in found:
        click.echo(f"{p.name:<12} {p.target:<50} {p.description}")


def _setup_logging(verbose: int, log_file: str | None) -> None:
    """-v: phase lines on stderr; -vv: debug detail; -o FILE: the same lines (at least phases) in FILE."""
    logger = logging.getLogger("pycrestore")
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    fmt = logging.Formatter("pycrestore: %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)


if __name__ == "__main__":  # python -m pycriu_restore.cli
    main()
