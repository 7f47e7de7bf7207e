"""The plugin API: CRIU's restore hooks, with the same meaning, for Python plugins.

A plugin restores what the core does not know: a device's state (the amdgpu plugin: GPU
buffer objects and their contents). Like CRIU (criu/include/criu-plugin.h), each hook runs
at a fixed point of the restore and in a fixed process -- and that process decides what a
plugin can share between its hooks:

    hook                 runs in            when
    -------------------  -----------------  ------------------------------------------------
    restore_init         the orchestrator   after the plan, before any fork
    post_forking         the orchestrator   right after the root task is forked; may start
                                            threads (every fork of the orchestrator is done)
    restore_ext_file     the restored task  while it installs its fds (still Python): an
                                            EXT file of the images, e.g. /dev/kfd; returns
                                            the fd to install, or None ("not mine")
    update_vma_map       the restored task  while it prepares its mapped files: a device
                                            VMA whose mmap offset changed; returns the new
                                            (pgoff, fd) or None
    resume_devices_late  the orchestrator   after the task's blob is gone, before detach,
                                            once per task: finish the device, start it
    cleanup              the orchestrator   always at the end; ``failed`` says how it ended

State kept in ``restore_ext_file`` lives in a forked task and is invisible to the
orchestrator, and the other way round: whatever must cross (the amdgpu plugin's dma-buf fds
and copy commands) crosses through IPC set up in ``restore_init``, before the fork, so both
sides inherit it. docs/plugins.md says more.

Plugins are found through the ``pycrestore.plugins`` entry point group: each entry point
names a class (or factory) that takes no argument and returns a :class:`Plugin`. A restore
looks for them only when :func:`plugins_apply` says the images need one: scanning the
installed distributions and importing a plugin cost more than a small restore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pycriu_restore.images import ImageSet
    from pycriu_restore.plan.model import RestorePlan, Task

ENTRY_POINT_GROUP = "pycrestore.plugins"


@dataclass
class RestoreContext:
    """What the orchestrator-side hooks see: the plan, the images and the user's options."""

    images: ImageSet
    plan: RestorePlan
    options: dict[str, Any] = field(default_factory=dict)  # e.g. gpu_backend, parallel_gpu


@dataclass(frozen=True)
class ExtFile:
    """An EXT file (``files.img`` type EXT) a task holds at ``fd``: only a plugin can open it."""

    file_id: int
    fd: int
    flags: int


class Plugin:
    """Base class: every hook does nothing, so a plugin overrides only what it needs.

    ``criu_name`` is the name of the CRIU plugin whose images this one restores, as CRIU's
    CR_PLUGIN_REGISTER gives it and its dump writes it into inventory.img (e.g.
    "amdgpu_plugin"); empty for a plugin of pycrestore's own.
    """

    name = "plugin"
    description = ""
    criu_name = ""

    def restore_init(self, ctx: RestoreContext) -> None:
        """Orchestrator, before any fork: read images, set up IPC the tasks will inherit."""

    def post_forking(self, ctx: RestoreContext) -> None:
        """Orchestrator, right after the root fork: start background work (threads are fine now)."""

    def restore_ext_file(self, ctx: RestoreContext, task: Task, ext: ExtFile) -> int | None:
        """Restored task, before the blob: open ``ext`` and return its fd, or None if not ours."""
        return None

    def update_vma_map(self, ctx: RestoreContext, task: Task, path: str, start: int, pgoff: int) -> tuple[int, int | None] | None:
        """Restored task, after its fds are installed: where the device VMA at ``start``, which
        mapped ``path`` (its name in the image) at ``pgoff``, maps now: (new pgoff, fd), or None
        if it is not ours. The fd (a new one, the caller closes it) is what the VMA is mapped
        through; with None the core opens ``path``. A device VMA no plugin answers for fails
        the restore (restore/task.py _map_device_vmas)."""
        return None

    def resume_devices_late(self, ctx: RestoreContext, pid: int) -> None:
        """Orchestrator, after the blob is gone and before detach: finish and start devices."""

    def last_progress(self) -> float:
        """Orchestrator, while the tasks prepare: when this plugin last worked for a task that
        waits on it (time.monotonic(); the current time while such work runs), or 0.0.

        The orchestrator gives a task a fixed time to prepare after its last sign of life
        (restore/tree.py PREPARE_TIMEOUT_S); a task that waits on a long plugin job (the
        amdgpu plugin's serial fill) shows life through this. Called from the main thread
        while background threads of the plugin run: it must be thread-safe.
        """
        return 0.0

    def cleanup(self, ctx: RestoreContext, failed: bool) -> None:
        """Orchestrator, at the very end: release what the plugin holds (threads, fds)."""

    def inherited_fds(self) -> tuple[int, ...]:
        """Fds made in restore_init that the tasks must keep while they install their files
        (every other inherited fd is closed first thing in a new task)."""
        return ()

    def close_inherited_fds(self) -> None:
        """Restored task, after its fds are installed: close what inherited_fds() kept."""


@dataclass(frozen=True)
class PluginInfo:
    """One installed plugin, as `pycrestore plugins` lists it."""

    name: str
    target: str  # module:object of the entry point
    description: str


def plugins_apply(images: ImageSet, plan: RestorePlan) -> bool:
    """May any plugin have work in this restore? The images say so in two places:

    - inventory.img lists the plugins that dumped state (CRIU >= 4.1: ``plugins_entry``; a
      plugin adds its name there when it dumps a device file or a device VMA, and at restore
      CRIU enables only the listed ones: criu/image.c check_and_remove_inventory_plugin);
    - a task holds an EXT file (files.img type EXT), which only a plugin can open.

    Without either, every hook would find nothing of its own (RESTORE_EXT_FILE has no file,
    the amdgpu plugin no amdgpu-kfd-<id>.img), so no plugin is looked up or imported.
    """
    from pycriu_restore.plan.model import ExtFileEnd  # plan/ is above this module's imports

    inventory = images.inventory
    if inventory.HasField("plugins_entry") and inventory.plugins_entry.plugins:
        return True
    if any(v.file is not None and v.file.plugin for task in plan.tasks for v in task.vmas):
        return True  # a device mapping (VMA_EXT_PLUGIN): only a plugin can say how to map it
    return any(isinstance(f, ExtFileEnd) for task in plan.tasks for f in task.files)


def missing_plugins(images: ImageSet, plugins: tuple[Plugin, ...]) -> list[str]:
    """The plugins the dump used (inventory.img ``plugins_entry``, CRIU's names) that none of
    ``plugins`` restores, in the inventory's order.

    A plugin adds its name there when it dumps state only it can restore (CRIU's amdgpu
    plugin: when it handles a DRM device VMA; its cuda plugin: when it checkpoints a CUDA
    process). CRIU's restore stops at once if one of them is not loaded ("Missing required
    plugin", criu/image.c check_inventory_plugins): without it the process would come back
    with that state silently lost, a CUDA process never resumed.
    """
    inventory = images.inventory
    if not inventory.HasField("plugins_entry"):
        return []
    ours = {plugin.criu_name for plugin in plugins if plugin.criu_name}
    return [name for name in dict.fromkeys(inventory.plugins_entry.plugins) if name not in ours]


def installed_plugins() -> list[PluginInfo]:
    """Every plugin registered under the entry point group, without loading it."""
    from importlib.metadata import entry_points  # ~10 ms to import; only listing and loading need it

    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        description = ""
        try:
            description = getattr(ep.load(), "description", "")
        except Exception as err:  # noqa: BLE001 - a broken plugin is listed, with why
            description = f"(cannot be loaded: {type(err).__name__}: {err})"
        out.append(PluginInfo(name=ep.name, target=ep.value, description=description))
    return sorted(out, key=lambda p: p.name)


def load_plugins() -> list[Plugin]:
    """Instantiate every installed plugin, in name order."""
    from importlib.metadata import entry_points

    return [ep.load()() for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)]
