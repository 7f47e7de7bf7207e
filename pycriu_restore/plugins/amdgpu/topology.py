"""GPU id remapping: which GPU of this machine stands in for each GPU of the checkpoint.

KFD names GPUs by ``gpu_id``, a hash that differs between machines (and can differ
between boots). The kfd image records, for every node of the checkpoint machine's KFD
topology, the properties CRIU compares (KfdDeviceEntry); this machine's topology is in
sysfs (kfd_topology.c)::

    /sys/class/kfd/kfd/topology/nodes/<N>/
        gpu_id                    "0" for a CPU node
        properties                "name value" lines: simd_count, device_id, ...
        mem_banks/<M>/properties  heap_type (1 public / 2 private frame buffer), size_in_bytes
        io_links/<M>/properties   type (2 PCIe, 11 XGMI), node_to

:func:`map_gpus` pairs every checkpoint GPU with a distinct local GPU such that (the
rules of CRIU's amdgpu_plugin_topology.c, research/criu-restore-internals.md §5.3):

* the device properties in :data:`EXACT_PROPERTIES` are equal;
* those in :data:`AT_LEAST_PROPERTIES` are at least the checkpoint's (more VRAM is fine);
* a link between two checkpoint GPUs exists between their stand-ins too, with XGMI able
  to replace PCIe (so XGMI hives and P2P PCIe peers are preserved), and a GPU has at
  least as many links as it had.

The search tries the same gpu_id first, then the local GPUs in node order, and
backtracks, so it finds a complete pairing whenever one exists. As in CRIU, the checks
can be relaxed (:class:`MatchPolicy`, CRIU's KFD_*_CHECK environment variables); unlike
CRIU, the CPU (NUMA) side of the links is not matched. The whole module is pure: the
sysfs root is a parameter so that tests can point it at a tree in a temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pycriu_restore.errors import EXIT_ENVIRONMENT, PycrestoreError

if TYPE_CHECKING:
    from pycriu_restore.images.proto.amdgpu_pb2 import CriuKfd

TOPOLOGY_SYSFS_ROOT = Path("/sys/class/kfd/kfd/topology/nodes")

# CRIU amdgpu_plugin_topology.h (HSA runtime names): mem bank heap types, io link types.
TOPO_HEAP_TYPE_PUBLIC = 1   # HSA_HEAPTYPE_FRAME_BUFFER_PUBLIC: host-visible VRAM
TOPO_HEAP_TYPE_PRIVATE = 2  # HSA_HEAPTYPE_FRAME_BUFFER_PRIVATE
TOPO_IOLINK_TYPE_PCIE = 2   # HSA_IOLINKTYPE_PCIEXPRESS
TOPO_IOLINK_TYPE_XGMI = 11  # HSA_IOLINK_TYPE_XGMI

# Properties read from nodes/<N>/properties; KfdDeviceEntry has a field of each name.
NODE_PROPERTIES = (
    "cpu_cores_count", "simd_count", "mem_banks_count", "caches_count", "io_links_count",
    "max_waves_per_simd", "lds_size_in_kb", "gds_size_in_kb", "num_gws", "wave_front_size",
    "array_count", "simd_arrays_per_engine", "cu_per_simd_array", "simd_per_cu",
    "max_slots_scratch_cu", "vendor_id", "device_id", "domain", "drm_render_minor",
    "hive_id", "num_sdma_engines", "num_sdma_xgmi_engines", "num_sdma_queues_per_engine",
    "num_cp_queues", "fw_version", "capability", "sdma_fw_version")
# Derived from the node's frame-buffer mem bank.
MEM_PROPERTIES = ("vram_public", "vram_size")

# Must be equal on both sides (CRIU device_properties_match).
EXACT_PROPERTIES = (
    "vendor_id", "device_id", "simd_count", "mem_banks_count", "io_links_count",
    "max_waves_per_simd", "lds_size_in_kb", "wave_front_size", "array_count",
    "simd_arrays_per_engine", "cu_per_simd_array", "simd_per_cu", "max_slots_scratch_cu",
    "num_sdma_engines", "num_sdma_xgmi_engines", "num_sdma_queues_per_engine",
    "num_cp_queues", "vram_public", "capability")
# The local GPU must have at least the checkpoint's value.
AT_LEAST_PROPERTIES = ("vram_size", "num_gws", "caches_count", "fw_version", "sdma_fw_version")
# Shown in hex in messages.
_HEX_PROPERTIES = frozenset({"vendor_id", "device_id", "capability", "hive_id"})


class TopologyError(PycrestoreError):
    """The local KFD topology is unreadable, or does not fit the checkpoint's GPUs."""

    exit_code = EXIT_ENVIRONMENT


class GpuMapError(TopologyError):
    """No local GPU (or no one-to-one pairing) can stand in for the checkpoint's GPUs."""


@dataclass(frozen=True)
class IoLink:
    """A link from one topology node to another (``node_to`` is a node id)."""

    type: int      # TOPO_IOLINK_TYPE_*
    node_to: int


@dataclass(frozen=True)
class TopologyNode:
    """One node of a KFD topology: a CPU (``gpu_id`` 0) or a GPU with its properties."""

    node_id: int
    gpu_id: int
    props: Mapping[str, int] = field(default_factory=dict)  # NODE_ + MEM_PROPERTIES
    iolinks: tuple[IoLink, ...] = ()

    @property
    def is_gpu(self) -> bool:
        return self.gpu_id != 0

    @property
    def render_minor(self) -> int:
        """The DRM render minor of this GPU: /dev/dri/renderD<minor>."""
        return self.props.get("drm_render_minor", 0)

    def describe(self) -> str:
        """``GPU 0x1a2b (node 2, device_id 0x740f)``, for messages."""
        return (f"GPU {self.gpu_id:#06x} (node {self.node_id}, "
                f"device_id {self.props.get('device_id', 0):#x})")


@dataclass(frozen=True)
class Topology:
    """A KFD topology: every node, CPUs included, in node-id order."""

    nodes: tuple[TopologyNode, ...]
    source: str  # where it was read from, for messages

    def gpus(self) -> list[TopologyNode]:
        return [n for n in self.nodes if n.is_gpu]

    def node(self, node_id: int) -> TopologyNode | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def gpu(self, gpu_id: int) -> TopologyNode:
        """The GPU node with ``gpu_id``; a KeyError names the id and the topology."""
        for n in self.nodes:
            if n.is_gpu and n.gpu_id == gpu_id:
                return n
        raise KeyError(f"no GPU {gpu_id:#06x} in the topology of {self.source}")

    def links_between(self, from_gpu: TopologyNode, to_gpu: TopologyNode) -> set[int]:
        """The link types from ``from_gpu`` to ``to_gpu``."""
        return {link.type for link in from_gpu.iolinks if link.node_to == to_gpu.node_id}

    def valid_link_count(self, node: TopologyNode) -> int:
        """Links of ``node`` whose far end is in this topology (cgroups may hide nodes)."""
        return sum(1 for link in node.iolinks if self.node(link.node_to) is not None)


@dataclass(frozen=True)
class MatchPolicy:
    """Which optional checks apply; all on by default, as in CRIU."""

    fw_version: bool = True
    sdma_fw_version: bool = True
    caches_count: bool = True
    num_gws: bool = True
    vram_size: bool = True
    capability: bool = True

    # CRIU's environment variable for each switch (Documentation/criu-amdgpu-plugin.txt).
    ENV_VARS: ClassVar[dict[str, str]] = {
        "fw_version": "KFD_FW_VER_CHECK", "sdma_fw_version": "KFD_SDMA_FW_VER_CHECK",
        "caches_count": "KFD_CACHES_COUNT_CHECK", "num_gws": "KFD_NUM_GWS_CHECK",
        "vram_size": "KFD_VRAM_SIZE_CHECK", "capability": "KFD_CAPABILITY_CHECK"}

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> MatchPolicy:
        """Read CRIU's KFD_*_CHECK variables: 0/no turns a check off, 1/yes keeps it."""
        switches: dict[str, bool] = {}
        for attr, var in cls.ENV_VARS.items():
            value = env.get(var)
            if value is None:
                continue
            if value == "0" or value.lower() == "no":
                switches[attr] = False
            elif value == "1" or value.lower() == "yes":
                switches[attr] = True
            else:
                raise TopologyError(f"{var}={value!r}: expected 0, 1, no or yes")
        return cls(**switches)

    def checks(self, prop: str) -> bool:
        """Whether ``prop`` is compared at all under this policy."""
        return getattr(self, prop, True)


# --- reading topologies ---------------------------------------------------------------------

def checkpoint_topology(kfd: CriuKfd, source: str = "the checkpoint") -> Topology:
    """The checkpoint machine's topology, from a kfd image's ``device_entries``."""
    nodes = []
    for entry in kfd.device_entries:
        props = {name: int(getattr(entry, name)) for name in NODE_PROPERTIES + MEM_PROPERTIES}
        links = tuple(IoLink(type=link.type, node_to=link.node_to_id) for link in entry.iolinks)
        nodes.append(TopologyNode(node_id=entry.node_id, gpu_id=entry.gpu_id, props=props,
                                  iolinks=links))
    return Topology(nodes=tuple(sorted(nodes, key=lambda n: n.node_id)), source=source)


def _parse_properties(path: Path) -> dict[str, int]:
    """A sysfs ``properties`` file: ``name value`` per line, values unsigned decimal."""
    try:
        text = path.read_text()
    except OSError as err:
        raise TopologyError(f"cannot read {path}: {err.strerror}") from err
    props: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise TopologyError(f"{path}:{lineno}: expected 'name value', found {line!r}")
        props[parts[0]] = int(parts[1])
    return props


def _numbered_dirs(path: Path) -> list[Path]:
    """Subdirectories of ``path`` named by a number, in numeric order ([] if none)."""
    if not path.is_dir():
        return []
    return sorted((p for p in path.iterdir() if p.name.isdigit() and p.is_dir()),
                  key=lambda p: int(p.name))


def _frame_buffer(node_dir: Path) -> tuple[int, int]:
    """(vram_public, vram_size) from the first frame-buffer bank of a GPU node."""
    for bank in _numbered_dirs(node_dir / "mem_banks"):
        props = _parse_properties(bank / "properties")
        heap = props.get("heap_type", 0)
        if heap in (TOPO_HEAP_TYPE_PUBLIC, TOPO_HEAP_TYPE_PRIVATE):
            size = props.get("size_in_bytes", 0)
            if size:
                return int(heap == TOPO_HEAP_TYPE_PUBLIC), size
    raise TopologyError(f"{node_dir}/mem_banks: no frame-buffer bank (heap_type "
                        f"{TOPO_HEAP_TYPE_PUBLIC} or {TOPO_HEAP_TYPE_PRIVATE}) with a size")


def local_topology(root: Path = TOPOLOGY_SYSFS_ROOT) -> Topology:
    """This machine's KFD topology from sysfs under ``root`` (read only, no side effects).

    A node whose directory or gpu_id cannot be read is skipped, as CRIU does: cgroups
    hide GPUs that way. A malformed properties file is an error naming the file.
    """
    if not root.is_dir():
        raise TopologyError(f"no KFD topology at {root}: is the amdkfd driver loaded?")
    nodes = []
    for node_dir in _numbered_dirs(root):
        try:
            gpu_id_text = (node_dir / "gpu_id").read_text().strip()
        except OSError:
            continue
        if not gpu_id_text.isdigit():
            raise TopologyError(f"{node_dir}/gpu_id: expected a number, found {gpu_id_text!r}")
        gpu_id = int(gpu_id_text)
        raw = _parse_properties(node_dir / "properties")
        props = {name: raw.get(name, 0) for name in NODE_PROPERTIES}
        if gpu_id:
            props["vram_public"], props["vram_size"] = _frame_buffer(node_dir)
        links = []
        for link_dir in _numbered_dirs(node_dir / "io_links"):
            link = _parse_properties(link_dir / "properties")
            if link.get("type") in (TOPO_IOLINK_TYPE_PCIE, TOPO_IOLINK_TYPE_XGMI):
                links.append(IoLink(type=link["type"], node_to=link.get("node_to", 0)))
        nodes.append(TopologyNode(node_id=int(node_dir.name), gpu_id=gpu_id, props=props,
                                  iolinks=tuple(links)))
    return Topology(nodes=tuple(nodes), source=str(root))


# --- matching -------------------------------------------------------------------------------

def _show(prop: str, value: int) -> str:
    return f"{value:#x}" if prop in _HEX_PROPERTIES else str(value)


def property_mismatches(src: TopologyNode, dst: TopologyNode,
                        policy: MatchPolicy = MatchPolicy()) -> list[str]:
    """Why local GPU ``dst`` cannot stand in for checkpoint GPU ``src`` ([] if it can)."""
    reasons = []
    for prop in EXACT_PROPERTIES:
        if not policy.checks(prop):
            continue
        want, have = src.props.get(prop, 0), dst.props.get(prop, 0)
        if want != have:
            reasons.append(f"{prop} {_show(prop, have)}, checkpoint had {_show(prop, want)}")
    for prop in AT_LEAST_PROPERTIES:
        if not policy.checks(prop):
            continue
        want, have = src.props.get(prop, 0), dst.props.get(prop, 0)
        if have < want:
            reasons.append(f"{prop} {_show(prop, have)} < {_show(prop, want)} needed")
    return reasons


def _links_preserved(src_types: set[int], dst_types: set[int]) -> bool:
    """Every checkpoint link type is there locally; XGMI may replace PCIe."""
    for link_type in src_types:
        if link_type in dst_types:
            continue
        if link_type == TOPO_IOLINK_TYPE_PCIE and TOPO_IOLINK_TYPE_XGMI in dst_types:
            continue
        return False
    return True


def _fits_pairing(src_topo: Topology, dst_topo: Topology, src: TopologyNode,
                  dst: TopologyNode, paired: Mapping[int, TopologyNode]) -> bool:
    """Whether pairing ``src`` with ``dst`` keeps every link to the GPUs paired so far."""
    for other_id, other_dst in paired.items():
        other_src = src_topo.gpu(other_id)
        if not _links_preserved(src_topo.links_between(src, other_src),
                                dst_topo.links_between(dst, other_dst)):
            return False
        if not _links_preserved(src_topo.links_between(other_src, src),
                                dst_topo.links_between(other_dst, dst)):
            return False
    return True


def _ids(gpus: Iterable[TopologyNode]) -> str:
    return ", ".join(f"{g.gpu_id:#06x}" for g in gpus) or "none"


def map_gpus(src_topo: Topology, dst_topo: Topology,
             policy: MatchPolicy = MatchPolicy()) -> dict[int, int]:
    """Pair every checkpoint GPU with a distinct local GPU: {checkpoint gpu_id: local gpu_id}.

    Precondition: none (both topologies are data). Raises :class:`GpuMapError` naming
    the GPU and the mismatching properties when no pairing exists; KFD restores onto
    exactly as many GPUs as the checkpoint had, so the counts must be equal.
    """
    src_gpus, dst_gpus = src_topo.gpus(), dst_topo.gpus()
    if len(src_gpus) != len(dst_gpus):
        raise GpuMapError(f"the checkpoint had {len(src_gpus)} GPU(s) ({_ids(src_gpus)}), "
                          f"this machine has {len(dst_gpus)} ({_ids(dst_gpus)}): KFD restores "
                          "a process onto exactly as many GPUs")

    # Per checkpoint GPU, the local GPUs whose own properties fit, same gpu_id first.
    candidates: dict[int, list[TopologyNode]] = {}
    for src in src_gpus:
        fitting = [dst for dst in dst_gpus
                   if not property_mismatches(src, dst, policy)
                   and dst_topo.valid_link_count(dst) >= src_topo.valid_link_count(src)]
        fitting.sort(key=lambda dst: dst.gpu_id != src.gpu_id)  # stable: node order otherwise
        if not fitting:
            why = "; ".join(
                f"local {dst.describe()}: "
                + (", ".join(property_mismatches(src, dst, policy))
                   or f"{dst_topo.valid_link_count(dst)} io links, checkpoint had "
                      f"{src_topo.valid_link_count(src)}")
                for dst in dst_gpus)
            raise GpuMapError(f"checkpoint {src.describe()} has no match on this machine: {why}")
        candidates[src.gpu_id] = fitting

    paired: dict[int, TopologyNode] = {}

    def assign(index: int) -> bool:
        # Depth-first over checkpoint GPUs in node order; undo a choice that dead-ends.
        if index == len(src_gpus):
            return True
        src = src_gpus[index]
        taken = {dst.gpu_id for dst in paired.values()}
        for dst in candidates[src.gpu_id]:
            if dst.gpu_id in taken or not _fits_pairing(src_topo, dst_topo, src, dst, paired):
                continue
            paired[src.gpu_id] = dst
            if assign(index + 1):
                return True
            del paired[src.gpu_id]
        return False

    if not assign(0):
        options = "; ".join(f"{gid:#06x} -> {_ids(c)}" for gid, c in candidates.items())
        raise GpuMapError("the checkpoint's GPUs cannot be paired one-to-one with this "
                          f"machine's while keeping their XGMI/PCIe links (candidates: {options})")
    return {gid: dst.gpu_id for gid, dst in paired.items()}
