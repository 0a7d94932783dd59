"""kernels/packing.py: packed weights start 16-byte aligned (Triton's divisibility-16 specialization), and the layout
conversion and blend kernels compute element offsets in int64 when a buffer spans 2³¹ elements or more (`OFF64`),
under TRITON_INTERPRET=1 on the CPU. Large buffers are meta tensors (no memory) where nothing runs, and lazily
committed host memory (only the touched pages cost anything) where a kernel runs, in a child process: an offset that
wraps can crash the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import engine.models as M
from kernels.conv import element_extent as extent
from kernels.launch import launch, record
from kernels.packing import (
    FLAT_ALIGN,
    IO_BLOCK,
    Endpoints,
    lerp_,
    lerp_kernel,
    nchw_to_nhwc_kernel,
    needs_int64,
    nhwc_to_nchw_kernel,
    to_nchw,
    to_nhwc,
)

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BIG = 2**31


# ---------------------------------------------------------------------------------------------------------
# 16-byte aligned packed weights


def _rrdb(seed: int) -> M.SRNet:
    torch.manual_seed(seed)
    return M.create("rrdb6", num_block=1, num_feat=12, num_grow_ch=6).eval()  # packed sizes not multiples of 16 B


def test_every_packed_tensor_starts_16_byte_aligned_with_zeros_between() -> None:
    torch.manual_seed(0)
    # odd sizes: packed one after another, the tensors after (3,), (5, 7) and (1,) would start unaligned
    psnr = {"a": torch.randn(3), "b": torch.randn(5, 7), "c": torch.randn(1), "d": torch.randn(16), "e": torch.randn(2)}
    gan = {k: torch.randn(v.shape) for k, v in psnr.items()}
    for dtype in (torch.float16, torch.float32):
        ends = Endpoints({k: v.to(dtype) for k, v in psnr.items()}, {k: v.to(dtype) for k, v in gan.items()},
                         torch.device(DEVICE), "toy")
        assert [ends.views[k].data_ptr() % 16 for k in psnr] == [0] * len(psnr)
        assert [(ends.views[k].data_ptr() - ends.live.data_ptr()) // dtype.itemsize for k in psnr] == \
            [0, 16, 16 + 48, 16 + 48 + 16, 16 + 48 + 16 + 16]
        assert ends.live.numel() == 112 and ends.live.numel() % FLAT_ALIGN == 0
        ends.set_alpha(0.25)
        used = torch.zeros(ends.live.numel(), dtype=torch.bool)
        for k, v in psnr.items():
            ref = 0.75 * v.to(dtype).double() + 0.25 * gan[k].to(dtype).double()
            assert (ends.views[k].cpu().double() - ref).abs().max() <= 4 * torch.finfo(dtype).eps  # one rounding
            start = (ends.views[k].data_ptr() - ends.live.data_ptr()) // dtype.itemsize
            used[start:start + v.numel()] = True
        assert not ends.live.cpu()[~used].any()  # the padding blends to zero


def test_the_fused_programs_pass_aligned_weights() -> None:
    from kernels.rrdbnet import FusedRRDBNet
    from kernels.rrdbnet_int8 import FusedRRDBNetInt8, range_keys

    net, gan = _rrdb(0), _rrdb(1)
    plan = FusedRRDBNet(net, dtype=torch.float32, device=DEVICE, gan_net=gan)
    assert all(v.data_ptr() % 16 == 0 for v in plan.params.views.values())
    x = torch.rand(1, 3, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (plan(x.to(DEVICE)).cpu().double() - net.double()(x.double())).abs().max() < 1e-5
    int8 = FusedRRDBNetInt8(net, {k: 4.0 for k in range_keys(1)}, gan_net=gan, device=DEVICE)
    views = [*int8.q.values(), *int8.f.values()]
    assert len(int8.q) == 3 * 5 + 1 and all(v.data_ptr() % 16 == 0 for v in views)
    before = {k: v.clone() for k, v in int8.q.items()}
    int8.set_alpha(0.0)  # the kernel's rounding of the PSNR endpoint equals the host's, in the padded layout
    assert all(torch.equal(int8.q[k], before[k]) for k in before)
    int8.set_alpha(1.0)
    assert int8._live_q.numel() == int8._ends_q[0].numel() and int8._live_q.numel() % FLAT_ALIGN == 0
    with torch.no_grad():
        ref = gan(x)
    snr = float(10 * torch.log10(ref.var() / (int8(x.to(DEVICE)).cpu() - ref).pow(2).mean()))
    assert snr > 25  # the GAN endpoint in the padded layout (a misplaced view would be noise)


# ---------------------------------------------------------------------------------------------------------
# int64 offsets: when


def test_extent_counts_strides_and_the_int64_threshold() -> None:
    meta = torch.empty(BIG + 64, dtype=torch.float16, device="meta")
    assert extent(meta[:0]) == 0 and extent(meta[:7]) == 7
    assert not needs_int64(meta[:BIG - 1]) and needs_int64(meta[:BIG])
    wide = meta.as_strided((2, 3), (2**30, 1))  # 6 elements spread over 2³⁰ + 3
    assert extent(wide) == 2**30 + 3 and not needs_int64(wide)
    wider = meta.as_strided((3, 3), (2**30, 1))  # the last pixel starts at element 2³¹
    assert extent(wider) == BIG + 3 and needs_int64(wider)
    assert needs_int64(meta[:8], wider) and not needs_int64(meta[:8], wide)


def test_the_hosts_ask_for_int64_offsets_only_for_large_buffers() -> None:
    """Recorded, not run: meta tensors of any size cost nothing."""
    def off64(fn: object, *args: object) -> bool:
        with record() as launches:
            fn(*args)  # type: ignore[operator]
        assert len(launches) == 1
        return bool(launches[0].constexprs["OFF64"])

    def meta(*shape: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device="meta")

    assert not off64(lerp_, meta(1000), meta(1000), meta(1000), 0.5)
    assert off64(lerp_, meta(BIG), meta(BIG), meta(BIG), 0.5)
    # input: float32 NCHW (1, 3, 2¹⁵, 2¹⁵ + 2) → 3·2³⁰ + … elements; the small one well below
    assert not off64(to_nhwc, meta(1, 3, 64, 64, dtype=torch.float32), meta(1, 32, 32, 12), 2)
    assert off64(to_nhwc, meta(1, 3, 2**15, 2**15 + 2, dtype=torch.float32), meta(1, 2**14, 2**14 + 1, 12), 2)
    # output: a channel prefix of an NHWC buffer whose pixels are 2³⁰ elements apart
    strided = meta(BIG + 64).as_strided((1, 1, 3, 3), (3 * 2**30, 3 * 2**30, 2**30, 1))
    assert off64(to_nchw, strided, meta(1, 3, 1, 3, dtype=torch.float32))
    assert not off64(to_nchw, meta(1, 4, 5, 8), meta(1, 3, 4, 5, dtype=torch.float32))
    with pytest.raises(ValueError, match="evenly spaced pixels"):
        to_nchw(meta(1, 4, 5, 8).transpose(1, 2), meta(1, 3, 5, 4, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------------------
# int64 offsets: the same results


@pytest.mark.parametrize("off64", [False, True])
def test_both_offset_widths_convert_and_blend_alike(off64: bool) -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, 6, 4, generator=g)
    x = torch.empty(2, 3, 2, 12, dtype=torch.float16, device=DEVICE)
    launch(nchw_to_nhwc_kernel, (1,), [src.to(DEVICE), x, 3, 6, 4, x.numel()],
           dict(R=2, BLOCK=IO_BLOCK, OFF64=off64), num_warps=4, num_stages=1)
    assert torch.equal(x.cpu(), F.pixel_unshuffle(src, 2).permute(0, 2, 3, 1).half())
    out = torch.rand(2, 5, 3, 7, generator=g)  # (N, H, W, 7): the first 3 channels are the image
    dst = torch.empty(2, 3, 5, 3, device=DEVICE)
    launch(nhwc_to_nchw_kernel, (1,), [out.to(DEVICE), dst, 3, 15, 7, dst.numel()],
           dict(BLOCK=IO_BLOCK, OFF64=off64), num_warps=4, num_stages=1)
    assert torch.equal(dst.cpu(), out[..., :3].permute(0, 3, 1, 2))
    a, b = torch.randn(3000, generator=g), torch.randn(3000, generator=g)
    blend = torch.empty(3000, device=DEVICE)
    launch(lerp_kernel, (3,), [a.to(DEVICE), b.to(DEVICE), blend, 3000, 0.3],
           dict(QUANTIZE=False, BLOCK=1024, OFF64=off64), num_warps=4, num_stages=1)
    assert (blend.cpu().double() - (0.7 * a.double() + 0.3 * b.double())).abs().max() < 1e-6


CHILD = """
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from kernels.packing import to_nchw

S = 2**30  # elements from one pixel to the next: the third pixel starts at element 2**31
big = torch.empty(2 * S + 64, dtype=torch.float16)  # 4 GiB of address space, a few pages touched
out = big.as_strided((1, 1, 3, 3), (3 * S, 3 * S, S, 1))
for p in range(3):
    out[0, 0, p] = torch.tensor([p + 0.25, p + 0.5, p + 0.75])
dst = torch.full((1, 3, 1, 3), -1.0)
to_nchw(out, dst)
print(dst.flatten().tolist())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="relies on lazily committed memory (Linux overcommit)")
def test_an_output_read_past_element_2_31_lands_where_it_should() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode} (a wrapped offset): {proc.stderr[-2000:]}"
    got = [float(v) for v in proc.stdout.strip().splitlines()[-1].strip("[]").split(",")]
    assert got == [p + (c + 1) / 4 for c in range(3) for p in range(3)]
