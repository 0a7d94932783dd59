"""Benchmarks of the fused Triton kernels (`kernels.conv`) and of the whole fused forward (`kernels.rrdbnet`), each
checked against PyTorch in float64.

On a CUDA GPU: rrdb23's real shapes (nf 64, gc 32, 960×540 input → 4K at ×4, fp16, as bench/kernels.py), timed by
the host clock around a `torch.cuda.synchronize()`. Without one, Triton runs under its interpreter (tests/conftest.py),
which only checks results: tiny shapes in fp32, and with benchmarks enabled these tests skip. Groups:

    conv: rdb conv1..4 (… → 32, lrelu)   conv3x3 reading its RDB buffer's prefix, writing its gc slice
    conv5: rdb conv5 (192→64, x + 0.2·conv)   into the next RDB's prefix, with the residual epilogue
    upconv ×2 (64→64, lrelu)             upconv2x: nearest ×2 + conv3x3 folded into four 2×2 phase convs
    conv_hr (64→64, lrelu) at ×4         conv3x3 at the output resolution
    forward rrdb23 fp16                  FusedRRDBNet (without a GPU: forward tiny_x4 fp32, the shipped model)

extra_info: shapes, dtype, device, flops (as the PyTorch reference computes them: an upconv counts as a 3×3 conv on
the ×2 tensor) and, when timed, tflops at the median. CI runs these once each with `--benchmark-disable`; to time
and compare (GPU):

    python -m pytest tests/bench --benchmark-enable --benchmark-autosave
    pytest-benchmark compare 0001 0002 --group-by=group
    python -m pytest tests/bench --benchmark-enable --benchmark-compare=0001 --benchmark-compare-fail=median:10%
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytest_benchmark")

import engine.models as M  # noqa: E402
from engine.models.flops import macs_per_pixel  # noqa: E402
from kernels.conv import conv3x3, fold_upconv_weight, pack_conv_weight, upconv2x  # noqa: E402
from kernels.rrdbnet import FusedRRDBNet, fused_flops  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
DTYPE = torch.float16 if GPU else torch.float32
DTYPE_NAME = {torch.float16: "fp16", torch.float32: "fp32"}[DTYPE]
NF, GC = 64, 32  # rrdb23's feature and growth channels, on both
LR = (540, 960) if GPU else (7, 9)  # (H, W) of the network input; 63 pixels: one partial 64-pixel tile
HR = (4 * LR[0], 4 * LR[1]) if GPU else (12, 12)  # conv_hr's resolution (×4; on the CPU just small)
WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "tiny_x4.safetensors"


@pytest.fixture(autouse=True)
def _gpu_to_time(benchmark: Any) -> None:
    if not GPU and not benchmark.disabled:
        benchmark.skipped = True  # pytest-benchmark: no "fixture was not used" warning
        pytest.skip("Triton kernels are timed on a CUDA GPU; the interpreter is not a benchmark")


def _rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DTYPE).to(DEVICE)


def _f64(nhwc: torch.Tensor) -> torch.Tensor:
    """An NHWC buffer as NCHW float64 (on its device: the GPU computes the references of the 4K shapes)."""
    return nhwc.double().permute(0, 3, 1, 2)


def _tol(ref: torch.Tensor) -> float:
    """tests/test_kernels.py's: fp32 1e-5, fp16 2 ulps of the output's largest magnitude."""
    if DTYPE == torch.float32:
        return 1e-5 * max(1.0, float(ref.abs().max()))
    return 2 * 2.0**-10 * max(1.0, float(ref.abs().max()))


def _synced(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`fn`, then wait for the GPU: pytest-benchmark times with the host clock."""
    def call() -> torch.Tensor:
        out = fn()
        if GPU:
            torch.cuda.synchronize()
        return out
    return call


def _conv_info(cin: int, cout: int, h: int, w: int, up: int = 1) -> dict[str, Any]:
    return dict(input=[1, h, w, cin], output=[1, h * up, w * up, cout], weight=[cout, cin, 3, 3], layout="NHWC",
                dtype=DTYPE_NAME, device=torch.cuda.get_device_name() if GPU else "cpu (triton interpreter)",
                flops=2 * (h * up) * (w * up) * 9 * cin * cout)


@pytest.mark.parametrize("j", range(4), ids=[f"conv{j + 1}" for j in range(4)])
def test_rdb_conv(measure: Callable[..., Any], j: int) -> None:
    """conv_{j+1} of an RDB: reads channels [0, cin) of the RDB's nf + 4·gc buffer, writes [cin, cin + gc)."""
    h, w = LR
    cin = NF + j * GC
    buf = _rand(1, h, w, NF + 4 * GC, seed=0)
    wt, b = _rand(GC, cin, 3, 3, seed=1, scale=0.05), _rand(GC, seed=2)
    packed, before = pack_conv_weight(wt), buf.clone()
    out = measure(_synced(lambda: conv3x3(buf, packed, b, buf, cin=cin, cout=GC, y_channel=cin, act="lrelu",
                                          slope=0.2)),
                  group=f"conv: rdb conv{j + 1} ({cin}→{GC}, lrelu)", **_conv_info(cin, GC, h, w))
    ref = F.leaky_relu(F.conv2d(_f64(before[..., :cin]), wt.double(), b.double(), padding=1), 0.2)
    assert (_f64(out[..., cin:cin + GC]) - ref).abs().max() <= _tol(ref)
    assert torch.equal(out[..., :cin], before[..., :cin]) and torch.equal(out[..., cin + GC:], before[..., cin + GC:])


def test_conv5(measure: Callable[..., Any]) -> None:
    """conv5 of an RDB: all nf + 4·gc channels → x + 0.2·conv5 in the next RDB buffer's prefix."""
    h, w = LR
    cin = NF + 4 * GC
    x, nxt = _rand(1, h, w, cin, seed=0), torch.zeros(1, h, w, cin, dtype=DTYPE, device=DEVICE)
    wt, b = _rand(NF, cin, 3, 3, seed=1, scale=0.05), _rand(NF, seed=2)
    packed = pack_conv_weight(wt)
    out = measure(_synced(lambda: conv3x3(x, packed, b, nxt, cin=cin, cout=NF, res1=x[..., :NF], res1_scale=0.2)),
                  group=f"conv5: rdb conv5 ({cin}→{NF}, x + 0.2·conv)", **_conv_info(cin, NF, h, w))
    ref = _f64(x[..., :NF]) + 0.2 * F.conv2d(_f64(x), wt.double(), b.double(), padding=1)
    assert (_f64(out[..., :NF]) - ref).abs().max() <= _tol(ref)


def test_upconv2x(measure: Callable[..., Any]) -> None:
    """nearest ×2 + conv3x3 + lrelu, as four 2×2 phase convs on the low-resolution grid."""
    h, w = LR
    x = _rand(1, h, w, NF, seed=0)
    wt, b = _rand(NF, NF, 3, 3, seed=1, scale=0.05), _rand(NF, seed=2)
    phases = fold_upconv_weight(wt.double(), DTYPE)
    y = torch.zeros(1, 2 * h, 2 * w, NF, dtype=DTYPE, device=DEVICE)
    out = measure(_synced(lambda: upconv2x(x, phases, b, y, cin=NF, cout=NF, act="lrelu", slope=0.2)),
                  group=f"upconv ×2 ({NF}→{NF}, lrelu)", **_conv_info(NF, NF, h, w, up=2))
    up = F.interpolate(_f64(x), scale_factor=2, mode="nearest")
    ref = F.leaky_relu(F.conv2d(up, wt.double(), b.double(), padding=1), 0.2)
    # fp16: the folded taps are rounded once more than the reference's (tests/test_kernels.py: 2× the tolerance)
    assert (_f64(out) - ref).abs().max() <= _tol(ref) * (1 if DTYPE == torch.float32 else 2)


def test_conv_hr(measure: Callable[..., Any]) -> None:
    """conv_hr: nf → nf + lrelu at the output resolution."""
    h, w = HR
    x = _rand(1, h, w, NF, seed=0)
    wt, b = _rand(NF, NF, 3, 3, seed=1, scale=0.05), _rand(NF, seed=2)
    packed, y = pack_conv_weight(wt), torch.zeros(1, h, w, NF, dtype=DTYPE, device=DEVICE)
    out = measure(_synced(lambda: conv3x3(x, packed, b, y, cin=NF, cout=NF, act="lrelu", slope=0.2)),
                  group=f"conv_hr ({NF}→{NF}, lrelu) at ×4", **_conv_info(NF, NF, h, w))
    ref = F.leaky_relu(F.conv2d(_f64(x), wt.double(), b.double(), padding=1), 0.2)
    assert (_f64(out) - ref).abs().max() <= _tol(ref)


def test_forward_fused(measure: Callable[..., Any]) -> None:
    """The whole forward from the kernels: rrdb23 at 960×540 in fp16 on a GPU; the shipped tiny_x4 on 3×5 pixels in
    fp32 under the interpreter."""
    if GPU:
        torch.manual_seed(0)
        name, net, (h, w) = "rrdb23", M.create("rrdb23").eval(), LR
    else:
        name, net, (h, w) = "tiny_x4", M.load(WEIGHTS)[0].eval(), (3, 5)
    assert isinstance(net, M.RRDBNet)
    plan = FusedRRDBNet(net, dtype=DTYPE, device=DEVICE)
    x = torch.rand(1, net.in_channels, h, w, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    out = measure(_synced(lambda: plan(x)), group=f"forward {name} {DTYPE_NAME}", flops=2 * macs_per_pixel(net) * h * w,
                  fused_flops=fused_flops(plan, 1, h, w), input=list(x.shape),
                  output=[1, net.out_channels, h * net.scale, w * net.scale], dtype=DTYPE_NAME,
                  device=torch.cuda.get_device_name() if GPU else "cpu (triton interpreter)", launches=plan.launches())
    with torch.no_grad():
        ref = copy.deepcopy(net).to(DEVICE).double()(x.double())
    assert out.shape == ref.shape
    # tests/test_kernels.py's for the fused RRDBNet: fp32 1e-5; fp16 8 ulps of the largest output (rrdb23 fp16 under
    # the interpreter at 4×4 pixels: 2.4 ulps)
    tol = 1e-5 if DTYPE == torch.float32 else 8 * 2.0**-10 * max(1.0, float(ref.abs().max()))
    assert (out.double() - ref).abs().max() <= tol
