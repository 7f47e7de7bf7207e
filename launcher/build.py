"""Build the ``pycrestore`` command: launcher/launcher.c -> one small executable.

launcher.c says why the command is a C program (it holds the stop signals while Python
starts). The interpreter that runs the package is compiled in, as a console script's
``#!`` line would name it: the Python that runs the build, which for ``pip install`` is the
Python the package is installed for.

Standalone (stdlib only): setup.py and tools/build_inplace.py load this file by path and
call :func:`build`; gcc runs through the blob's build script, so all builds report alike.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

SOURCE_DIR = pathlib.Path(__file__).resolve().parent
SOURCE = SOURCE_DIR / "launcher.c"
BLOB_SOURCE_DIR = SOURCE_DIR.parent / "restorer_blob"

COMPILE_FLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")


def _blob_build():
    """restorer_blob/build.py, loaded by path (this script runs before the package exists)."""
    spec = importlib.util.spec_from_file_location("restorer_blob_build", BLOB_SOURCE_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BLOB_BUILD = _blob_build()
BuildError = _BLOB_BUILD.BuildError


def c_string(text: str) -> str:
    """text as a C string literal for -D (backslashes and quotes escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build(out_path: pathlib.Path, *, python: str = sys.executable, cc: str = "gcc") -> None:
    """Compile launcher.c into out_path, mode 0755, running ``python`` (an absolute path).

    out_path is replaced only when gcc succeeds. Raises BuildError.
    """
    if not pathlib.Path(python).is_absolute():
        raise BuildError(f"the launcher needs an absolute interpreter path, not {python!r}")
    _BLOB_BUILD.compile_to(pathlib.Path(out_path),
                           [*COMPILE_FLAGS, f"-DPYCRESTORE_PYTHON={c_string(python)}", str(SOURCE)],
                           cc=cc, mode=0o755, what="the pycrestore launcher")


if __name__ == "__main__":
    build(SOURCE_DIR.parent / "build" / "launcher" / "pycrestore")
