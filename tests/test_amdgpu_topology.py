"""GPU id remapping by KFD topology, over synthetic sysfs trees in a temporary directory.

The checkpoint side is a CriuKfd message built here (as CRIU's dump writes it); the local
side is a fake /sys/class/kfd/kfd/topology/nodes tree. The last tests drive
KfdBackend.restore_bos from that mapping with the kernel call replaced by a recorder, to
check the device and BO buckets it builds and what it makes of the kernel's answers.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from pycriu_restore.errors import EXIT_ENVIRONMENT
from pycriu_restore.images.errors import ImageError
from pycriu_restore.images.proto.amdgpu_pb2 import CriuKfd
from pycriu_restore.plugins.amdgpu import drm, kfd, topology
from pycriu_restore.plugins.amdgpu.backend import LocalGpu
from pycriu_restore.plugins.amdgpu.ioctl import GpuDeviceError
from pycriu_restore.plugins.amdgpu.kfd_backend import KfdBackend
from pycriu_restore.plugins.amdgpu.topology import (TOPO_IOLINK_TYPE_PCIE as PCIE,
                                                    TOPO_IOLINK_TYPE_XGMI as XGMI,
                                                    GpuMapError, MatchPolicy, TopologyError)

GiB = 1 << 30

# An MI100-like GPU; the other device id is a different model.
BASE_GPU: dict[str, int] = {
    "cpu_cores_count": 0, "simd_count": 480, "mem_banks_count": 1, "caches_count": 200,
    "io_links_count": 1, "max_waves_per_simd": 8, "lds_size_in_kb": 64, "gds_size_in_kb": 0,
    "num_gws": 64, "wave_front_size": 64, "array_count": 8, "simd_arrays_per_engine": 1,
    "cu_per_simd_array": 15, "simd_per_cu": 4, "max_slots_scratch_cu": 32, "vendor_id": 0x1002,
    "device_id": 0x738C, "domain": 0, "drm_render_minor": 128, "hive_id": 0,
    "num_sdma_engines": 2, "num_sdma_xgmi_engines": 6, "num_sdma_queues_per_engine": 8,
    "num_cp_queues": 24, "fw_version": 80, "capability": 0x2A0, "sdma_fw_version": 18,
}
OTHER_MODEL = 0x73BF


def gpu(node_id: int, gpu_id: int, *, vram: int = 32 * GiB,
        links: tuple[tuple[int, int], ...] = ((PCIE, 0),), **overrides: int) -> dict[str, Any]:
    """One GPU node's description, used for both sides."""
    props = dict(BASE_GPU, drm_render_minor=128 + node_id, io_links_count=len(links))
    props.update(overrides)
    return {"node_id": node_id, "gpu_id": gpu_id, "props": props, "vram": vram,
            "links": links}


def cpu(node_id: int = 0) -> dict[str, Any]:
    return {"node_id": node_id, "gpu_id": 0, "props": {"cpu_cores_count": 64}, "vram": 0,
            "links": ()}


def write_sysfs(root: Path, nodes: list[dict[str, Any]]) -> Path:
    """A fake /sys/class/kfd/kfd/topology/nodes tree; returns its root."""
    for node in nodes:
        d = root / str(node["node_id"])
        d.mkdir(parents=True)
        (d / "gpu_id").write_text(f"{node['gpu_id']}\n")
        lines = [f"{k} {v}" for k, v in node["props"].items()]
        lines.append("gfx_target_version 90008")  # a property the matcher does not use
        (d / "properties").write_text("\n".join(lines) + "\n")
        if node["gpu_id"]:
            bank = d / "mem_banks" / "0"
            bank.mkdir(parents=True)
            (bank / "properties").write_text(
                f"heap_type 2\nsize_in_bytes {node['vram']}\nflags 0\nwidth 4096\n")
        for i, (link_type, node_to) in enumerate(node["links"]):
            link = d / "io_links" / str(i)
            link.mkdir(parents=True)
            (link / "properties").write_text(
                f"type {link_type}\nversion_major 0\nnode_from {node['node_id']}\n"
                f"node_to {node_to}\nweight 20\n")
    return root


def checkpoint(nodes: list[dict[str, Any]]) -> CriuKfd:
    """A CriuKfd whose device_entries describe ``nodes`` (private-heap VRAM)."""
    image = CriuKfd(pid=4242, num_of_gpus=sum(1 for n in nodes if n["gpu_id"]),
                    num_of_cpus=sum(1 for n in nodes if not n["gpu_id"]))
    for node in nodes:
        entry = image.device_entries.add(node_id=node["node_id"], gpu_id=node["gpu_id"])
        for key, value in node["props"].items():
            setattr(entry, key, value)
        entry.vram_public = 0
        entry.vram_size = node["vram"]
        for link_type, node_to in node["links"]:
            entry.iolinks.add(type=link_type, node_to_id=node_to)
    return image


def map_them(tmp_path: Path, ckpt: list[dict[str, Any]], local: list[dict[str, Any]],
             policy: MatchPolicy = MatchPolicy()) -> dict[int, int]:
    src = topology.checkpoint_topology(checkpoint(ckpt))
    dst = topology.local_topology(write_sysfs(tmp_path / "nodes", local))
    return topology.map_gpus(src, dst, policy)


# --- reading sysfs ----------------------------------------------------------------------------

def test_local_topology_reads_nodes_banks_and_links(tmp_path: Path) -> None:
    root = write_sysfs(tmp_path / "nodes", [cpu(0), gpu(1, 0xA1, vram=16 * GiB,
                                                       links=((PCIE, 0), (XGMI, 2))),
                                            gpu(2, 0xA2, links=((XGMI, 1),))])
    (root / "3").mkdir()  # a node hidden by cgroups: no readable gpu_id, skipped
    topo = topology.local_topology(root)
    assert [n.node_id for n in topo.nodes] == [0, 1, 2]
    first = topo.gpu(0xA1)
    assert first.props["vram_size"] == 16 * GiB and first.props["vram_public"] == 0
    assert first.render_minor == 129 and first.props["device_id"] == 0x738C
    assert first.iolinks == (topology.IoLink(PCIE, 0), topology.IoLink(XGMI, 2))
    assert topo.links_between(first, topo.gpu(0xA2)) == {XGMI}
    assert not topo.nodes[0].is_gpu


def test_checkpoint_and_sysfs_views_of_one_machine_agree(tmp_path: Path) -> None:
    nodes = [cpu(0), gpu(1, 0xA1, links=((PCIE, 0), (XGMI, 2))),
             gpu(2, 0xA2, links=((PCIE, 0), (XGMI, 1)))]
    src = topology.checkpoint_topology(checkpoint(nodes))
    dst = topology.local_topology(write_sysfs(tmp_path / "nodes", nodes))
    for a, b in zip(src.gpus(), dst.gpus()):
        assert a.props == b.props and a.iolinks == b.iolinks


def test_malformed_properties_name_file_and_line(tmp_path: Path) -> None:
    root = write_sysfs(tmp_path / "nodes", [gpu(1, 0xA1)])
    (root / "1" / "properties").write_text("simd_count 480\ndevice_id lots\n")
    with pytest.raises(TopologyError, match=r"nodes/1/properties:2: expected 'name value', "
                                            r"found 'device_id lots'") as caught:
        topology.local_topology(root)
    assert caught.value.exit_code == EXIT_ENVIRONMENT


def test_gpu_without_frame_buffer_bank_is_an_error(tmp_path: Path) -> None:
    root = write_sysfs(tmp_path / "nodes", [gpu(1, 0xA1)])
    (root / "1" / "mem_banks" / "0" / "properties").write_text("heap_type 0\nsize_in_bytes 9\n")
    with pytest.raises(TopologyError, match="no frame-buffer bank"):
        topology.local_topology(root)


def test_missing_topology_root(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no KFD topology at .*amdkfd"):
        topology.local_topology(tmp_path / "absent")


# --- mapping ----------------------------------------------------------------------------------

def test_identical_machines_map_each_gpu_to_itself(tmp_path: Path) -> None:
    nodes = [cpu(0), gpu(1, 0xA1), gpu(2, 0xA2)]
    assert map_them(tmp_path, nodes, nodes) == {0xA1: 0xA1, 0xA2: 0xA2}


def test_same_ids_win_over_node_order(tmp_path: Path) -> None:
    ckpt = [cpu(0), gpu(1, 0xA1), gpu(2, 0xA2)]
    local = [cpu(0), gpu(1, 0xA2), gpu(2, 0xA1)]  # enumerated the other way round
    assert map_them(tmp_path, ckpt, local) == {0xA1: 0xA1, 0xA2: 0xA2}


def test_swapped_models_are_matched_by_properties(tmp_path: Path) -> None:
    ckpt = [cpu(0), gpu(1, 0xA1), gpu(2, 0xB1, device_id=OTHER_MODEL, simd_count=240)]
    local = [cpu(0), gpu(1, 0xB2, device_id=OTHER_MODEL, simd_count=240), gpu(2, 0xA2)]
    assert map_them(tmp_path, ckpt, local) == {0xA1: 0xA2, 0xB1: 0xB2}


def test_one_gpu_missing(tmp_path: Path) -> None:
    with pytest.raises(GpuMapError, match=r"checkpoint had 2 GPU\(s\) \(0x00a1, 0x00a2\), this "
                                          r"machine has 1 \(0x00b1\)"):
        map_them(tmp_path, [cpu(0), gpu(1, 0xA1), gpu(2, 0xA2)], [cpu(0), gpu(1, 0xB1)])


def test_vram_too_small_names_gpu_and_property(tmp_path: Path) -> None:
    ckpt = [cpu(0), gpu(1, 0xA1, vram=32 * GiB)]
    local = [cpu(0), gpu(1, 0xB1, vram=16 * GiB)]
    with pytest.raises(GpuMapError) as caught:
        map_them(tmp_path, ckpt, local)
    message = str(caught.value)
    assert message.startswith("checkpoint GPU 0x00a1 (node 1, device_id 0x738c) has no match")
    assert f"local GPU 0x00b1 (node 1, device_id 0x738c): vram_size {16 * GiB} < " \
           f"{32 * GiB} needed" in message
    assert caught.value.exit_code == EXIT_ENVIRONMENT


def test_vram_check_can_be_relaxed_and_more_vram_is_fine(tmp_path: Path) -> None:
    ckpt = [cpu(0), gpu(1, 0xA1, vram=32 * GiB)]
    relaxed = MatchPolicy.from_env({"KFD_VRAM_SIZE_CHECK": "NO"})
    assert map_them(tmp_path / "a", ckpt, [cpu(0), gpu(1, 0xB1, vram=16 * GiB)],
                    relaxed) == {0xA1: 0xB1}
    assert map_them(tmp_path / "b", ckpt, [cpu(0), gpu(1, 0xB1, vram=64 * GiB)]) == {0xA1: 0xB1}


def test_exact_property_mismatch_is_reported(tmp_path: Path) -> None:
    ckpt = [cpu(0), gpu(1, 0xA1)]
    local = [cpu(0), gpu(1, 0xB1, device_id=OTHER_MODEL, fw_version=70)]
    with pytest.raises(GpuMapError, match=r"device_id 0x73bf, checkpoint had 0x738c, "
                                          r"fw_version 70 < 80 needed"):
        map_them(tmp_path, ckpt, local)


def _hive_nodes(ids: tuple[int, int, int, int], pairs: tuple[tuple[int, int], ...]
                ) -> list[dict[str, Any]]:
    """Four GPUs on nodes 1..4 whose XGMI links join the node pairs in ``pairs``."""
    peer = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    return [cpu(0)] + [gpu(n, ids[n - 1], links=((XGMI, peer[n]),)) for n in range(1, 5)]


def test_xgmi_hives_are_kept_together(tmp_path: Path) -> None:
    # Checkpoint hives {A1, A2} {A3, A4}; locally the hives are nodes {1, 3} and {2, 4},
    # so pairing by node order alone would split both hives.
    ckpt = _hive_nodes((0xA1, 0xA2, 0xA3, 0xA4), ((1, 2), (3, 4)))
    local = _hive_nodes((0xB1, 0xB2, 0xB3, 0xB4), ((1, 3), (2, 4)))
    mapping = map_them(tmp_path, ckpt, local)
    hives = [{0xB1, 0xB3}, {0xB2, 0xB4}]
    assert {mapping[0xA1], mapping[0xA2]} in hives and {mapping[0xA3], mapping[0xA4]} in hives
    assert sorted(mapping.values()) == [0xB1, 0xB2, 0xB3, 0xB4]


def test_xgmi_hive_cannot_become_pcie(tmp_path: Path) -> None:
    ckpt = [cpu(0), gpu(1, 0xA1, links=((XGMI, 2),)), gpu(2, 0xA2, links=((XGMI, 1),))]
    local = [cpu(0), gpu(1, 0xB1, links=((PCIE, 2),)), gpu(2, 0xB2, links=((PCIE, 1),))]
    with pytest.raises(GpuMapError, match=r"cannot be paired one-to-one .* XGMI/PCIe links "
                                          r"\(candidates: 0x00a1 -> 0x00b1, 0x00b2"):
        map_them(tmp_path, ckpt, local)


def test_pcie_peers_may_become_xgmi(tmp_path: Path) -> None:
    ckpt = [cpu(0), gpu(1, 0xA1, links=((PCIE, 2),)), gpu(2, 0xA2, links=((PCIE, 1),))]
    local = [cpu(0), gpu(1, 0xB1, links=((XGMI, 2),)), gpu(2, 0xB2, links=((XGMI, 1),))]
    assert map_them(tmp_path, ckpt, local) == {0xA1: 0xB1, 0xA2: 0xB2}


def test_match_policy_from_env() -> None:
    policy = MatchPolicy.from_env({"KFD_FW_VER_CHECK": "0", "KFD_CAPABILITY_CHECK": "yes"})
    assert not policy.fw_version and policy.capability and policy.vram_size
    with pytest.raises(TopologyError, match=r"KFD_NUM_GWS_CHECK='maybe': expected 0, 1, no"):
        MatchPolicy.from_env({"KFD_NUM_GWS_CHECK": "maybe"})


# --- KfdBackend.map_gpus / restore_bos, the kernel replaced by a recorder -----------------------

VRAM, GTT, DOORBELL, USERPTR = (kfd.KFD_IOC_ALLOC_MEM_FLAGS_VRAM, kfd.KFD_IOC_ALLOC_MEM_FLAGS_GTT,
                                kfd.KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL,
                                kfd.KFD_IOC_ALLOC_MEM_FLAGS_USERPTR)


def _kfd_with_bos(flags: list[int]) -> CriuKfd:
    image = checkpoint([cpu(0), gpu(1, 0xA1)])
    for i, bo_flags in enumerate(flags):
        image.bo_entries.add(addr=0x7F00_0000_0000 + i * 0x10_0000, size=(i + 1) * 4096,
                             offset=0xD000_0000 + i * 0x1000, alloc_flags=bo_flags,
                             gpu_id=0xA1, handle=i)
    image.num_of_bos = len(flags)
    image.num_of_objects = 7
    image.priv_data = b"opaque kernel state"
    return image


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as err:
        assert err.errno == errno.EBADF
        return False
    return True


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A KfdBackend over a fake topology (local GPU 0xB1 on renderD130), render nodes faked."""
    root = write_sysfs(tmp_path / "nodes", [cpu(0), gpu(2, 0xB1)])
    opened: list[tuple[int, str]] = []

    def fake_open(minor: int, dev_dir: str) -> int:
        opened.append((minor, dev_dir))
        return os.memfd_create(f"renderD{minor}")

    monkeypatch.setattr(drm, "open_render_node", fake_open)
    b = KfdBackend(topology_root=root, dev_dir=str(tmp_path), fd_floor=200,
                   policy=MatchPolicy())
    b.opened = opened
    yield b
    b.close()
    for fd in b._task_render_fds.values():  # kept for the task's lifetime; the test ends it
        os.close(fd)


def test_restore_bos_builds_buckets_and_keeps_only_fillable_dmabufs(
        backend: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _kfd_with_bos([VRAM | kfd.KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE, DOORBELL, USERPTR, GTT])
    seen: dict[str, Any] = {}

    def fake_restore(fd: int, devices: Any, bos: Any, priv: bytes, num_objects: int,
                     device: str) -> None:
        seen["devices"] = [(d.user_gpu_id, d.actual_gpu_id, d.drm_fd) for d in devices]
        seen["bos"] = [(b.addr, b.size, b.offset, b.gpu_id, b.alloc_flags) for b in bos]
        seen["priv"], seen["objects"] = priv, num_objects
        for i, b in enumerate(bos):
            b.restored_offset = 0x1_0000_0000 + i * 0x10000
            # The kernel exports VRAM/GTT; give the doorbell one too, to check it is closed.
            b.dmabuf_fd = os.memfd_create("bo") if i != 2 else kfd.KFD_INVALID_FD

    monkeypatch.setattr(kfd, "criu_restore", fake_restore)
    local = backend.map_gpus(image)
    assert local == {0xA1: LocalGpu(gpu_id=0xB1, minor=130)}
    restored = backend.restore_bos(-1, image, {0xA1: 0xB1})

    render_fd = backend.render_fd(0xB1)
    assert render_fd >= 200  # moved above fd_floor
    backend.close()  # releases the copiers only: the task's render fd stays open
    assert _is_open(render_fd)
    assert backend.opened == [(130, str(tmp_path / "dri"))]
    assert seen["devices"] == [(0xA1, 0xB1, render_fd)]
    assert seen["bos"][3] == (0x7F00_0030_0000, 4 * 4096, 0xD000_3000, 0xA1, GTT)
    assert (seen["priv"], seen["objects"]) == (b"opaque kernel state", 7)

    assert [(r.index, r.size, r.gpu_id, r.local_gpu_id, r.minor) for r in restored] == \
        [(0, 4096, 0xA1, 0xB1, 130), (3, 4 * 4096, 0xA1, 0xB1, 130)]
    assert restored[1].restored_offset == 0x1_0003_0000 and restored[1].old_offset == 0xD000_3000
    assert all(_is_open(r.dmabuf_fd) for r in restored)
    # VRAM, doorbell and GTT VMAs change offset; the userptr BO has no device VMA.
    assert [(m.addr, m.new_offset, m.render_fd) for m in backend.vma_remaps] == [
        (0x7F00_0000_0000, 0x1_0000_0000, render_fd), (0x7F00_0010_0000, 0x1_0001_0000, render_fd),
        (0x7F00_0030_0000, 0x1_0003_0000, render_fd)]
    for r in restored:
        os.close(r.dmabuf_fd)


def test_restore_bos_closes_every_dmabuf_when_one_is_missing(
        backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _kfd_with_bos([GTT, VRAM])
    given: list[int] = []

    def fake_restore(fd: int, devices: Any, bos: Any, *rest: Any) -> None:
        bos[0].dmabuf_fd = os.memfd_create("gtt")
        given.append(bos[0].dmabuf_fd)
        bos[1].dmabuf_fd = kfd.KFD_INVALID_FD  # a VRAM BO without its dma-buf

    monkeypatch.setattr(kfd, "criu_restore", fake_restore)
    with pytest.raises(GpuDeviceError, match=r"BO 1 \(addr 0x7f0000100000, 8192 bytes, flags "
                                             r"0x1\) without a dma-buf fd"):
        backend.restore_bos(-1, image, {0xA1: 0xB1})
    assert not _is_open(given[0])


def test_restore_bos_checks_the_image_before_any_device_access(backend: Any) -> None:
    image = _kfd_with_bos([VRAM])
    image.num_of_gpus = 2
    with pytest.raises(ImageError, match=r"kfd image of pid 4242: 1 GPU device entries, "
                                         r"num_of_gpus says 2"):
        backend.restore_bos(-1, image, {0xA1: 0xB1})
    assert backend.opened == []
