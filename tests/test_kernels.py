"""The fused Triton kernels against PyTorch float64 references (under TRITON_INTERPRET=1 on the CPU, for real on a
GPU), the whole RRDBNet forward from them, set_alpha, the launch/traffic count per RDB, and compilation for sm_90.

Tolerances: fp32 kernels accumulate in fp32 over K ≤ 9·(nf + 4·gc) products: 1e-5 absolute on outputs of order 1.
fp16 kernels: the reference is computed in float64 from the same fp16-rounded inputs and weights, so what is left
is the fp32 accumulation and the final rounding to fp16: 2 ulps of the output's largest magnitude (2·2⁻¹⁰·max|y|),
plus, where a residual is added after rounding, its own ulp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from util import randomize_

import engine.models as M
from kernels.conv import conv2d, conv3x3, fold_upconv_weight, pack_conv_weight, record_launches, upconv2x
from kernels.packing import lerp_
from kernels.rrdbnet import FusedRRDBNet, fused_flops
from kernels.srresnet import FusedSRResNet

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]


def _tol(ref: torch.Tensor, dtype: torch.dtype) -> float:
    if dtype == torch.float32:
        return 1e-5 * max(1.0, float(ref.abs().max()))
    return 2 * 2.0**-10 * max(1.0, float(ref.abs().max()))


def _nchw64(t: torch.Tensor) -> torch.Tensor:
    return t.double().permute(0, 3, 1, 2).cpu()


def _rand(*shape: int, dtype: torch.dtype, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


# ---------------------------------------------------------------------------------------------------------
# conv3x3: prefix reads, slice writes, epilogues


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,h,w,cin,cout", [(1, 1, 1, 8, 16), (2, 5, 7, 24, 20), (3, 9, 4, 64, 32), (1, 6, 6, 3, 16)])
def test_conv3x3_reads_a_prefix_and_writes_a_slice(dtype: torch.dtype, n: int, h: int, w: int, cin: int,
                                                   cout: int) -> None:
    x = _rand(n, h, w, cin + 5, dtype=dtype)  # wider than the conv reads
    wt, b = _rand(cout, cin, 3, 3, dtype=dtype, seed=1, scale=0.1), _rand(cout, dtype=dtype, seed=2)
    y = torch.full((n, h, w, cout + 7), 7.0, dtype=dtype, device=DEVICE)
    conv3x3(x, pack_conv_weight(wt), b, y, cin=cin, cout=cout, y_channel=3, act="lrelu", slope=0.2)
    ref = F.leaky_relu(F.conv2d(_nchw64(x[..., :cin]), wt.double().cpu(), b.double().cpu(), padding=1), 0.2)
    got = _nchw64(y[..., 3:3 + cout])
    assert (got - ref).abs().max() <= _tol(ref, dtype)
    assert (y[..., :3] == 7).all() and (y[..., 3 + cout:] == 7).all()  # nothing outside the slice is touched


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3x3_residual_epilogues_in_place(dtype: torch.dtype) -> None:
    n, h, w, cin, cout = 2, 5, 6, 40, 16
    x = _rand(n, h, w, cin, dtype=dtype)
    wt, b = _rand(cout, cin, 3, 3, dtype=dtype, seed=1, scale=0.1), _rand(cout, dtype=dtype, seed=2)
    y = _rand(n, h, w, cout + 4, dtype=dtype, seed=3)
    before = y.clone()
    r2 = _rand(n, h, w, cout, dtype=dtype, seed=4)
    # y[..., 4:] = r2 + 0.2·(y[..., 4:] + 0.2·conv): res1 aliases the output slice
    conv3x3(x, pack_conv_weight(wt), b, y, cin=cin, cout=cout, y_channel=4, res1=y[..., 4:], res1_scale=0.2,
            res2=r2, res2_scale=0.2)
    conv = F.conv2d(_nchw64(x), wt.double().cpu(), b.double().cpu(), padding=1)
    ref = _nchw64(r2) + 0.2 * (_nchw64(before[..., 4:]) + 0.2 * conv)
    assert (_nchw64(y[..., 4:]) - ref).abs().max() <= _tol(ref, dtype)
    assert torch.equal(y[..., :4], before[..., :4])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,factor", [("prelu", 2), ("lrelu", 2), ("relu", 3), ("none", 2)])
def test_conv3x3_pixel_shuffle_in_the_store(dtype: torch.dtype, act: str, factor: int) -> None:
    n, h, w, cin, c = 2, 4, 5, 16, 8
    cout = c * factor * factor
    x = _rand(n, h, w, cin, dtype=dtype)
    wt, b = _rand(cout, cin, 3, 3, dtype=dtype, seed=1, scale=0.1), _rand(cout, dtype=dtype, seed=2)
    slope = (torch.rand(c, generator=torch.Generator().manual_seed(5))).to(dtype).to(DEVICE)
    y = torch.zeros(n, h * factor, w * factor, c, dtype=dtype, device=DEVICE)
    conv3x3(x, pack_conv_weight(wt), b, y, cin=cin, cout=cout, shuffle=factor, act=act,
            slope=slope if act == "prelu" else 0.1)
    ref = F.pixel_shuffle(F.conv2d(_nchw64(x), wt.double().cpu(), b.double().cpu(), padding=1), factor)
    ref = {"prelu": lambda t: F.prelu(t, slope.double().cpu()), "lrelu": lambda t: F.leaky_relu(t, 0.1),
           "relu": F.relu, "none": lambda t: t}[act](ref)
    assert (_nchw64(y) - ref).abs().max() <= _tol(ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv9x9_with_batch_norm_and_prelu(dtype: torch.dtype) -> None:
    """SRGAN's first conv (9×9, 3 input channels) and its blocks' conv → batch norm → PReLU, in one epilogue."""
    n, h, w, cin, cout = 2, 6, 5, 3, 16
    x = _rand(n, h, w, cin, dtype=dtype)
    wt, b = _rand(cout, cin, 9, 9, dtype=dtype, seed=1, scale=0.1), _rand(cout, dtype=dtype, seed=2)
    g = torch.Generator().manual_seed(3)
    bn = torch.stack([torch.rand(cout, generator=g) + 0.5, torch.randn(cout, generator=g) * 0.1,
                      torch.randn(cout, generator=g) * 0.1, torch.rand(cout, generator=g) + 0.5]).to(dtype)
    slope = torch.rand(cout, generator=g).to(dtype)
    y = torch.zeros(n, h, w, cout, dtype=dtype, device=DEVICE)
    conv2d(x, pack_conv_weight(wt), b, y, cin=cin, cout=cout, ksize=9, bn=bn.to(DEVICE).contiguous(), bn_eps=1e-5,
           act="prelu", slope=slope.to(DEVICE))
    conv = F.conv2d(_nchw64(x), wt.double().cpu(), b.double().cpu(), padding=4)
    gamma, beta, mean, var = bn.double()
    ref = F.prelu(F.batch_norm(conv, mean, var, gamma, beta, eps=1e-5), slope.double())
    assert (_nchw64(y) - ref).abs().max() <= _tol(ref, dtype)


# ---------------------------------------------------------------------------------------------------------
# upsampling without upsampled tensors


def test_phase_folding_is_the_nearest_upsampling_identity_in_float64() -> None:
    """The math, without any kernel: four 2×2 convs of the folded taps, interleaved, equal conv3×3(nearest ×2)."""
    g = torch.Generator().manual_seed(0)
    x, wt = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64), torch.randn(4, 5, 3, 3, generator=g,
                                                                                 dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), wt, padding=1)
    phases = fold_upconv_weight(wt).reshape(2, 2, 2, 2, 5, 4)  # (py, px, ty, tx, ci, co)
    out = torch.zeros_like(ref)
    for py in range(2):
        for px in range(2):
            k = phases[py, px].permute(3, 2, 0, 1)  # (co, ci, ty, tx)
            padded = F.pad(x, (1 - px, px, 1 - py, py))  # taps at offsets (p − 1, p)
            out[..., py::2, px::2] = F.conv2d(padded, k)
    assert (out - ref).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (2, 5, 7), (1, 4, 9)])
def test_upconv2x_equals_nearest_then_conv(dtype: torch.dtype, n: int, h: int, w: int) -> None:
    cin, cout = 32, 24
    x = _rand(n, h, w, cin + 8, dtype=dtype)
    wt, b = _rand(cout, cin, 3, 3, dtype=dtype, seed=1, scale=0.1), _rand(cout, dtype=dtype, seed=2)
    y = torch.zeros(n, 2 * h, 2 * w, cout, dtype=dtype, device=DEVICE)
    upconv2x(x, fold_upconv_weight(wt.double(), dtype), b, y, cin=cin, cout=cout, act="lrelu", slope=0.2)
    up = F.interpolate(_nchw64(x[..., :cin]), scale_factor=2, mode="nearest")
    ref = F.leaky_relu(F.conv2d(up, wt.double().cpu(), b.double().cpu(), padding=1), 0.2)
    # fp16: the folded taps are sums of up to 4 taps rounded once to fp16, one more rounding than the reference's
    tol = _tol(ref, dtype) * (1 if dtype == torch.float32 else 2)
    assert (_nchw64(y) - ref).abs().max() <= tol


def test_bad_arguments_name_the_fix() -> None:
    x = torch.zeros(1, 4, 4, 8)
    with pytest.raises(ValueError, match="pack_conv_weight"):
        conv3x3(x, torch.zeros(8, 8), torch.zeros(8), torch.zeros(1, 4, 4, 8), cin=8, cout=8)
    with pytest.raises(ValueError, match=r"y must be an NHWC buffer of shape \(1, 8, 8, ≥8\)"):
        upconv2x(x, fold_upconv_weight(torch.zeros(8, 8, 3, 3)), torch.zeros(8), torch.zeros(1, 4, 4, 8), cin=8,
                 cout=8)
    with pytest.raises(ValueError, match="one slope per output channel"):
        conv3x3(x, pack_conv_weight(torch.zeros(8, 8, 3, 3)), torch.zeros(8), torch.zeros(1, 4, 4, 8), cin=8,
                cout=8, act="prelu", slope=0.2)


# ---------------------------------------------------------------------------------------------------------
# the whole RRDBNet


def _rrdb(seed: int, **kw: object) -> M.SRNet:
    torch.manual_seed(seed)
    return M.create("rrdb6", num_block=2, num_feat=16, num_grow_ch=8, **kw).eval()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(scale=4), dict(scale=2), dict(scale=2, pixel_unshuffle=False)],
                         ids=["x4", "x2-unshuffle", "x2-upconv"])
def test_fused_rrdbnet_matches_the_reference(dtype: torch.dtype, kw: dict) -> None:
    net = _rrdb(0, **kw)
    plan = FusedRRDBNet(net, dtype=dtype, device=DEVICE)
    x = torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net.double()(x.double())
    got = plan(x.to(DEVICE)).double().cpu()
    assert got.shape == ref.shape
    # ~10 layers deep: each layer's rounding adds; a few fp16 ulps of the output, measured 1e-4 here
    tol = 1e-5 if dtype == torch.float32 else 8 * 2.0**-10 * max(1.0, float(ref.abs().max()))
    assert (got - ref).abs().max() <= tol


def test_set_alpha_equals_the_interpolated_checkpoint() -> None:
    net, gan = _rrdb(0), _rrdb(1)
    plan = FusedRRDBNet(net, dtype=torch.float32, device=DEVICE, gan_net=gan)
    live = plan.params.live.data_ptr()
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for alpha in (0.3, 1.0, 0.0):
        plan.set_alpha(alpha)
        blended = _rrdb(0)
        blended.load_state_dict(M.interpolate(net, gan, alpha))
        with torch.no_grad():
            ref = blended.double()(x.double())
        assert (plan(x.to(DEVICE)).double().cpu() - ref).abs().max() < 1e-5
    assert plan.params.live.data_ptr() == live  # rewritten in place: a captured graph keeps its addresses


def _srgan(seed: int, **kw: object) -> M.SRNet:
    torch.manual_seed(seed)
    net = M.create("srgan", num_block=2, num_feat=16, **kw).eval()
    randomize_(net, seed + 10)
    return net


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(), dict(scale=3, prelu_per_channel=True)], ids=["x4", "x3-prelu-per-channel"])
def test_fused_srresnet_matches_the_reference_and_blends(dtype: torch.dtype, kw: dict) -> None:
    net, gan = _srgan(0, **kw), _srgan(1, **kw)
    plan = FusedSRResNet(net, dtype=dtype, device=DEVICE, gan_net=gan)
    x = torch.rand(2, 3, 3, 4, generator=torch.Generator().manual_seed(0))
    tol = 1e-5 if dtype == torch.float32 else 8 * 2.0**-10
    with torch.no_grad():
        assert (plan(x.to(DEVICE)).double().cpu() - net.double()(x.double())).abs().max() <= tol
        plan.set_alpha(0.4)
        blended = _srgan(0, **kw)
        blended.load_state_dict(M.interpolate(net, gan, 0.4))
        assert (plan(x.to(DEVICE)).double().cpu() - blended.double()(x.double())).abs().max() <= tol
    with record_launches() as launches:
        plan(x.to(DEVICE))
    assert len(launches) == plan.launches() == 1 + 2 * 2 + 1 + len(plan.factors) + 1


def test_lerp_kernel_blends_in_fp32() -> None:
    a = torch.randn(3000, generator=torch.Generator().manual_seed(0)).half().to(DEVICE)
    b = torch.randn(3000, generator=torch.Generator().manual_seed(1)).half().to(DEVICE)
    out = torch.empty_like(a)
    lerp_(out, a, b, 0.3)
    ref = (0.7 * a.double() + 0.3 * b.double()).half()
    assert (out.double() - ref.double()).abs().max() <= 2.0**-10 * 4  # one fp16 rounding of an fp32 blend


def test_each_rdb_is_five_launches_moving_the_predicted_bytes() -> None:
    plan = FusedRRDBNet(_rrdb(0), dtype=torch.float16, device=DEVICE)
    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(2))
    with record_launches() as launches:
        plan(x.to(DEVICE))
    assert len(launches) == plan.launches() == 1 + 15 * 2 + 1 + 2 + 2
    for r in range(6):  # 2 RRDBs × 3 RDBs, after conv_first
        rdb = launches[1 + 5 * r: 1 + 5 * (r + 1)]
        predicted = plan.rdb_traffic(1, 5, 7, rrdb_last=r % 3 == 2)
        assert [(d["cin"], d["cout"]) for d in rdb] == [(16, 8), (24, 8), (32, 8), (40, 8), (48, 16)]
        assert sum(d["bytes_read"] for d in rdb) == predicted["bytes_read"]
        assert sum(d["bytes_written"] for d in rdb) == predicted["bytes_written"]
    assert sum(d["flops"] for d in launches) == fused_flops(plan, 1, 5, 7)
    # nf=16, gc=8, 35 pixels, fp16: (16+24+32+40+48 + 16) channels read, (4·8 + 16) written, ×35×2 bytes
    assert plan.rdb_traffic(1, 5, 7)["bytes_read"] == 176 * 35 * 2
    assert plan.rdb_traffic(1, 5, 7)["bytes_written"] == 48 * 35 * 2


# ---------------------------------------------------------------------------------------------------------
# compiled for Hopper


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_spills() -> None:
    """`python -m kernels.compile`: every variant the programs launch at 960×540, as the JIT specializes it, and the
    tap-reuse alternative of each conv, for fp16 (with the INT8 program), bf16 and fp32."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    rows = []
    for dtype in ("fp16", "bf16", "fp32"):
        proc = subprocess.run([sys.executable, "-m", "kernels.compile", "--json", "--dtype", dtype], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows += json.loads(proc.stdout.strip().splitlines()[-1])
    for r in rows:
        print(f"{r['kernel']} [{r['dtype']}] {r['blocks']}: {r['registers']} registers, {r['spill_bytes']} spill "
              f"bytes, {r['shared_bytes']} shared bytes, {r['cp_async']} cp.async, {r['wgmma']} wgmma: {r['layers']}")
    spilled = [f"{r['kernel']} [{r['dtype']}] {r['blocks']}: {r['spill_bytes']} bytes"
               for r in rows if r["spill_bytes"]]
    assert not spilled, f"register spills: {spilled}"
    layers = {layer for r in rows if r["launched"] and r["dtype"] == "fp16" for layer in r["layers"]}
    for want in ("rrdbnet ×4: conv3x3 64→32 lrelu", "rrdbnet ×4: conv3x3 192→64 +res1 +res2",
                 "rrdbnet ×4: upconv2x 64→64 lrelu", "srvgg ×4: conv3x3 64→48 shuffle×4 +res1 (low-res)",
                 "srresnet ×4: conv9x9 3→64 prelu", "rrdbnet ×4 int8: conv3x3 192→64 int8 +res1 +res2 →int8",
                 "rrdbnet ×4: lerp_kernel", "rrdbnet ×4 int8: lerp_pair_kernel"):
        assert want in layers, f"{want} is not among the compiled launches"
    convs = [r for r in rows if r["kernel"] == "conv_kernel"]
    assert {r["launched"] for r in convs} == {True, False}  # the tap-reuse alternatives are compiled too
    tensor_core = [r for r in convs if r["dtype"] != "fp32"]
    assert all(r["wgmma"] for r in tensor_core), "fp16/bf16/int8 convs should use wgmma on sm_90"
    # aligned channel blocks are copied to shared memory asynchronously (16-byte cp.async), conv_first's 3·r²
    # masked channels too, in smaller pieces
    assert all(r["cp_async"] for r in tensor_core)


# ---------------------------------------------------------------------------------------------------------
# the triton backend: engine.infer, engine.build --backend triton, the upscale CLI


def test_triton_backend_in_infer_equals_pytorch_and_refits() -> None:
    import numpy as np

    import engine
    from engine.backends.fused import TritonBackend

    net, gan = _rrdb(0), _rrdb(1)
    backend = TritonBackend(net, device=DEVICE, dtype="fp32", gan_net=gan)
    assert isinstance(backend, engine.Backend) and backend.bytes_per_pixel() > 0
    image = (np.random.default_rng(0).random((10, 9, 3)) * 255).astype(np.uint8)
    blended = _rrdb(0)
    blended.load_state_dict(M.interpolate(net, gan, 0.5))
    out = engine.infer(backend, image, tile=8, tile_overlap=2, alpha=0.5)
    ref = engine.infer(engine.TorchBackend(blended), image, tile=8, tile_overlap=2)
    assert backend.alpha == 0.5 and backend.last_refit_seconds is not None
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_build_and_load_a_triton_engine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import engine
    from engine.build import main as build_main

    M.save(_srgan(0), tmp_path / "a.safetensors")
    M.save(_srgan(1), tmp_path / "b.safetensors")
    out = tmp_path / "eng"
    assert build_main(["--weights", str(tmp_path / "a.safetensors"), "--gan-weights", str(tmp_path / "b.safetensors"),
                       "--alpha", "0.5", "--backend", "triton", "--fp32", "--tile", "8", "-o", str(out)]) == 0
    assert "verified: max abs difference" in capsys.readouterr().out
    eng = engine.load(out)
    assert eng.manifest["backend"] == "triton" and eng.alpha == 0.5
    x = torch.rand(1, 3, 3, 4, generator=torch.Generator().manual_seed(3))
    eng.set_alpha(1.0)
    with torch.no_grad():
        ref = _srgan(1).double()(x.double())
    assert (eng.run(x.to(DEVICE)).double().cpu() - ref).abs().max() < 1e-5
    assert build_main(["--weights", str(tmp_path / "a.safetensors"), "--backend", "triton", "--int8", "--calib",
                       str(tmp_path), "-o", str(tmp_path / "int8")]) == 2
    assert "the fused srresnet program runs fp16, bf16, fp32, not int8" in capsys.readouterr().err


def test_build_and_load_an_int8_triton_engine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import cv2
    import numpy as np
    import skimage.data

    import engine
    from engine.build import main as build_main

    M.save(_rrdb(0), tmp_path / "a.safetensors")
    M.save(_rrdb(1), tmp_path / "b.safetensors")
    (tmp_path / "calib").mkdir()
    cv2.imwrite(str(tmp_path / "calib" / "astronaut.png"), skimage.data.astronaut()[::16, ::16, ::-1])
    out = tmp_path / "int8"
    assert build_main(["--weights", str(tmp_path / "a.safetensors"), "--gan-weights", str(tmp_path / "b.safetensors"),
                       "--backend", "triton", "--int8", "--calib", str(tmp_path / "calib"), "--tile", "8",
                       "--no-verify", "-o", str(out)]) == 0
    assert "one range per RDB slice" in capsys.readouterr().out
    eng = engine.load(out)
    assert eng.manifest["int8"]["alpha_safe"] and len(eng.manifest["int8"]["slice_ranges"]) == 31
    x = torch.from_numpy((skimage.data.chelsea()[100:104, 150:154].transpose(2, 0, 1)[None] / 255)
                         .astype(np.float32))
    eng.set_alpha(1.0)
    with torch.no_grad():
        ref = _rrdb(1)(x)
    snr = float(10 * torch.log10(ref.var() / (eng.run(x.to(DEVICE)).cpu() - ref).pow(2).mean()))
    assert snr > 30


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_triton_backend_without_a_gpu_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import engine.models as M\nfrom engine.backends.fused import TritonBackend\n"
            "TritonBackend(M.create('rrdb6', num_block=1, num_feat=8, num_grow_ch=4))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "runs its kernels on a CUDA GPU; this machine has none" in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# INT8


def test_int8_conv_requantizes_exactly_as_the_math_says() -> None:
    """int8 × int8 → int32, per-channel dequantization, bias, LeakyReLU, an int8 residual, requantization."""
    g = torch.Generator().manual_seed(0)
    n, h, w, cin, cout = 2, 5, 6, 64, 32
    xq = torch.randint(-127, 128, (n, h, w, cin + 32), generator=g).to(torch.int8).to(DEVICE)
    wq = torch.randint(-127, 128, (cout, cin, 3, 3), generator=g).to(torch.int8)
    wscale = (torch.rand(cout, generator=g) * 2e-5 + 1e-5).float()
    bias = (torch.randn(cout, generator=g) * 0.1).half()
    r1 = torch.randint(-127, 128, (n, h, w, cout), generator=g).to(torch.int8).to(DEVICE)
    y = torch.zeros(n, h, w, cout + 32, dtype=torch.int8, device=DEVICE)
    conv3x3(xq, pack_conv_weight(wq).to(DEVICE), bias.to(DEVICE), y, cin=cin, cout=cout, y_channel=32, act="lrelu",
            wscale=wscale.to(DEVICE), res1=r1, res1_scale=0.2, res1_dq=0.01, out_scale=0.02)
    acc = F.conv2d(_nchw64(xq[..., :cin]), wq.double(), padding=1)
    out = F.leaky_relu(acc * wscale.double()[:, None, None] + bias.double()[:, None, None], 0.2)
    out = _nchw64(r1) * 0.01 + 0.2 * out
    q = (torch.sign(out) * torch.floor(out.abs() / 0.02 + 0.5)).clamp(-127, 127)
    got = _nchw64(y[..., 32:])
    assert (q.abs() < 127).float().mean() > 0.9  # the scales put most values inside the int8 range
    # fp32 rounding of the epilogue may flip a value sitting on a rounding boundary by one step
    assert (got - q).abs().max() <= 1 and (got != q).float().mean() < 1e-3
    assert (y[..., :32] == 0).all()


def test_int8_rrdbnet_is_close_to_fp32_at_every_alpha_and_never_clips_a_weight() -> None:
    import numpy as np
    import skimage.data

    from export.quantize import rdb_slice_ranges
    from kernels.rrdbnet_int8 import FusedRRDBNetInt8

    net, gan = _rrdb(0), _rrdb(1)
    photos = [np.ascontiguousarray(skimage.data.astronaut()[::8, ::8]), np.ascontiguousarray(
        skimage.data.retina()[::8, ::8])]
    ranges = rdb_slice_ranges(net, photos, gan_net=gan, method="mse", crop=16, crops_per_image=2)
    alone = rdb_slice_ranges(net, photos, method="mse", crop=16, crops_per_image=2)
    assert set(ranges) == set(alone) and len(ranges) == 2 * 3 * 5 + 1
    assert all(ranges[k] >= alone[k] > 0 for k in ranges)  # maxed over the blends
    plan = FusedRRDBNetInt8(net, ranges, gan_net=gan, device=DEVICE)
    # alpha-safe: every blend of the scaled endpoints stays within ±127 before the clamp
    a, b = plan._ends_q
    for alpha in torch.linspace(0, 1, 11):
        assert float((a + alpha * (b - a)).abs().max()) <= 127 + 1e-4
    x = torch.from_numpy((skimage.data.chelsea()[100:106, 150:158].transpose(2, 0, 1)[None] / 255)
                         .astype(np.float32))
    for alpha in (0.0, 0.5, 1.0):
        plan.set_alpha(alpha)
        blended = _rrdb(0)
        blended.load_state_dict(M.interpolate(net, gan, alpha))
        with torch.no_grad():
            ref = blended(x)
        # signal-to-noise (a random small network's outputs are far below 1, so PSNR would flatter it)
        snr = float(10 * torch.log10(ref.var() / (plan(x.to(DEVICE)).cpu() - ref).pow(2).mean()))
        assert snr > 30, f"INT8 at alpha {alpha}: SNR {snr:.1f} dB against fp32"  # measured 38, 51, 46 dB
