"""The pool of NativePlan.upscale_dlpack's output buffers (csrc/buffer_pool.h): reuse instead of a cudaMalloc and a
device-wide cudaFree per frame. On the CPU through engine._C.HostBufferPool (the same pool over malloc / free); on
a GPU, upscale_dlpack's own counters.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import engine.models as M
from engine._ext import load_C
from kernels.plan import PLAN_FILE

C = load_C()
REPO = Path(__file__).resolve().parents[1]


def test_a_released_buffer_is_reused_for_the_same_size() -> None:
    pool = C.HostBufferPool()
    a = pool.acquire(4096)
    ptr = a.ptr
    assert ptr != 0 and a.bytes == 4096
    a.release()
    assert a.ptr == 0 and a.bytes == 0
    a.release()  # a second release does nothing
    for _ in range(3):
        b = pool.acquire(4096)
        assert b.ptr == ptr
        b.release()
    assert pool.stats() == {"allocations": 1, "reuses": 3, "frees": 0, "free_buffers": 1}


def test_a_buffer_goes_back_when_it_is_garbage_collected() -> None:
    pool = C.HostBufferPool()
    ptr = pool.acquire(256).ptr  # the buffer object is dropped at once
    assert pool.stats()["free_buffers"] == 1
    assert pool.acquire(256).ptr == ptr


def test_other_sizes_get_their_own_buffers() -> None:
    pool = C.HostBufferPool()
    small, large = pool.acquire(1024), pool.acquire(2048)
    p_small, p_large = small.ptr, large.ptr
    small.release()
    large.release()
    other = pool.acquire(1536)  # no free buffer of this size: a new one, the free ones stay
    assert other.ptr not in (p_small, p_large)
    assert pool.stats() == {"allocations": 3, "reuses": 0, "frees": 0, "free_buffers": 2}
    assert pool.acquire(2048).ptr == p_large and pool.acquire(1024).ptr == p_small
    assert pool.stats()["reuses"] == 2


def _live_buffers() -> int:
    """Host buffers of every HostBufferPool not yet freed, once garbage (of earlier tests too) is collected."""
    gc.collect()
    return C.HostBufferPool.live_buffers()


def test_at_most_max_free_buffers_stay_free() -> None:
    live = _live_buffers()
    pool = C.HostBufferPool(max_free=2)
    held = [pool.acquire(512) for _ in range(5)]
    ptrs = [b.ptr for b in held]
    assert len(set(ptrs)) == 5 and _live_buffers() == live + 5
    for b in held:
        b.release()
    # the two released last stay; the three released before them are freed
    assert pool.stats() == {"allocations": 5, "reuses": 0, "frees": 3, "free_buffers": 2}
    assert _live_buffers() == live + 2
    assert {pool.acquire(512).ptr, pool.acquire(512).ptr} <= set(ptrs[3:])
    del pool
    assert _live_buffers() == live


def test_a_buffer_released_after_its_pool_is_gone_is_freed() -> None:
    live = _live_buffers()
    pool = C.HostBufferPool()
    kept, returned = pool.acquire(128), pool.acquire(64)
    returned.release()
    del pool  # the buffers still hold the pool
    assert _live_buffers() == live + 2
    kept.release()  # back to the pool, which then goes with both of its free buffers
    assert _live_buffers() == live


def test_a_failed_allocation_frees_the_free_buffers_and_retries() -> None:
    pool = C.HostBufferPool(max_live=2)  # like a device with room for two outputs
    pool.acquire(100).release()
    pool.acquire(200).release()
    big = pool.acquire(300)
    assert big.bytes == 300
    assert pool.stats() == {"allocations": 3, "reuses": 0, "frees": 2, "free_buffers": 0}
    held = pool.acquire(400)
    with pytest.raises(MemoryError):  # two in use and nothing free to give up
        pool.acquire(500)
    assert held.bytes == 400 and pool.stats()["allocations"] == 4


def test_threads_share_a_pool() -> None:
    live = _live_buffers()
    pool = C.HostBufferPool(max_free=2)

    def work() -> None:
        for i in range(2000):
            pool.acquire(64 * (1 + i % 3)).release()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = pool.stats()
    assert st["allocations"] + st["reuses"] == 8000
    assert st["allocations"] - st["frees"] == st["free_buffers"] <= 2
    assert pool.trim() == st["free_buffers"] and _live_buffers() == live


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="positive size in bytes, got 0"):
        C.HostBufferPool().acquire(0)
    with pytest.raises(ValueError, match="max_free must be >= 0, got -1"):
        C.HostBufferPool(max_free=-1)
    with pytest.raises(ValueError, match=r"max_live must be -1 \(no limit\) or >= 0, got -2"):
        C.HostBufferPool(max_live=-2)


# ---------------------------------------------------------------------------------------------------------
# on a GPU: NativePlan.upscale_dlpack


def _native_plan(tmp: Path) -> Path:
    """A tiny ×4 RRDBNet native plan for this GPU (python -m engine.build in a subprocess); its plan file."""
    torch.manual_seed(0)
    net = M.create("rrdb6", num_block=1, num_feat=16, num_grow_ch=8).eval()
    M.save(net, tmp / "net.safetensors")
    major, minor = torch.cuda.get_device_capability()
    cmd = [sys.executable, "-m", "engine.build", "--backend", "native", "--weights", str(tmp / "net.safetensors"),
           "-o", str(tmp / "plan"), "--fp16", "--tile", "32", "--batch", "1", "--arch", f"{major}{minor}"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "plan" / PLAN_FILE


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_upscale_dlpack_reuses_its_output_buffer_on_gpu(tmp_path: Path) -> None:
    rt = C.NativePlan(str(_native_plan(tmp_path)))
    stream = torch.cuda.current_stream().cuda_stream
    gen = torch.Generator("cuda").manual_seed(0)
    x, other = (torch.rand(3, 40, 56, device="cuda", generator=gen) for _ in range(2))
    first = torch.from_dlpack(rt.upscale_dlpack(x, 8, stream))
    ptr, expected = first.data_ptr(), first.clone()
    del first
    second = torch.from_dlpack(rt.upscale_dlpack(other, 8, stream))
    assert second.data_ptr() == ptr
    del second
    third = torch.from_dlpack(rt.upscale_dlpack(x, 8, stream))
    assert third.data_ptr() == ptr and torch.equal(third, expected)
    st = rt.stats()
    assert st["output_allocations"] == 1 and st["output_reuses"] == 2
    held = torch.from_dlpack(rt.upscale_dlpack(x, 8, stream))  # `third` is still held: a second buffer
    assert held.data_ptr() != ptr and rt.stats()["output_allocations"] == 2
    del rt  # the outputs keep the pool: dropping them after the plan is gone frees them
    gc.collect()
    assert torch.equal(held, expected)
    del third, held
    torch.cuda.synchronize()
