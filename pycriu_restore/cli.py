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
from typing import Any, Callable, NoReturn

import click

from pycriu_restore import interruption
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
  130, 143, 129  stopped by SIGINT, SIGTERM, SIGHUP (128 + the signal);
     every task restored so far was killed, as after a failure
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
        except OSError as err:  # a system call no layer named: still one line, not a traceback
            if verbose:
                traceback.print_exc()
            click.echo(f"pycrestore: error: {err}", err=True)
            sys.exit(EXIT_FAILURE)

    return wrapper


class _Group(click.Group):
    """The command group; a stop signal ends any command with one line and 128 + signo.

    The handlers (interruption.py) hold from here on; ``python -m pycriu_restore`` and the
    ``pycrestore`` script install them earlier still, before the imports (__main__.py).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # CRIU's -v0..-v4 (log levels: 0-1 errors, 2 warnings, 3 info, 4 debug), anywhere on
        # the line as criu takes it, become our -v count, which belongs before the command.
        levels = [int(a[2]) for a in args if len(a) == 3 and a.startswith("-v") and a[2] in "01234"]
        if levels:
            args = ["-v"] * max(0, levels[-1] - 2) + [a for a in args if not (len(a) == 3 and a.startswith("-v")
                                                                             and a[2] in "01234")]
        return super().parse_args(ctx, args)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        with interruption.handlers():
            try:
                return super().main(*args, **kwargs)
            except interruption.Interrupted as err:
                click.echo(f"pycrestore: {err}", err=True)
                sys.exit(err.exit_code)


@click.group(cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
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
              help="amdgpu plugin: each task waits for its GPU memory to be filled before it restores "
                   "its host memory (the serial, pre-gCROP way).")
@click.option("--cpu-cap", "cpu_cap", default="fpu", show_default=True, metavar="CAP[,CAP]",
              help="What the CPU check compares, as CRIU's: fpu (refuse XSAVE state this CPU cannot hold), "
                   "ins and cpu (also the dump CPU's capability words, from cpuinfo.img), all, none (no check).")
@click.option("--tcp-established", is_flag=True,
              help="Restore ESTABLISHED TCP connections (TCP repair), as CRIU's; without it they are refused.")
@click.option("--shell-job", is_flag=True,
              help="As CRIU's: the tree ran on a terminal and in a session outside it (dumped with --shell-job); "
                   "it gets this process's session and its stdin terminal.")
@click.option("--external", "external", multiple=True, metavar="KEY[...]:VALUE",
              help="As CRIU's: veth[IFNAME]:HOSTNAME re-creates the tree's veth IFNAME with its peer "
                   "HOSTNAME in this network namespace (docs/netns.md). Repeatable.")
@click.option("--restore-sibling", is_flag=True,
              help="As CRIU's: the restored root becomes a child of pycrestore's parent (CLONE_PARENT), not of pycrestore.")
@click.option("--root", "root", type=click.Path(file_okay=False),
              help="As CRIU's: every path of the images is looked up under DIR, which becomes the tasks' / "
                   "(images without a mount namespace; docs/embedding.md).")
@click.option("--inherit-fd", "inherit_fd", multiple=True, metavar="fd[N]:RESOURCE",
              help="As CRIU's: our fd N takes the place of the file RESOURCE: pipe:[INO], socket:[INO] (a unix "
                   "socket), file[MNT:INODE] (an --external file), or a regular file's path without the leading / "
                   "(quote the brackets from the shell). Repeatable.")
@click.option("--orphan-pts-master", is_flag=True, help="As CRIU's. Not supported yet: refused.")
@click.option("-W", "--work-dir", type=click.Path(file_okay=False),
              help="As CRIU's: where stats-restore is written (not written without -W or --display-stats).")
@click.option("--display-stats", is_flag=True,
              help="As CRIU's: print the restore statistics (stats-restore, in the work dir: -W, else the images dir).")
@_reports_errors
def restore(images_dir: str, restore_detached: bool, pid_ns: bool, pidfile: str | None, log_file: str | None,
            gpu_backend: str, no_parallel_gpu_restore: bool, cpu_cap: str, tcp_established: bool,
            shell_job: bool, external: tuple[str, ...], restore_sibling: bool, root: str | None,
            inherit_fd: tuple[str, ...], orphan_pts_master: bool, work_dir: str | None, display_stats: bool) -> None:
    """Restore the processes checkpointed in IMAGES_DIR, with their pids, memory and files.

    Needs root. Without -d, pycrestore stays the parent of the restored root task and
    exits with its exit status, as `criu restore` does.
    """
    from pycriu_restore import api
    from pycriu_restore.restore.cpucap import parse_cpu_cap

    try:
        parse_cpu_cap(cpu_cap)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--cpu-cap") from err
    inherited = [_parse_inherit_fd(spec) for spec in inherit_fd]
    verbose = click.get_current_context().find_root().params.get("verbose", 0)
    _setup_logging(verbose, log_file)
    stats_dir = work_dir or (images_dir if display_stats else None)
    restored = api.restore(images_dir, pid_ns=pid_ns, gpu_backend=gpu_backend, parallel_gpu=not no_parallel_gpu_restore,
                           cpu_cap=cpu_cap, tcp_established=tcp_established, shell_job=shell_job, external=external,
                           restore_sibling=restore_sibling, root=root, inherit_fd=inherited,
                           orphan_pts_master=orphan_pts_master, work_dir=stats_dir, pidfile=pidfile, isolate=False)
    root_pid = restored.root_pid
    if display_stats:  # as CRIU's display_stats(): the counters of stats-restore, one per line
        s = restored.stats
        click.echo(f"Restore stats:\n  pages_compared: {s.pages_compared}\n  pages_skipped_cow: {s.pages_skipped_cow}\n"
                   f"  forking_time: {s.forking_time_us}\n  restore_time: {s.restore_time_us}\n"
                   f"  pages_restored: {s.pages_restored}", err=True)
    where = f" (pid namespace init {restored.init_pid})" if pid_ns else ""
    logging.getLogger("pycrestore").info("restored task %d%s in %.1f ms", root_pid, where, restored.total_ms)
    root = root_pid
    if interruption.received():  # a stop signal the restore could not act on: it ran to its end
        click.echo(f"pycrestore: {interruption.Interrupted(interruption.received())} after the restore: "
                   f"task {root} keeps running", err=True)
        sys.exit(interruption.exit_code(interruption.received()))
    if restore_detached:
        _exit_without_teardown(0)
    try:
        interruption.reopen()
        _, status = os.waitpid(root, 0)
    except interruption.Interrupted as err:  # the restore is done: the tree is not ours to stop
        click.echo(f"pycrestore: {err} while waiting for task {root}, which keeps running", err=True)
        sys.exit(err.exit_code)
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
@click.argument("fd", type=int)
def swrk(fd: int) -> None:
    """Serve CRIU's RPC on the socket at FD (what runc, go-criu and pycriu start: `criu swrk FD`).

    Answers RESTORE, VERSION, CHECK and FEATURE_CHECK; refuses every other request in its
    response. docs/embedding.md says how to point a container runtime at pycrestore.
    """
    from pycriu_restore.rpc import serve_swrk

    verbose = click.get_current_context().find_root().params.get("verbose", 0)
    _setup_logging(verbose, None)
    sys.exit(serve_swrk(fd))


def _exit_without_teardown(code: int) -> NoReturn:
    """End the command now that the tree runs detached, skipping the interpreter's teardown.

    Tearing down the modules and objects a restore loaded costs ~30 ms, a sizeable part of a
    small restore's wall time (benchmarks/criu_bench.py), and nothing in it matters once the
    tasks run on their own: the atexit handlers (logging's flush among them) run first and
    the standard streams are flushed, then os._exit.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _parse_inherit_fd(spec: str) -> Any:
    """CRIU's fd[N]:RESOURCE (criu/crtools.c, inherit_fd_parse)."""
    from pycriu_restore.api import InheritFd

    head, sep, resource = spec.partition(":")
    if not (sep and head.startswith("fd[") and head.endswith("]") and head[3:-1].isdigit() and resource):
        raise click.BadParameter(f"{spec!r}: expected fd[N]:RESOURCE", param_hint="--inherit-fd")
    return InheritFd(fd=int(head[3:-1]), resource=resource)


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
