#!/usr/bin/env python3
"""Rebuild the generated parts of the package in the source tree (for development).

    python tools/build_inplace.py            # schemas and blob
    python tools/build_inplace.py protos     # only pycriu_restore/images/proto/*_pb2.py
    python tools/build_inplace.py blob       # only pycriu_restore/blob/restorer.elf (+ .prepared.json)
    python tools/build_inplace.py demo       # only pycriu_restore/demo/demo-program

An editable install (pip install -e .) does the same once; run this after editing a
.proto file or restorer_blob/. It uses the same code as the package build (setup.py).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("pycrestore_setup", ROOT / "setup.py")
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)
    what = set(argv) or {"protos", "blob", "demo"}
    if "protos" in what:
        setup_py.compile_protos(ROOT)
    if "blob" in what:
        builder = setup_py._load_blob_builder()
        builder.build(ROOT / "pycriu_restore" / "blob" / "restorer.elf")
        setup_py.prepare_blob(ROOT / "pycriu_restore" / "blob" / "restorer.elf")  # what restore loads
    if "demo" in what:
        setup_py._load_demo_builder().build(ROOT / "pycriu_restore" / "demo" / "demo-program")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
