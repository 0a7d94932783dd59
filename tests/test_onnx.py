"""ONNX export: parity with the reference networks in ONNX Runtime at two input sizes from one exported file
(dynamic shapes really work), fp16 graphs, standard pixel (un)shuffle ops, weight names for refit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from util import randomize_

import engine.models as M
from engine.models import registry
from export.onnx import ExportError, export_onnx, initializer_arrays, save, weight_names


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference(net: M.SRNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.double()(torch.from_numpy(x).double()).numpy()


SMALL = dict(num_block=1, num_feat=16)
ARCH_SCALES = (
    [("rrdbnet", dict(SMALL, num_grow_ch=8, scale=s)) for s in (1, 2, 4, 8)]
    + [("rrdbnet", dict(SMALL, num_grow_ch=8, scale=s, pixel_unshuffle=False)) for s in (1, 2)]
    + [("srresnet", dict(SMALL, scale=s, prelu_per_channel=s == 3)) for s in (2, 3, 4, 8)]
    + [("msrresnet", dict(SMALL, scale=s)) for s in (2, 3, 4)]
    + [("edsr", dict(SMALL, scale=s)) for s in (2, 3, 4)]
    + [("rrdbnet", dict(SMALL, num_grow_ch=8, scale=4, num_in_ch=1, num_out_ch=1))]
)


@pytest.mark.parametrize("arch,hparams", ARCH_SCALES, ids=lambda v: str(v) if isinstance(v, str) else
                         "-".join(f"{k}{v}" for k, v in v.items() if k not in SMALL))
def test_every_arch_and_scale_matches_the_reference_at_two_sizes(arch: str, hparams: dict) -> None:
    torch.manual_seed(0)
    net = registry.build(arch, hparams).eval()
    randomize_(net, 1)
    session = _session(export_onnx(net))
    m = net.input_multiple
    rng = np.random.default_rng(0)
    for shape in [(1, net.in_channels, 4 * m, 6 * m), (2, net.in_channels, 5 * m, 3 * m)]:
        x = rng.random(shape, dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        ref = _reference(net, x)
        assert got.shape == ref.shape == (shape[0], net.out_channels, shape[2] * net.scale, shape[3] * net.scale)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(registry.VARIANTS))
def test_every_registered_model_matches_the_reference(name: str) -> None:
    torch.manual_seed(0)
    net = registry.create(name).eval()
    randomize_(net, 1)
    session = _session(export_onnx(net))
    rng = np.random.default_rng(1)
    for shape in [(1, 3, 8, 12), (2, 3, 12, 4)]:
        x = rng.random(shape, dtype=np.float32)
        err = np.abs(session.run(None, {"input": x})[0] - _reference(net, x)).max()
        assert err < 1e-4, f"{name} {shape}: max abs error {err:.2e}"


def test_the_shipped_model_matches(tmp_path) -> None:
    from pathlib import Path

    net, _ = M.load(Path(__file__).resolve().parents[1] / "weights" / "tiny_x4.safetensors")
    path = tmp_path / "tiny.onnx"
    save(export_onnx(net), path)
    x = np.random.default_rng(2).random((1, 3, 20, 28), dtype=np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - _reference(net, x)).max() < 1e-4


@pytest.mark.parametrize("io_dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("arch,hparams", [ARCH_SCALES[1], ARCH_SCALES[6], ARCH_SCALES[13], ARCH_SCALES[14]])
def test_fp16_graph_has_fp16_weights_and_matches_within_fp16_tolerance(arch: str, hparams: dict, io_dtype: str) -> None:
    torch.manual_seed(0)
    net = registry.build(arch, hparams).eval()
    randomize_(net, 1)
    model = export_onnx(net, precision="fp16", io_dtype=io_dtype)
    weights = [t for t in model.graph.initializer if t.name in set(weight_names(model))]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    io = onnx.TensorProto.FLOAT16 if io_dtype == "fp16" else onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == io
    assert model.graph.output[0].type.tensor_type.elem_type == io
    # every Conv computes in fp16: its input's type, inferred through the graph, is float16
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in convs)
    m = net.input_multiple
    x = np.random.default_rng(3).random((2, 3, 4 * m, 5 * m), dtype=np.float32)
    got = _session(model).run(None, {"input": x.astype(np.float16) if io_dtype == "fp16" else x})[0]
    ref = _reference(net, x.astype(np.float16).astype(np.float32) if io_dtype == "fp16" else x)
    # fp16 carries 11 significant bits: a few ulps of the output's magnitude after ~10 layers
    tol = 8 * 2.0**-10 * max(1.0, float(np.abs(ref).max()))
    assert np.abs(got.astype(np.float64) - ref).max() < tol


def test_pixel_shuffles_are_standard_ops_and_dynamic() -> None:
    net = registry.create("rrdb6", num_block=1, num_feat=16, num_grow_ch=8, scale=1).eval()
    model = export_onnx(net)
    ops = [n.op_type for n in model.graph.node]
    assert "SpaceToDepth" in ops and "Reshape" not in ops and "Transpose" not in ops and "Shape" not in ops
    assert model.opset_import[0].version >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    shuffled = export_onnx(registry.create("srgan", num_block=1, num_feat=16).eval())
    shuffles = [n for n in shuffled.graph.node if n.op_type == "DepthToSpace"]
    assert len(shuffles) == 2 and all(a.s == b"CRD" for n in shuffles for a in n.attribute if a.name == "mode")


def test_weights_keep_their_state_dict_names_and_are_not_merged() -> None:
    net = registry.create("edsr", num_block=2, num_feat=16).eval()
    for p in net.parameters():  # equal tensors: an exporter that merges initializers would lose names here
        torch.nn.init.zeros_(p)
    model = export_onnx(net)
    assert set(weight_names(model)) == set(net.state_dict()) - {"mean"}
    arrays = initializer_arrays(model, net.state_dict())
    assert set(arrays) == set(weight_names(model))
    conv_names = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert "body.1.conv2" in conv_names and "conv_first" in conv_names


def test_training_mode_and_bad_options_are_refused() -> None:
    net = registry.create("srgan", num_block=1, num_feat=8)
    with pytest.raises(ExportError, match="training mode"):
        export_onnx(net)
    with pytest.raises(ExportError, match="precision"):
        export_onnx(net.eval(), precision="int4")
    with pytest.raises(ExportError, match="opset"):
        export_onnx(net, opset=13)
