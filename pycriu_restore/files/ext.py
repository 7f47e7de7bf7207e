"""Files only a plugin can restore (EXT entries in files.img: /dev/kfd, ...).

CRIU's RESTORE_EXT_FILE hook: the first plugin that claims the file id returns the fd,
which is installed at its number. Never shared: a plugin makes one per task.
"""

from __future__ import annotations

from pycriu_restore.files import install as install_fd, park
from pycriu_restore.files.registry import FdContext, InstallContext
from pycriu_restore.plan.model import ExtFileEnd

SPECS = (ExtFileEnd,)


def read(ctx: FdContext) -> ExtFileEnd:
    if not ctx.entry.HasField("ext"):
        raise ctx.inconsistent("type EXT without its ext payload")
    return ExtFileEnd(fd=ctx.fd, file_id=ctx.entry.ext.id, flags=0, cloexec=ctx.cloexec)


def install(f: ExtFileEnd, ctx: InstallContext) -> None:
    from pycriu_restore.plugins.api import ExtFile

    for plugin in ctx.plugins:
        fd = plugin.restore_ext_file(ctx.plugin_ctx, ctx.task, ExtFile(file_id=f.file_id, fd=f.fd, flags=f.flags))
        if fd is not None:
            install_fd(park(fd), f.fd, f.cloexec)
            return
    names = ", ".join(p.name for p in ctx.plugins) or "none installed"
    raise RuntimeError(f"no plugin restores EXT file id {f.file_id} (plugins: {names})")
