"""CRIU's RPC protocol (``criu swrk FD``), served by pycrestore: see service.py."""

from pycriu_restore.rpc.service import serve_swrk

__all__ = ["serve_swrk"]
