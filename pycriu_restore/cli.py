"""The ``pycrestore`` command line: a thin shell over the library.

Every command turns a :class:`~pycriu_restore.errors.PycrestoreError` into one line on
stderr and that error's exit code; ``-v`` adds the traceback. Nothing else lives here:
the work is done by ``images/``, ``summary.py`` and (later) ``restore/``.
"""

from __future__ import annotations

import functools
import json
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
    """pycrestore: restore Linux processes from CRIU 4.x checkpoint images."""


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


if __name__ == "__main__":  # python -m pycriu_restore.cli
    main()
