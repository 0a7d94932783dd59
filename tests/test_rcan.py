"""RCAN (Zhang et al., ECCV 2018): the published parameter count, the forward against a float64 re-implementation of
the paper's equations written here, the authors' checkpoint layout (RCAN_TrainCode / EDSR-PyTorch `model/rcan.py`,
written by tests/published_layouts.RCANOfficial) told apart from EDSR's and wrapped, truncated checkpoints refused
by key, and ONNX parity in ONNX Runtime. Every scale's round trip through our safetensors, BasicSR's keys and the
authors' layout is test_archs.py's."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from published_layouts import EDSROfficial, RCANOfficial, depth_to_space
from util import n_params, randomize_

import engine.models as M
from engine.models.formats import detect
from export.onnx import export_onnx, initializer_arrays, weight_names

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
SMALL = dict(num_group=2, num_block=2, num_feat=16, reduction=4)  # the ONNX and layout tests' small RCAN


def rcan_math(sd: dict[str, torch.Tensor], x: torch.Tensor, *, num_group: int, num_block: int,
              img_range: float = 255.0) -> torch.Tensor:
    """RCAN from the paper's equations in float64, on BasicSR key names:
    F0 = conv_first((x − mean)·range); per group g: h ← h + conv_g(RCAB_B(…RCAB_1(h))); RCAB: y = conv2(ReLU(conv1(h))),
    s = mean_{H,W}(y), w = σ(W_up·ReLU(W_down·s + b_down) + b_up), h + y·w; F = F0 + conv_after_body(body);
    upsample by conv + depth-to-space per stage; conv_last; /range + mean."""

    def conv(name: str, t: torch.Tensor) -> torch.Tensor:
        w = sd[f"{name}.weight"].double()
        return F.conv2d(t, w, sd[f"{name}.bias"].double(), padding=w.shape[-1] // 2)

    mean = torch.tensor(DIV2K_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    h = feat = conv("conv_first", (x.double() - mean) * img_range)
    for g in range(num_group):
        group_in = h
        for b in range(num_block):
            q = f"body.{g}.residual_group.{b}.rcab"
            y = conv(f"{q}.2", torch.clamp(conv(f"{q}.0", h), min=0))
            s = y.sum(dim=(2, 3), keepdim=True) / (y.shape[2] * y.shape[3])
            z = conv(f"{q}.3.attention.3", torch.clamp(conv(f"{q}.3.attention.1", s), min=0))
            h = h + y * (1 / (1 + torch.exp(-z)))
        h = group_in + conv(f"body.{g}.conv", h)
    h = feat + conv("conv_after_body", h)
    i = 0
    while f"upsample.{i}.weight" in sd:
        y = conv(f"upsample.{i}", h)
        h = depth_to_space(y, round((y.shape[1] / h.shape[1]) ** 0.5))
        i += 2
    return conv("conv_last", h) / img_range + mean


def _official(scale: int, nf: int = 16, ng: int = 3, nb: int = 2, reduction: int = 4, seed: int = 0) -> RCANOfficial:
    ref = randomize_(RCANOfficial(nf=nf, ng=ng, nb=nb, reduction=reduction, scale=scale), seed)
    ref.sub_mean.__init__(255.0, DIV2K_MEAN, -1)  # randomize_ touched the fixed mean shifts
    ref.add_mean.__init__(255.0, DIV2K_MEAN, 1)
    return ref.eval()


def _out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


X = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------------
# The network.


def test_rcan_variant_has_the_published_parameter_count() -> None:
    """10 groups × 20 RCABs, nf 64, r 16, ×4: 15,592,355 weights; the authors' module adds two 1×1 mean-shift
    convs (2 × 12), giving the published 15.59 M."""
    net = M.create("rcan")
    assert (net.hparams["num_group"], net.hparams["num_block"], net.hparams["num_feat"]) == (10, 20, 64)
    assert (net.hparams["reduction"], net.scale) == (16, 4)
    assert n_params(net) == 15_592_355
    assert n_params(RCANOfficial(nf=64, ng=10, nb=20, reduction=16, scale=4)) == 15_592_355 + 24


def test_key_names_are_basicsrs() -> None:
    """BasicSR's basicsr/archs/rcan_arch.py names, mean kept out of the state dict like EDSR's."""
    net = M.build("rcan", dict(num_group=2, num_block=3, num_feat=16, reduction=4, scale=4))
    keys = {k.rsplit(".", 1)[0] for k in net.state_dict()}
    expected = {"conv_first", "conv_after_body", "upsample.0", "upsample.2", "conv_last"}
    expected |= {f"body.{g}.conv" for g in range(2)}
    expected |= {f"body.{g}.residual_group.{b}.rcab.{m}" for g in range(2) for b in range(3)
                 for m in ("0", "2", "3.attention.1", "3.attention.3")}
    assert keys == expected
    assert net.state_dict()["body.1.residual_group.2.rcab.3.attention.1.weight"].shape == (4, 16, 1, 1)
    assert net.state_dict()["body.1.residual_group.2.rcab.3.attention.3.weight"].shape == (16, 4, 1, 1)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_forward_matches_the_equations(scale: int) -> None:
    hp = dict(num_group=2, num_block=3, num_feat=16, reduction=4, scale=scale)
    model = randomize_(M.build("rcan", hp)).double()
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    ref = rcan_math(model.state_dict(), x, num_group=2, num_block=3)
    # the network's mean buffer holds the DIV2K mean in float32 (±2e-8): the only difference in float64
    torch.testing.assert_close(_out(model, x), ref, atol=1e-7, rtol=1e-7)
    # and the float32 network within float32 rounding
    torch.testing.assert_close(_out(model.float(), x.float()).double(), ref, atol=1e-5, rtol=1e-5)


def test_bad_hyper_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="RCAN scale must be 2, 3, 4 or 8"):
        M.create("rcan", scale=5)
    with pytest.raises(ValueError, match="reduction must be between 1 and num_feat=16"):
        M.build("rcan", dict(num_feat=16, reduction=32))


# ---------------------------------------------------------------------------------------------------------
# The authors' checkpoint layout.


def test_official_layout_has_the_published_keys() -> None:
    """What tests/published_layouts.RCANOfficial writes (its loading at every scale is test_archs.py's round trip):
    group 2's RCAB 1 attention, group 2's last conv (body.2.body.2 for 2 RCABs), the trunk conv body.3, the tail,
    the fixed mean shifts."""
    sd = _official(4, nf=16, ng=3, nb=2, reduction=4).state_dict()
    assert {"body.2.body.1.body.3.conv_du.0.weight", "body.2.body.2.weight", "body.3.weight",
            "tail.0.0.weight", "tail.0.2.weight", "tail.1.weight", "sub_mean.bias"} <= set(sd)
    assert "body.4.weight" not in sd and "body.2.body.3.weight" not in sd


def test_official_layout_wrapped_and_from_dataparallel() -> None:
    ref = _official(4, nf=8, ng=2, nb=3, reduction=2, seed=3)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 7}
    model, info = M.load(wrapped)
    assert (info.format, info.wrapper) == ("rcan-official", "state_dict")
    assert (info.hparams["num_group"], info.hparams["num_block"], info.hparams["reduction"]) == (2, 3, 2)
    torch.testing.assert_close(_out(model, X) * 255, _out(ref, X * 255), atol=1e-3, rtol=1e-5)


def test_published_configuration_is_the_registered_variant() -> None:
    ref = RCANOfficial(nf=64, ng=10, nb=20, reduction=16, scale=4)
    _, info = M.load(ref.state_dict())
    assert (info.format, info.name) == ("rcan-official", "rcan")


def test_rcan_and_edsr_official_layouts_are_told_apart() -> None:
    """Both have head.0, body.N.body.0 (EDSR's block convs vs RCAN's nested groups), tail.0.0 and tail.1."""
    edsr = EDSROfficial(nf=16, nb=2, scale=4).state_dict()
    rcan = _official(4, ng=2, nb=2).state_dict()
    assert {"head.0.weight", "tail.1.weight"} <= set(edsr) & set(rcan)
    found_edsr, found_rcan = detect(edsr), detect(rcan)
    assert found_edsr is not None and (found_edsr.format, found_edsr.arch) == ("edsr-official", "edsr")
    assert found_edsr.hparams["num_block"] == 2
    assert found_rcan is not None and (found_rcan.format, found_rcan.arch) == ("rcan-official", "rcan")
    assert (found_rcan.hparams["num_group"], found_rcan.hparams["num_block"]) == (2, 2)


def _load_error(sd: dict[str, torch.Tensor], *, unrecognised: bool = True) -> str:
    """The error; a layout that is not made out lists the accepted formats, tensors that do not fit one do not."""
    with pytest.raises(M.CheckpointError) as e:
        M.load(sd)
    assert ("Accepted formats:" in str(e.value) and "RCAN (head.0" in str(e.value)) == unrecognised
    return str(e.value)


@pytest.mark.parametrize("missing", [
    "body.1.body.1.body.3.conv_du.0.weight",  # one attention conv
    "body.0.body.1.body.2.bias",               # one block conv's bias
    "body.2.body.2.weight",                    # a group's last conv
    "body.3.weight",                           # the trunk conv
    "tail.0.2.weight",                         # an upsampler conv
])
def test_truncated_official_checkpoint_names_the_missing_key(missing: str) -> None:
    sd = _official(4, ng=3, nb=2).state_dict()
    del sd[missing]
    message = _load_error(sd)
    assert re.search(rf"rcan-official layout without the tensor '{re.escape(missing)}'", message), message


def test_lost_last_block_and_inconsistent_shapes_are_refused() -> None:
    sd = _official(4, ng=2, nb=3).state_dict()
    lost = {k: v for k, v in sd.items() if not k.startswith("body.1.body.2.body.")}  # all of group 1's RCAB 2
    assert "without the tensor 'body.1.body.2.body.0.weight'" in _load_error(lost)
    squeezed = dict(sd)
    squeezed["body.0.body.1.body.3.conv_du.0.weight"] = torch.zeros(8, 16, 1, 1)  # r = 2 where the rest has 4
    assert ("tensor 'body.0.residual_group.1.rcab.3.attention.1.weight' has shape [8, 16, 1, 1], the network's is "
            "[4, 16, 1, 1]") in _load_error(squeezed, unrecognised=False)


# ---------------------------------------------------------------------------------------------------------
# Our safetensors.


def test_an_official_checkpoint_resaved_as_ours_loads_back(tmp_path: Path) -> None:
    official, _ = M.load(_official(2, seed=5).state_dict())  # an authors' checkpoint, re-saved as ours
    M.save(official, tmp_path / "converted.safetensors")
    again, info = M.load(tmp_path / "converted.safetensors")
    assert info.hparams == official.hparams and torch.equal(_out(again, X), _out(official, X))


# ---------------------------------------------------------------------------------------------------------
# ONNX.


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference(net: M.SRNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.double()(torch.from_numpy(x).double()).numpy()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_onnx_matches_the_network_at_two_sizes(scale: int) -> None:
    net = randomize_(M.build("rcan", dict(SMALL, scale=scale)), 1)
    model = export_onnx(net)
    assert model.opset_import[0].version == 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GlobalAveragePool") == ops.count("Sigmoid") == 4  # one attention per RCAB
    shuffles = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    assert len(shuffles) == (1 if scale == 3 else scale.bit_length() - 1) and all(
        a.s == b"CRD" for n in shuffles for a in n.attribute if a.name == "mode")
    session = _session(model)
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 8, 12), (2, 3, 13, 5)]:
        x = rng.random(shape, dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        ref = _reference(net, x)
        assert got.shape == ref.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_onnx_initializers_are_the_state_dict() -> None:
    net = randomize_(M.build("rcan", dict(SMALL, scale=4)))
    model = export_onnx(net)
    assert sorted(weight_names(model)) == sorted(net.state_dict())  # mean is a buffer, not in the state dict
    arrays = initializer_arrays(model, net.state_dict())
    key = "body.1.residual_group.0.rcab.3.attention.1.weight"
    np.testing.assert_array_equal(arrays[key], net.state_dict()[key].numpy())
    conv_names = {n.name for n in model.graph.node if n.op_type == "Conv"}
    assert {"body.1.residual_group.1.rcab.3.attention.3", "body.0.conv", "conv_after_body"} <= conv_names


@pytest.mark.parametrize("io_dtype", ["fp32", "fp16"])
def test_onnx_fp16_matches_within_fp16_tolerance(io_dtype: str) -> None:
    net = randomize_(M.build("rcan", dict(SMALL, scale=4)), 1)
    model = export_onnx(net, precision="fp16", io_dtype=io_dtype)
    weights = [t for t in model.graph.initializer if t.name in set(weight_names(model))]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    x = np.random.default_rng(3).random((2, 3, 8, 10), dtype=np.float32)
    got = _session(model).run(None, {"input": x.astype(np.float16) if io_dtype == "fp16" else x})[0]
    ref = _reference(net, x.astype(np.float16).astype(np.float32) if io_dtype == "fp16" else x)
    # fp16 carries 11 significant bits: a few ulps of the output's magnitude (as tests/test_onnx.py)
    tol = 8 * 2.0**-10 * max(1.0, float(np.abs(ref).max()))
    assert np.abs(got.astype(np.float64) - ref).max() < tol
