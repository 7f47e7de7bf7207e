"""SDMA copy packets (exact dwords per GPU generation) and the copy path around them.

No AMD GPU is needed: packets are plain integers; the VA allocator, the release stack,
read_exact and the CPU fill run against memfds (the dma-buf sync ioctl is replaced by a
recorder, since a memfd is not a dma-buf); the SDMA path runs against FakeGpu, which
stands in for drm.py's ioctl wrappers and executes the COPY LINEAR packets it is given.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycriu_restore.errors import EXIT_ENVIRONMENT
from pycriu_restore.plugins.amdgpu import dmabuf, drm, kfd_backend, sdma
from pycriu_restore.plugins.amdgpu.backend import LocalGpu
from pycriu_restore.plugins.amdgpu.ioctl import DeviceUnavailable, GpuDeviceError, GpuIoctlError
from pycriu_restore.plugins.amdgpu.kfd_backend import (GpuVaAllocator, KfdBackend, _Undo,
                                                       cpu_fill, read_exact)

AI, NV, VI, CZ, CI, KV, SI = (drm.AMDGPU_FAMILY_AI, drm.AMDGPU_FAMILY_NV, drm.AMDGPU_FAMILY_VI,
                              drm.AMDGPU_FAMILY_CZ, drm.AMDGPU_FAMILY_CI, drm.AMDGPU_FAMILY_KV,
                              drm.AMDGPU_FAMILY_SI)
MiB = 1 << 20


# --- packets --------------------------------------------------------------------------------

def test_gfx9_and_later_encode_count_minus_one() -> None:
    packet = sdma.linear_copy_packet(0x1_2345_6000, 0xFFFF_8000_0000_1000, 0x1000, AI)
    assert packet == [0x00000001, 0x00000FFF, 0, 0x23456000, 0x00000001, 0x00001000,
                      0xFFFF8000]
    assert sdma.linear_copy_packet(0, 0x2000, 1, NV)[1] == 0  # one byte: count 0


@pytest.mark.parametrize("family", [CI, KV, VI, CZ])
def test_older_sdma_encodes_the_byte_count(family: int) -> None:
    packet = sdma.linear_copy_packet(0x1000, 0x2000, 0x1000, family)
    assert packet == [0x00000001, 0x00001000, 0, 0x1000, 0, 0x2000, 0]


def test_max_copy_per_packet() -> None:
    assert sdma.max_copy_bytes(AI) == 2 * MiB
    assert sdma.max_copy_bytes(NV) == 2 * MiB
    assert sdma.max_copy_bytes(VI) == 2 * MiB - 1
    assert sdma.max_copy_bytes(CI) == 2 * MiB - 1


def test_si_has_no_sdma() -> None:
    with pytest.raises(DeviceUnavailable, match="family 110 has no SDMA") as caught:
        sdma.copy_ib(0, 0x1000, 4096, SI)
    assert caught.value.exit_code == EXIT_ENVIRONMENT


def test_gfx9_copy_is_split_at_2mib_and_padded_with_nops() -> None:
    src, dst = 0x10_0000_0000, 0x20_0000_0000
    ib = sdma.copy_ib(src, dst, 2 * MiB + 1, AI)
    assert ib == [
        0x00000001, 0x001FFFFF, 0, 0x00000000, 0x10, 0x00000000, 0x20,  # 2 MiB
        0x00000001, 0x00000000, 0, 0x00200000, 0x10, 0x00200000, 0x20,  # 1 byte
        0x00000000, 0x00000000]                                          # NOP to 16 dwords
    assert sdma.ib_bytes_for(2 * MiB + 1, AI) == 16 * 4


def test_vi_copy_of_2mib_needs_two_packets() -> None:
    ib = sdma.copy_ib(0x1000, 0x9000_0000, 2 * MiB, VI)
    assert ib == [
        0x00000001, 0x001FFFFF, 0, 0x00001000, 0, 0x90000000, 0,   # 2 MiB - 1 bytes
        0x00000001, 0x00000001, 0, 0x00200FFF, 0, 0x901FFFFF, 0,   # the last byte
        0x00000000, 0x00000000]


def test_single_packet_ib_is_padded_to_8_dwords() -> None:
    assert sdma.pad_ib([1] * 7) == [1] * 7 + [0]
    assert sdma.pad_ib([1] * 8) == [1] * 8
    assert sdma.pad_ib([]) == []


@pytest.mark.parametrize("nbytes", [0, -1])
def test_empty_copy_is_refused(nbytes: int) -> None:
    with pytest.raises(ValueError, match="positive byte count"):
        sdma.copy_packets(0, 0, nbytes, AI)


def test_packet_larger_than_the_engine_allows_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.2097151 bytes on family 130"):
        sdma.linear_copy_packet(0, 0, 2 * MiB, VI)


def test_address_beyond_64_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="destination range"):
        sdma.linear_copy_packet(0, (1 << 64) - 0x800, 0x1000, AI)


@settings(max_examples=200, deadline=None)
@given(nbytes=st.integers(1, 9 * MiB), family=st.sampled_from([CI, VI, CZ, AI, NV]),
       src=st.integers(0, (1 << 48) - 1), dst=st.integers(0, (1 << 48) - 1))
def test_packets_cover_the_copy_exactly(nbytes: int, family: int, src: int, dst: int) -> None:
    ib = sdma.copy_ib(src, dst, nbytes, family)
    assert len(ib) % sdma.IB_ALIGN_DWORDS == 0
    assert len(ib) * 4 == sdma.ib_bytes_for(nbytes, family)
    minus = 1 if family >= AI else 0
    covered, i = 0, 0
    while i + sdma.COPY_LINEAR_DWORDS <= len(ib) and ib[i] == 1:
        header, count, param, s_lo, s_hi, d_lo, d_hi = ib[i:i + sdma.COPY_LINEAR_DWORDS]
        length = count + minus
        assert 0 < length <= sdma.max_copy_bytes(family)
        assert (s_hi << 32 | s_lo) == src + covered and (d_hi << 32 | d_lo) == dst + covered
        assert param == 0 and all(0 <= dw <= 0xFFFFFFFF for dw in ib[i:i + 7])
        covered += length
        i += sdma.COPY_LINEAR_DWORDS
    assert covered == nbytes
    assert all(dw == 0 for dw in ib[i:]) and len(ib) - i < sdma.IB_ALIGN_DWORDS


# --- GPU virtual addresses -------------------------------------------------------------------

def test_va_allocator_aligns_reuses_and_merges() -> None:
    va = GpuVaAllocator(0x1234, 0x100000, 0x1000)
    a = va.alloc(0x1800)         # rounded to 0x2000
    b = va.alloc(0x1000)
    c = va.alloc(0x3000)
    assert (a, b, c) == (0x2000, 0x4000, 0x5000)
    va.free(b, 0x1000)
    assert va.alloc(0x800) == 0x4000  # first fit takes the hole again
    va.free(0x4000, 0x800)
    va.free(a, 0x1800)
    va.free(c, 0x3000)
    assert va.free_ranges() == [(0x2000, 0x100000)]  # all merged back into one hole


def test_va_allocator_exhaustion_and_double_free() -> None:
    va = GpuVaAllocator(0x1000, 0x5000, 0x1000)
    first = va.alloc(0x4000)
    with pytest.raises(GpuDeviceError, match="exhausted: no free range of 0x1000 bytes"):
        va.alloc(0x1000)
    va.free(first, 0x4000)
    with pytest.raises(AssertionError, match="overlaps a free range"):
        va.free(first, 0x1000)


# --- releases ------------------------------------------------------------------------------

def test_undo_releases_in_reverse_order() -> None:
    order: list[str] = []
    with _Undo() as undo:
        for name in ("staging", "src", "dst", "ib"):
            undo.push(order.append, name)
    assert order == ["ib", "dst", "src", "staging"]


def test_undo_pop_all_keeps_resources_past_the_block() -> None:
    order: list[str] = []
    with _Undo() as undo:
        undo.push(order.append, "kept")
        kept = undo.pop_all()
    assert order == []
    with kept:
        pass
    assert order == ["kept"]


def test_a_failing_release_never_hides_the_error() -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("unmap failed")

    with pytest.raises(RuntimeError, match="copy failed") as caught:
        with _Undo() as undo:
            undo.push(ran.append, "first")
            undo.push(broken)
            raise RuntimeError("copy failed")
    assert ran == ["first"]  # the release after the broken one still ran
    assert any("unmap failed" in note for note in caught.value.__notes__)


def test_a_failing_release_after_success_is_raised_once_all_ran() -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("ctx free failed")

    with pytest.raises(OSError, match="ctx free failed"):
        with _Undo() as undo:
            undo.push(ran.append, "close")
            undo.push(broken)
    assert ran == ["close"]


# --- reading the pages data and the CPU path ------------------------------------------------

def _memfd(data: bytes, size: int | None = None) -> int:
    fd = os.memfd_create("amdgpu-test")
    os.ftruncate(fd, size if size is not None else len(data))
    os.pwrite(fd, data, 0)
    return fd


def test_read_exact_reads_at_the_offset_and_reports_short_files() -> None:
    fd = _memfd(bytes(range(256)) * 64)
    try:
        buf = bytearray(100)
        read_exact(fd, memoryview(buf), 1000)
        assert bytes(buf) == (bytes(range(256)) * 64)[1000:1100]
        with pytest.raises(GpuDeviceError, match=r"read 84 of 100 bytes at offset 16300"):
            read_exact(fd, memoryview(bytearray(100)), 16300)
    finally:
        os.close(fd)


def test_cpu_fill_copies_inside_a_sync_bracket(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(dmabuf, "sync", lambda fd, flags, device="": calls.append(flags))
    payload = os.urandom(3 * 4096 + 123)
    src = _memfd(b"\xaa" * 512 + payload)
    bo = _memfd(b"", size=4 * 4096)  # stands in for the dma-buf: a page-multiple BO
    try:
        cpu_fill(bo, len(payload), src, 512)
        assert os.pread(bo, len(payload) + 1, 0) == payload + b"\0"
    finally:
        os.close(src)
        os.close(bo)
    assert calls == [dmabuf.DMA_BUF_SYNC_START | dmabuf.DMA_BUF_SYNC_WRITE,
                     dmabuf.DMA_BUF_SYNC_END | dmabuf.DMA_BUF_SYNC_WRITE]


def test_cpu_fill_ends_cpu_access_when_the_source_is_short(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    calls: list[int] = []
    monkeypatch.setattr(dmabuf, "sync", lambda fd, flags, device="": calls.append(flags))
    src = _memfd(b"x" * 100)
    bo = _memfd(b"", size=4096)
    try:
        with pytest.raises(GpuDeviceError, match="read 100 of 4096 bytes"):
            cpu_fill(bo, 4096, src, 0)
    finally:
        os.close(src)
        os.close(bo)
    assert calls[-1] == dmabuf.DMA_BUF_SYNC_END | dmabuf.DMA_BUF_SYNC_WRITE


def test_cpu_fill_at_an_unaligned_bo_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmabuf, "sync", lambda fd, flags, device="": None)
    payload = os.urandom(5000)
    src, bo = _memfd(payload), _memfd(b"", size=4 * 4096)
    try:
        cpu_fill(bo, 5000, src, 0, bo_offset=4096 + 300)
        data = os.pread(bo, 4 * 4096, 0)
        assert data[4096 + 300:4096 + 5300] == payload
        assert data[:4396] == bytes(4396) and data[4096 + 5300:] == bytes(4 * 4096 - 9396)
    finally:
        os.close(src)
        os.close(bo)


def test_backend_cpu_method_fills_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmabuf, "sync", lambda fd, flags, device="": None)
    backend = KfdBackend(copy_method="cpu")
    backend.prepare_fill(0x1234, LocalGpu(gpu_id=0x5678, minor=128))  # nothing to open
    src, bo = _memfd(b"gpu data" * 1024), _memfd(b"", size=8192)
    try:
        backend.fill(bo, 4096, src, 0, 0x1234)
        backend.fill(bo, 4096, src, 4096, 0x1234, bo_offset=4096)
        backend.release_bo(bo)
        assert os.pread(bo, 8192, 0) == b"gpu data" * 1024
    finally:
        os.close(src)
        os.close(bo)
        backend.close()


# --- SDMA path preconditions (no GPU here) ----------------------------------------------------

def test_sdma_fill_before_prepare_is_a_bug() -> None:
    with pytest.raises(AssertionError, match=r"GPU 0x1234 was not prepared"):
        KfdBackend().fill(0, 4096, 0, 0, 0x1234)


def test_prepare_fill_without_the_render_node(tmp_path: Path) -> None:
    backend = KfdBackend(dev_dir=str(tmp_path))
    with pytest.raises(DeviceUnavailable, match=r"dri/renderD129 does not exist"):
        backend.prepare_fill(0x1234, LocalGpu(gpu_id=0x5678, minor=129))


def test_backend_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="copy_method"):
        KfdBackend(copy_method="blit")
    with pytest.raises(ValueError, match="below one page"):
        KfdBackend(staging_bytes=100)


def test_round_up() -> None:
    assert [kfd_backend.round_up(v, 4096) for v in (0, 1, 4096, 4097)] == [0, 4096, 4096, 8192]


# --- the SDMA path against a fake GPU -------------------------------------------------------------

class FakeGpu:
    """drm.py's wrappers, faked: GEM objects, a GPU VM and an SDMA engine that runs IBs.

    dma-bufs are memfds, the userptr staging buffer is real memory read with ctypes, and
    the IB is read back from the fake render node (a memfd the copier mmaps). Every
    handle, mapping and context must be released by the end of a test.
    """

    VA_START, VA_END = 0x20_0000, 1 << 40

    def __init__(self, family: int) -> None:
        self.family = family
        self.objects: dict[int, tuple[Any, ...]] = {}   # handle -> ("userptr", addr, size) ...
        self.mappings: dict[int, tuple[int, int]] = {}  # va -> (handle, size)
        self.contexts: set[int] = set()
        self.render_fd = -1
        self.next_id = 1
        self.gtt_end = 0
        self.submissions = 0
        self.fail_cs = False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("open_render_node", "query_device_info", "gem_userptr", "prime_fd_to_handle",
                     "gem_create", "gem_mmap_offset", "gem_close", "gem_va", "ctx_alloc",
                     "ctx_free", "cs_submit_ib", "wait_cs"):
            monkeypatch.setattr(drm, name, getattr(self, name))

    def _new(self, obj: tuple[Any, ...]) -> int:
        handle, self.next_id = self.next_id, self.next_id + 1
        self.objects[handle] = obj
        return handle

    def open_render_node(self, minor: int, dev_dir: str) -> int:
        self.render_fd = os.memfd_create(f"renderD{minor}")
        os.ftruncate(self.render_fd, 1 << 20)
        return self.render_fd

    def query_device_info(self, fd: int, device: str) -> drm.DrmAmdgpuInfoDevice:
        return drm.DrmAmdgpuInfoDevice(family=self.family, virtual_address_offset=self.VA_START,
                                       virtual_address_max=self.VA_END,
                                       virtual_address_alignment=4096)

    def gem_userptr(self, fd: int, addr: int, size: int, flags: int, device: str) -> int:
        assert addr % 4096 == 0 and size % 4096 == 0
        assert flags == (drm.AMDGPU_GEM_USERPTR_ANONONLY | drm.AMDGPU_GEM_USERPTR_REGISTER
                         | drm.AMDGPU_GEM_USERPTR_VALIDATE)
        return self._new(("userptr", addr, size))

    def prime_fd_to_handle(self, fd: int, dmabuf_fd: int, device: str) -> int:
        return self._new(("dmabuf", dmabuf_fd, os.fstat(dmabuf_fd).st_size))

    def gem_create(self, fd: int, size: int, alignment: int, domains: int, flags: int,
                   device: str) -> int:
        assert domains == drm.AMDGPU_GEM_DOMAIN_GTT
        offset, self.gtt_end = self.gtt_end, self.gtt_end + size
        return self._new(("gtt", offset, size))

    def gem_mmap_offset(self, fd: int, handle: int, device: str) -> int:
        return self.objects[handle][1]

    def gem_close(self, fd: int, handle: int, device: str) -> None:
        assert not any(h == handle for h, _ in self.mappings.values()), "closed while mapped"
        del self.objects[handle]

    def gem_va(self, fd: int, handle: int, op: int, va: int, size: int, device: str,
               flags: int = 0, offset_in_bo: int = 0) -> None:
        if op == drm.AMDGPU_VA_OP_MAP:
            assert handle in self.objects and va % 4096 == 0 and size % 4096 == 0
            assert all(va + size <= v or v + s <= va for v, (_, s) in self.mappings.items())
            self.mappings[va] = (handle, size)
        else:
            assert self.mappings.pop(va) == (handle, size)

    def ctx_alloc(self, fd: int, device: str) -> int:
        ctx = self._new(("ctx",))
        self.contexts.add(ctx)
        return ctx

    def ctx_free(self, fd: int, ctx: int, device: str) -> None:
        self.contexts.remove(ctx)
        del self.objects[ctx]

    def _resolve(self, va: int, nbytes: int) -> tuple[tuple[Any, ...], int]:
        for base, (handle, size) in self.mappings.items():
            if base <= va and va + nbytes <= base + size:
                return self.objects[handle], va - base
        raise AssertionError(f"GPU page fault: {va:#x}+{nbytes:#x} is not mapped")

    def _read(self, va: int, nbytes: int) -> bytes:
        obj, off = self._resolve(va, nbytes)
        if obj[0] == "userptr":
            return ctypes.string_at(obj[1] + off, nbytes)
        assert obj[0] == "dmabuf"
        return os.pread(obj[1], nbytes, off)

    def cs_submit_ib(self, fd: int, ctx: int, ib_va: int, ib_bytes: int, handles: Any,
                     ip_type: int, ring: int, device: str) -> int:
        if self.fail_cs:
            raise GpuIoctlError("DRM_IOCTL_AMDGPU_CS", device, 125)
        assert ctx in self.contexts and ip_type == drm.AMDGPU_HW_IP_DMA
        ib_obj, ib_off = self._resolve(ib_va, ib_bytes)
        assert ib_obj[0] == "gtt" and ib_bytes % (4 * sdma.IB_ALIGN_DWORDS) == 0
        dwords = struct.unpack(f"<{ib_bytes // 4}I",
                               os.pread(self.render_fd, ib_bytes, ib_obj[1] + ib_off))
        referenced = set()
        i = 0
        while i < len(dwords):
            if dwords[i] == sdma.header(sdma.SDMA_OP_NOP):
                i += 1
                continue
            assert dwords[i] == sdma.header(sdma.SDMA_OP_COPY, sdma.SDMA_SUBOP_COPY_LINEAR)
            _, count, _, s_lo, s_hi, d_lo, d_hi = dwords[i:i + 7]
            nbytes = count + 1 if self.family >= drm.AMDGPU_FAMILY_AI else count
            src, dst = s_hi << 32 | s_lo, d_hi << 32 | d_lo
            data = self._read(src, nbytes)
            dst_obj, dst_off = self._resolve(dst, nbytes)
            assert dst_obj[0] == "dmabuf"
            os.pwrite(dst_obj[1], data, dst_off)
            referenced |= {h for h, o in self.objects.items() if o in (dst_obj,)}
            i += 7
        assert referenced <= set(handles), "IB touches a BO missing from the BO list"
        self.submissions += 1
        return self.submissions

    def wait_cs(self, fd: int, ctx: int, seq: int, ip_type: int, ring: int, device: str,
                timeout_ns: int = 0) -> bool:
        return seq <= self.submissions

    def assert_all_released(self) -> None:
        assert self.objects == {} and self.mappings == {} and self.contexts == set()


@pytest.mark.parametrize("family", [AI, VI])
def test_sdma_fill_writes_every_chunk_and_releases_everything(
        family: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(family)
    gpu.install(monkeypatch)
    backend = KfdBackend(staging_bytes=3 * MiB)
    backend.prepare_fill(0xA1, LocalGpu(gpu_id=0xB1, minor=130))
    backend.prepare_fill(0xA1, LocalGpu(gpu_id=0xB1, minor=130))  # idempotent
    payload = os.urandom(5 * MiB + 123)
    src = _memfd(b"H" * 8 + payload)           # a pages file: 8-byte header, then data
    bo = _memfd(b"", size=5 * MiB + 4096)      # the dma-buf, a page multiple
    try:
        first = 4 * MiB + 4000                  # two fill chunks, the second unaligned
        backend.fill(bo, first, src, 8, 0xA1)
        backend.fill(bo, len(payload) - first, src, 8 + first, 0xA1, bo_offset=first)
        assert os.pread(bo, len(payload) + 1, 0) == payload + b"\0"
        # 3 MiB staging: 2 + 1 pieces; each piece one submission.
        assert gpu.submissions == 3
        backend.release_bo(bo)
        assert not any(o[0] == "dmabuf" for o in gpu.objects.values())
    finally:
        backend.close()
        os.close(src)
        os.close(bo)
    gpu.assert_all_released()
    backend.close()  # idempotent


def test_sdma_fill_failure_releases_everything_at_close(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(AI)
    gpu.install(monkeypatch)
    gpu.fail_cs = True
    backend = KfdBackend(staging_bytes=4096)
    backend.prepare_fill(0xA1, LocalGpu(gpu_id=0xB1, minor=130))
    src, bo = _memfd(b"x" * 8192), _memfd(b"", size=8192)
    try:
        with pytest.raises(GpuIoctlError, match="DRM_IOCTL_AMDGPU_CS on .*renderD130 failed"):
            backend.fill(bo, 8192, src, 0, 0xA1)
    finally:
        backend.close()
        os.close(src)
        os.close(bo)
    gpu.assert_all_released()


def test_sdma_fill_past_the_bo_end_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(AI)
    gpu.install(monkeypatch)
    backend = KfdBackend(staging_bytes=4096)
    backend.prepare_fill(0xA1, LocalGpu(gpu_id=0xB1, minor=130))
    src, bo = _memfd(b"x" * 8192), _memfd(b"", size=4096)
    try:
        with pytest.raises(GpuDeviceError, match="4096 bytes at offset 1 overruns the BO of "
                                                 "4096 bytes"):
            backend.fill(bo, 4096, src, 0, 0xA1, bo_offset=1)
    finally:
        backend.close()
        os.close(src)
        os.close(bo)
    gpu.assert_all_released()
