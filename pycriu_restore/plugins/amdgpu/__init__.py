"""The amdgpu plugin: AMD GPU buffer objects, re-created in the task, filled in parallel.

Modules, one concept each:

    backend.py     the GpuBackend protocol (real KFD or simulated GPU)
    images.py      amdgpu-kfd-<id>.img and the per-GPU amdgpu-pages-<id>-<gpu>.img files,
                   amdgpu-renderD-<id>.img (+ drm-pages) and amdgpu-dmabuf_<id>.img
    channel.py     the task -> orchestrator command channel (socketpair, SCM_RIGHTS)
    fillpool.py    the orchestrator's fill threads (one per GPU)
    sim.py         simgpu: memfds stand in for VRAM BOs and dma-bufs
    generator.py   adds simulated GPU state to a real checkpoint's images (tests, benchmarks)
    plugin.py      AmdgpuPlugin: the restore hooks that tie these together
    hsakmt.py      ROCm's /dev/shm/hsakmt_shared_mem and its semaphore
    ioctl.py, kfd.py, drm.py, dmabuf.py, sdma.py, topology.py, kfd_backend.py, renderd.py
                   the real-hardware side (renderd.py: render-node BOs in the task's DRM file)
"""
