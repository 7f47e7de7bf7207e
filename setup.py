"""Package build: compiles the two non-Python parts of pycrestore.

1. The image schemas (``pycriu_restore/images/proto/*.proto``) into ``*_pb2.py`` modules,
   with grpcio-tools' protoc (a build requirement in pyproject.toml).
2. The restorer blob (``restorer_blob/*.c``) into ``pycriu_restore/blob/restorer.elf``, with
   the system gcc (``restorer_blob/build.py`` says how and why), and beside it the blob as
   a restore loads it, ``restorer.elf.prepared.json`` (``pycriu_restore/blob/loader.py``).
3. The demo program (``demo_program/demo.c``) into ``pycriu_restore/demo/demo-program``,
   the same way (``demo_program/build.py``): what ``pycrestore demo`` checkpoints.
4. The ``pycrestore`` command (``launcher/launcher.c``, ``launcher/build.py``): a small C
   program, installed as a script, that holds the stop signals while Python starts and
   then runs ``python -m pycriu_restore`` (launcher.c says why).

Both land in the build tree for a normal ``pip install .``; for an editable install
(``pip install -e .``) they are written into the source tree, where the package then finds them.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

from setuptools import setup  # first: it provides the distutils imported below
from setuptools.command.build_py import build_py
from distutils.command.build_scripts import build_scripts  # setuptools provides distutils

ROOT = pathlib.Path(__file__).resolve().parent
PROTO_DIR = pathlib.Path("pycriu_restore", "images", "proto")
# The source of the one script, the pycrestore command (BuildScripts compiles it).
LAUNCHER_SOURCE = "launcher/launcher.c"


def _load_builder(directory: str):
    """DIR/build.py is a standalone script: load it by path (the package may not be importable yet)."""
    spec = importlib.util.spec_from_file_location(f"{directory}_build", ROOT / directory / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_blob_builder():
    """restorer_blob/build.py, the restorer blob's builder."""
    return _load_builder("restorer_blob")


def _load_demo_builder():
    """demo_program/build.py, the demo program's builder."""
    return _load_builder("demo_program")


def _load_launcher_builder():
    """launcher/build.py, the pycrestore command's builder."""
    return _load_builder("launcher")


def prepare_blob(elf_path: pathlib.Path) -> None:
    """Write the blob's prepared form beside ``elf_path`` (loader.py write_prepared), so that
    a restore neither imports pyelftools nor parses the ELF. The package's own loader runs,
    from this source tree, in a child: where it cannot (pyelftools missing from the build
    environment), a warning says so and every restore parses the ELF instead."""
    code = "import sys; from pycriu_restore.blob.loader import write_prepared; write_prepared(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", code, str(elf_path)], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"setup.py: warning: {elf_path}: prepared form not written, every restore will parse the ELF: "
              f"{run.stderr.strip()[-500:]}", file=sys.stderr)


def compile_protos(out_root: pathlib.Path) -> None:
    """Run protoc over every schema; outputs keep their package path under out_root."""
    from grpc_tools import protoc  # build requirement
    import grpc_tools

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / PROTO_DIR).glob("*.proto"))
    if not protos:
        return
    (out_root / PROTO_DIR).mkdir(parents=True, exist_ok=True)
    # Proto imports are written as "pycriu_restore/images/proto/x.proto", so the generated
    # modules import each other by their full package name: no sys.path tricks at run time.
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit(f"setup.py: protoc failed on {PROTO_DIR}/*.proto")


class BuildPy(build_py):
    """build_py that also compiles the schemas and the restorer blob."""

    def run(self) -> None:
        super().run()
        out_root = ROOT if self.editable_mode else pathlib.Path(self.build_lib)
        compile_protos(out_root)
        builder = _load_blob_builder()
        try:
            builder.build(out_root / "pycriu_restore" / "blob" / "restorer.elf")
        except builder.BuildError as err:
            sys.exit(f"setup.py: cannot build the restorer blob: {err}")
        prepare_blob(out_root / "pycriu_restore" / "blob" / "restorer.elf")
        demo = _load_demo_builder()
        try:
            demo.build(out_root / "pycriu_restore" / "demo" / "demo-program")
        except demo.BuildError as err:
            sys.exit(f"setup.py: cannot build the demo program: {err}")


class BuildScripts(build_scripts):
    """build_scripts that compiles the one script, the launcher, for this Python.

    setup(scripts=...) names launcher.c, the script's source; distutils would copy it (and
    reads scripts as text), so run() compiles it into the build directory instead, from
    which install_scripts installs it as ``pycrestore``.
    """

    def run(self) -> None:
        builder = _load_launcher_builder()
        try:
            builder.build(pathlib.Path(self.build_dir) / "pycrestore", python=sys.executable)
        except builder.BuildError as err:
            sys.exit(f"setup.py: cannot build the pycrestore command: {err}")


if __name__ == "__main__":  # setuptools runs this file as __main__; tools/build_inplace.py imports it
    setup(cmdclass={"build_py": BuildPy, "build_scripts": BuildScripts}, scripts=[LAUNCHER_SOURCE])
