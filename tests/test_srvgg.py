"""SRVGGNetCompact (arch "srvgg"): the class against an independent float64 forward, its detection from Real-ESRGAN's
key layout (and what it refuses), round trips, network interpolation, the ONNX emitter (fp32, fp16, INT8) and an
onnxruntime engine with alpha refit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from published_layouts import SRVGGOfficial, srvgg_math
from util import assert_round_trip, n_params, randomize_

import engine
import engine.models as M
from engine.build import main as build_main
from engine.models.formats import detect
from engine.models.shapes import FormatError
from export.onnx import export_onnx, refit_names_ok
from export.quantize import calibration_crops, first_last_convs, quantize

SMALL = dict(num_feat=8, num_conv=3, scale=4)


def _net(seed: int = 0, **hparams: Any) -> M.SRNet:
    net = M.build("srvgg", {**SMALL, **hparams})
    randomize_(net, seed=seed)
    return net


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run64(net: M.SRNet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.double()(x)


def _session(model: Any) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _psnr(got: np.ndarray, ref: np.ndarray) -> float:
    peak = float(ref.max() - ref.min())
    return 10 * float(np.log10(peak**2 / np.mean((got.astype(np.float64) - ref) ** 2)))


# ---------------------------------------------------------------------------------------------------------
# The network.


@pytest.mark.parametrize("act_type", ["prelu", "relu", "leakyrelu"])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_the_network_computes_the_published_forward(act_type: str, scale: int) -> None:
    net = _net(act_type=act_type, scale=scale)
    x = _x(2, 3, 5, 7)
    got = _run64(net, x)
    assert got.shape == (2, 3, 5 * scale, 7 * scale)
    ref = srvgg_math(net.state_dict(), x, scale=scale, act_type=act_type)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    # the body matters: the output is not just the upsampled input
    assert float((got - x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)).abs().max()) > 0.05


def test_the_activations_differ_so_the_reference_tells_them_apart() -> None:
    x = _x(1, 3, 6, 6)
    outs = {act: _run64(_net(act_type=act), x) for act in ("prelu", "relu", "leakyrelu")}
    assert float((outs["relu"] - outs["leakyrelu"]).abs().max()) > 1e-3
    assert float((outs["relu"] - outs["prelu"]).abs().max()) > 1e-3


def test_the_state_dict_is_real_esrgans() -> None:
    net = M.build("srvgg", dict(num_feat=8, num_conv=2, scale=2))
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        "body.0.weight": (8, 3, 3, 3), "body.0.bias": (8,), "body.1.weight": (8,),
        "body.2.weight": (8, 8, 3, 3), "body.2.bias": (8,), "body.3.weight": (8,),
        "body.4.weight": (8, 8, 3, 3), "body.4.bias": (8,), "body.5.weight": (8,),
        "body.6.weight": (12, 8, 3, 3), "body.6.bias": (12,),
    }
    relu = M.build("srvgg", dict(num_feat=8, num_conv=2, scale=2, act_type="relu"))
    assert list(relu.state_dict()) == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias",
                                       "body.4.weight", "body.4.bias", "body.6.weight", "body.6.bias"]
    official = SRVGGOfficial(3, 3, 8, 2, 2, "prelu")
    assert {k: v.shape for k, v in official.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_the_published_variants() -> None:
    general, anime = M.create("realesr-general-x4v3"), M.create("realesr-animevideov3")
    assert general.hparams == dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, scale=4, act_type="prelu")
    assert anime.hparams == dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, scale=4, act_type="prelu")
    # 1.21 M and 0.62 M parameters, as Real-ESRGAN's model zoo lists them
    assert (n_params(general), n_params(anime)) == (1_213_296, 621_424)
    assert M.registry.variant_name("srvgg", anime.hparams) == "realesr-animevideov3"


@pytest.mark.parametrize("hparams, words", [
    (dict(act_type="gelu"), "act_type must be one of prelu, relu, leakyrelu, got 'gelu'"),
    (dict(num_in_ch=1, num_out_ch=3), r"num_out_ch \(3\) must equal num_in_ch \(1\)"),
    (dict(act_type=3), "act_type=3 must be a short string"),
])
def test_bad_hyper_parameters_are_refused_by_name(hparams: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        M.build("srvgg", {**SMALL, **hparams})


# ---------------------------------------------------------------------------------------------------------
# Detection and round trips.


def test_round_trip_through_our_safetensors_and_real_esrgans_layout() -> None:
    checked = assert_round_trip("srvgg", [
        dict(SMALL),
        dict(num_feat=6, num_conv=1, scale=2, act_type="relu"),
        dict(num_feat=8, num_conv=2, scale=3, act_type="leakyrelu"),  # our metadata only: no tensor tells it
        dict(num_feat=4, num_conv=2, scale=1),
        dict(num_in_ch=1, num_out_ch=1, num_feat=5, num_conv=4, scale=2),  # last conv 4 = 1·2² channels
        dict(num_in_ch=4, num_out_ch=4, num_feat=8, num_conv=1, scale=4, act_type="relu"),
    ])
    assert checked == {"safetensors": 6, "bare": 5, "params_ema": 5, "realesrgan": 5}


def test_the_layout_row_claims_srvgg_and_nothing_else() -> None:
    sd = _net().state_dict()
    found = detect(sd)
    assert found is not None and (found.format, found.arch) == ("basicsr", "srvgg")
    for other in (M.create("rrdb6", num_block=1, num_feat=8, num_grow_ch=4), M.create("edsr", num_block=1),
                  M.create("rcan", num_group=1, num_block=1), M.create("msrresnet", num_block=1),
                  M.create("srgan", num_block=1)):
        assert detect(other.state_dict()).arch == other.arch  # type: ignore[union-attr]


def test_a_leakyrelu_net_in_a_bare_state_dict_is_read_as_relu() -> None:
    """ReLU and LeakyReLU have no tensors: the documented reading of a bare state dict is relu."""
    _, info = M.load(dict(_net(act_type="leakyrelu").state_dict()))
    assert info.hparams["act_type"] == "relu" and info.arch == "srvgg"


def _sd(**hparams: Any) -> dict[str, torch.Tensor]:
    return dict(_net(**hparams).state_dict())


@pytest.mark.parametrize("edit, words", [
    # a 3-channel input whose last conv gives 40 channels: 40 / 3 is no s²
    (lambda sd: sd.update({"body.8.weight": torch.zeros(40, 8, 3, 3), "body.8.bias": torch.zeros(40)}),
     "last conv body.8 gives 40 channels for a 3-channel input: not num_in_ch·scale²"),
    # the output has the input's channels: 48 = 3·4², but on a 1-channel input 48 is no square
    (lambda sd: sd.update({"body.0.weight": torch.zeros(8, 1, 3, 3)}),
     "gives 48 channels for a 1-channel input: not num_in_ch·scale²"),
    (lambda sd: sd.pop("body.3.weight"), r"PReLU weights at body indices \[1, 5, 7\]"),
    (lambda sd: sd.pop("body.4.weight"), r"convs at body indices \[0, 2, 6, 8\]"),
    (lambda sd: sd.update({"body.3.weight": torch.zeros(9)}), r"'body.3.weight' has shape \[9\]"),
    (lambda sd: sd.update({"body.9.weight": torch.zeros(8)}), "last weight is body.9"),
    (lambda sd: sd.update({"upsampler.weight": torch.zeros(1)}), "'upsampler.weight' has no place in the basicsr"),
])
def test_tensors_that_form_no_srvgg_are_refused(edit: Any, words: str) -> None:
    sd = _sd()
    edit(sd)
    with pytest.raises(FormatError, match=words):
        detect(sd)
    with pytest.raises(M.CheckpointError, match=words):
        M.load(sd)


# ---------------------------------------------------------------------------------------------------------
# Network interpolation.


def test_interpolation_blends_every_tensor_prelu_slopes_included() -> None:
    a, b = _net(0), _net(1)
    alpha = 0.3
    blended = M.interpolated(a, b, alpha)
    sa, sb = a.state_dict(), b.state_dict()
    for key, t in blended.state_dict().items():
        torch.testing.assert_close(t, ((1 - alpha) * sa[key].double() + alpha * sb[key].double()).float(),
                                   rtol=0, atol=0)
    x = _x(1, 3, 6, 5)
    mixed = {k: (1 - alpha) * sa[k].double() + alpha * sb[k].double() for k in sa}
    torch.testing.assert_close(_run64(blended, x), srvgg_math(mixed, x, scale=4, act_type="prelu"),
                               rtol=0, atol=1e-6)  # the blend is stored in float32
    assert float((_run64(a, x) - _run64(b, x)).abs().max()) > 0.05


# ---------------------------------------------------------------------------------------------------------
# ONNX.


@pytest.mark.parametrize("act_type", ["prelu", "relu", "leakyrelu"])
def test_onnx_graph_matches_torch_at_two_sizes(act_type: str) -> None:
    net = _net(act_type=act_type, scale=3)
    model = export_onnx(net.float())
    ops = {n.op_type for n in model.graph.node}
    act_op = {"prelu": "PRelu", "relu": "Relu", "leakyrelu": "LeakyRelu"}[act_type]
    assert {"Conv", act_op, "DepthToSpace", "Resize", "Add"} <= ops
    assert refit_names_ok(model, net)  # initializers are the state-dict keys
    session = _session(model)
    for shape in ((1, 3, 7, 5), (2, 3, 12, 16)):
        x = _x(*shape)
        got = session.run(None, {"input": x.float().numpy()})[0]
        ref = _run64(net, x).numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_fp16_onnx_graph_stays_close() -> None:
    net = _net().float()
    session = _session(export_onnx(net, precision="fp16", io_dtype="fp32"))
    for shape in ((1, 3, 6, 6), (1, 3, 9, 13)):
        x = _x(*shape)
        got = session.run(None, {"input": x.float().numpy()})[0]
        ref = _run64(net, x).numpy()
        # fp16 keeps ~3 decimal digits; the residual base (the input itself) is exact in fp16 to 1e-3
        assert np.abs(got - ref).max() < 1e-3 and _psnr(got, ref) > 80


def _images(n: int, seed: int) -> list[np.ndarray]:
    """Smooth random RGB images (uint8, 40×48): photos' low-pass look without any file."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = torch.from_numpy(rng.random((1, 3, 5, 6)))
        img = torch.nn.functional.interpolate(coarse, size=(40, 48), mode="bicubic", align_corners=False)
        out.append((img[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
    return out


def test_int8_graph_with_gan_weights_runs_and_stays_close_to_fp32() -> None:
    psnr_net, gan_net = _net(0).float(), _net(1).float()
    images = _images(4, seed=0)
    model = quantize(psnr_net, images[:3], gan_net=gan_net)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert convs == [f"body.{i}" for i in range(0, 10, 2)]
    assert first_last_convs(model) == {"body.0", "body.8"}  # kept in fp32
    quantized = {n.name.removeprefix("qdq/").removesuffix(".input.quantize") for n in model.graph.node
                 if n.op_type == "QuantizeLinear" and n.name.endswith(".input.quantize")}
    assert quantized == {"body.2", "body.4", "body.6"}
    assert refit_names_ok(model, psnr_net)
    x = calibration_crops(images[3:], channels=3, size=32)[0].numpy()  # an image not calibrated on
    got = _session(model).run(None, {"input": x})[0]
    ref = _session(export_onnx(psnr_net)).run(None, {"input": x})[0]
    assert _psnr(got, ref) > 50  # a scale off by a factor of two, or Q/DQ on the wrong tensor, loses far more
    assert np.abs(got - ref).max() > 0  # something was quantized


# ---------------------------------------------------------------------------------------------------------
# An onnxruntime engine built from two SRVGG checkpoints.


def test_an_engine_with_gan_weights_loads_runs_and_refits_alpha(tmp_path: Path) -> None:
    psnr_net, gan_net = _net(0).float(), _net(1).float()
    M.save(psnr_net, tmp_path / "a.safetensors")
    M.save(gan_net, tmp_path / "b.safetensors")
    out = tmp_path / "engine"
    assert build_main(["--weights", str(tmp_path / "a.safetensors"), "--gan-weights", str(tmp_path / "b.safetensors"),
                       "--backend", "onnxruntime", "--fp32", "--tile", "32", "-o", str(out)]) == 0
    eng = engine.load(out)
    assert eng.scale == 4
    x = _x(1, 3, 10, 12, seed=3).float()
    results = {}
    for alpha in (0.0, 0.4, 1.0):
        eng.set_alpha(alpha)
        got = eng.run(x).numpy()
        ref = _run64(M.interpolated(psnr_net, gan_net, alpha), x.double()).numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
        results[alpha] = got
    assert np.abs(results[0.0] - results[1.0]).max() > 0.05
