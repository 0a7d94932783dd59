"""Architectures as data: the registry (engine.models.registry.ARCHS), one round trip per architecture through every
checkpoint layout it has (tests/util.assert_round_trip), a proof that the round trip catches a broken detection, and
an architecture registered at run time that builds, saves, loads back, sits in a cascade and exports to ONNX by
tracing."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from util import assert_round_trip, randomize_

import engine.models as M
import export.onnx as onnx_export
from engine.models import registry
from engine.models.formats import FORMATS
from engine.models.shapes import StateDict, conv_channels, count

# ---------------------------------------------------------------------------------------------------------
# The table.


def test_the_table_names_each_architecture_once_with_its_class_detection_and_fused_program() -> None:
    rows = {name: (a.cls, a.detect is not None, a.fused) for name, a in M.ARCHS.items()}
    assert rows == {
        "rrdbnet": (M.RRDBNet, True, "rrdbnet"), "srresnet": (M.SRResNet, True, "srresnet"),
        "msrresnet": (M.MSRResNet, True, None), "edsr": (M.EDSR, True, None), "rcan": (M.RCAN, True, None),
        "srvgg": (M.SRVGGNetCompact, True, "srvgg"), "cascade": (M.Cascade, False, None),
    }
    assert all(a.cls.arch == name for name, a in M.ARCHS.items())
    assert all(M.ARCHS[f.arch].detect is not None for f in FORMATS)  # every layout row names a detecting arch
    assert set(onnx_export.EMITTERS) == set(M.ARCHS)  # every built-in architecture has a hand-written emitter


def test_arch_of_finds_a_networks_row_and_names_an_unregistered_class() -> None:
    assert M.arch_of(M.create("rrdb6", num_block=1)).fused == "rrdbnet"
    assert M.arch_of(M.create("rrdb23x16")).name == "cascade"

    class Unregistered(M.RRDBNet):
        pass

    with pytest.raises(ValueError, match="Unregistered is not a registered architecture; register it with"):
        M.arch_of(Unregistered(num_block=1, num_feat=4, num_grow_ch=2))


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="architecture 'edsr' is already registered \\(as EDSR\\)"):
        M.register_arch(M.Arch("edsr", M.EDSR, None))
    with pytest.raises(ValueError, match="architecture 'rrdbnet' already has an ONNX emitter"):
        onnx_export.register_emitter("rrdbnet")(lambda g, net, p, x: x)

    class Renamed(M.EDSR):
        arch = "edsr2"

    with pytest.raises(ValueError, match="Renamed.arch is 'edsr2': it must be the name it registers as, 'edsr3'"):
        M.register_arch(M.Arch("edsr3", Renamed, None))
    assert "edsr3" not in M.ARCHS


# ---------------------------------------------------------------------------------------------------------
# One round trip per architecture: our safetensors and every published layout that holds the set.


def test_rrdbnet_round_trip() -> None:
    small = dict(num_feat=8, num_block=2, num_grow_ch=4)
    checked = assert_round_trip("rrdbnet", [
        *(dict(small, scale=s) for s in (1, 2, 4, 8)),  # ×1 / ×2 through pixel-unshuffle (Real-ESRGAN x2plus)
        *(dict(small, scale=s, pixel_unshuffle=False) for s in (1, 2)),  # ESRGAN / BSRGAN ×1 and ×2
        dict(num_feat=12, num_block=3, num_grow_ch=6, scale=4),  # growth channels read, never assumed 32
        dict(small, num_in_ch=1, num_out_ch=1, scale=4),  # grayscale
        dict(small, num_in_ch=4, num_out_ch=4, scale=2),  # conv_first reads 16 = 4·4 channels: unshuffle of 4
        dict(small, scale=4, pixel_unshuffle=False),  # the same network as True: only our metadata keeps it
    ])
    assert checked == {"safetensors": 10, "bare": 9, "params_ema": 9, "esrgan-2018": 6, "esrgan-2019": 6}


def test_srresnet_round_trip() -> None:
    checked = assert_round_trip("srresnet", [dict(num_feat=8, num_block=2, scale=s, prelu_per_channel=pc)
                                             for s, pc in ((2, False), (3, True), (4, True), (8, False))])
    assert checked == {"safetensors": 4, "bare": 4, "params_ema": 4}


def test_msrresnet_round_trip() -> None:
    checked = assert_round_trip("msrresnet", [dict(num_feat=8, num_block=3, scale=s) for s in (2, 3, 4)])
    assert checked == {"safetensors": 3, "bare": 3, "params_ema": 3}


def test_edsr_round_trip() -> None:
    small = dict(num_feat=8, num_block=2)
    checked = assert_round_trip("edsr", [
        *(dict(small, scale=s) for s in (2, 3, 4, 8)),
        dict(small, scale=3, img_range=1.0),  # a model trained on [0, 1]: the official add_mean tells it
        dict(small, scale=2, res_scale=0.1),  # no layout stores res_scale: our metadata only
        dict(small, scale=2, rgb_mean=(0.5, 0.25, 0.125)),
    ])
    assert checked == {"safetensors": 7, "bare": 4, "params_ema": 4, "edsr-official": 5}


def test_rcan_round_trip() -> None:
    small = dict(num_group=2, num_block=2, num_feat=16, reduction=4)
    checked = assert_round_trip("rcan", [
        *(dict(small, scale=s) for s in (2, 3, 4, 8)),
        dict(small, scale=3, img_range=1.0),
        dict(small, scale=2, num_group=3, num_block=1, reduction=5),  # squeezes 16 to 3, and 16 // 3 = 5
        dict(small, scale=2, reduction=6),  # squeezes 16 to 2 as 8 does: our metadata only
    ])
    assert checked == {"safetensors": 7, "bare": 5, "params_ema": 5, "rcan-official": 6}


def test_cascade_round_trip() -> None:
    x2 = {"arch": "rrdbnet", "hparams": dict(num_feat=8, num_block=1, num_grow_ch=4, scale=2)}
    x4 = {"arch": "rrdbnet", "hparams": dict(num_feat=6, num_block=2, num_grow_ch=3, scale=4)}
    edsr = {"arch": "edsr", "hparams": dict(num_feat=8, num_block=1, scale=2, res_scale=0.1)}
    checked = assert_round_trip("cascade", [{"stages": [x2, x4]}, {"stages": [x4, edsr]}])
    assert checked == {"safetensors": 2, "bare": 1, "params_ema": 1}  # EDSR's res_scale lives in our metadata


# ---------------------------------------------------------------------------------------------------------
# The round trip is no tautology: a detection that reads one hyper-parameter wrong fails it.


def _broken(monkeypatch: pytest.MonkeyPatch, arch: str, **wrong: Any) -> None:
    """Make `arch`'s detection return `wrong` values (a callable gets the right value) for some hyper-parameters."""
    row = M.ARCHS[arch]
    detect = row.detect
    assert detect is not None

    def broken(sd: StateDict) -> dict[str, Any]:
        found = detect(sd)
        return found | {k: v(found[k]) if callable(v) else v for k, v in wrong.items()}

    monkeypatch.setitem(M.ARCHS, arch, dataclasses.replace(row, detect=broken))


@pytest.mark.parametrize("arch, wrong, words", [
    # the loader checks the counts against our metadata, and the shapes against the network, so it refuses it
    ("rrdbnet", dict(num_block=lambda n: n + 1), "as our safetensors: does not load: .*num_block=2, but the "
     "tensors hold 3"),
    # our metadata gives res_scale; in a bare state dict nothing refuses it but the output
    ("edsr", dict(res_scale=0.5), "in the bare layout: the output differs by up to"),
    # the same network at ×4 either way: only the comparison of the hyper-parameters sees it
    ("rrdbnet", dict(pixel_unshuffle=False), "in the bare layout: hparams detected"),
], ids=["num_block", "res_scale", "pixel_unshuffle"])
def test_the_round_trip_fails_on_a_broken_detection(monkeypatch: pytest.MonkeyPatch, arch: str,
                                                    wrong: dict[str, Any], words: str) -> None:
    _broken(monkeypatch, arch, **wrong)
    small = dict(num_feat=8, num_block=2) | (dict(num_grow_ch=4) if arch == "rrdbnet" else {})
    with pytest.raises(AssertionError, match=f"{arch} .* {words}"):
        assert_round_trip(arch, [dict(small, scale=4)])


# ---------------------------------------------------------------------------------------------------------
# An architecture registered at run time: its module's class and detection, one register_arch call.


class ToyNet(M.SRNet):
    """conv_in ─ LeakyReLU(slope) ─ num_block × [conv ─ SiLU (+ skip)] ─ norm ─ conv_out nf → out·s² ─ shuffle(s)."""

    arch = "toy"

    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 2, num_feat: int = 8,
                 num_block: int = 2, slope: float = 0.2) -> None:
        super().__init__()
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat,
                          num_block=num_block, slope=slope)
        self.conv_in = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.blocks = nn.Sequential(*(nn.Conv2d(num_feat, num_feat, 3, 1, 1) for _ in range(num_block)))
        self.norm = nn.BatchNorm2d(num_feat)  # buffers too must round-trip
        self.conv_out = nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv_in(x), self.hparams["slope"])
        for conv in self.blocks:
            h = h + F.silu(conv(h))
        return F.pixel_shuffle(self.conv_out(self.norm(h)), self.scale)


# conv_in (nf, in, 3, 3); blocks.{0..nb−1} (nf, nf, 3, 3); conv_out (in·s², nf, 3, 3): the output has the input's
# channels. slope is no tensor: our metadata keeps it.
def toy_hparams(sd: StateDict) -> dict[str, Any]:
    num_feat, num_in_ch = conv_channels(sd, "conv_in.weight")
    scale = math.isqrt(conv_channels(sd, "conv_out.weight")[0] // num_in_ch)
    return dict(num_in_ch=num_in_ch, num_out_ch=num_in_ch, scale=scale, num_feat=num_feat,
                num_block=count(sd, r"blocks\.(\d+)\.weight"))


@pytest.fixture
def toy() -> Iterator[M.Arch]:
    arch = M.register_arch(M.Arch("toy", ToyNet, toy_hparams))
    try:
        yield arch
    finally:
        del M.ARCHS["toy"]


def test_a_registered_architecture_builds_saves_and_loads_back(toy: M.Arch) -> None:
    checked = assert_round_trip("toy", [dict(scale=2), dict(num_feat=6, num_block=3, scale=3, slope=0.05),
                                        dict(num_in_ch=1, num_out_ch=1, scale=4, num_block=1)])
    assert checked == {"safetensors": 3}
    net = M.build("toy", dict(scale=3))
    assert M.arch_of(net) is toy and registry.variant_name("toy", net.hparams) is None
    assert registry.full_hparams("toy", {"scale": 3}) == net.hparams
    with pytest.raises(ValueError, match="toy has no hyper-parameter 'dropout'; it takes num_in_ch, num_out_ch"):
        M.build("toy", dict(dropout=0.5))


def test_a_registered_architecture_loads_back_as_a_cascade_stage(toy: M.Arch) -> None:
    stages = [{"arch": "toy", "hparams": dict(scale=2, slope=0.1)},
              {"arch": "rrdbnet", "hparams": dict(num_feat=8, num_block=1, num_grow_ch=4, scale=2)}]
    assert assert_round_trip("cascade", [{"stages": stages}]) == {"safetensors": 1}


def test_tensors_that_do_not_fit_the_registered_architecture_are_refused(toy: M.Arch, tmp_path: Any) -> None:
    path = tmp_path / "toy.safetensors"
    M.save(ToyNet(num_block=2), path)
    M.ARCHS["toy"] = dataclasses.replace(toy, detect=lambda sd: toy_hparams(sd) | {"num_block": 3})
    with pytest.raises(M.CheckpointError, match="num_block=2, but the tensors hold 3"):
        M.load(path)


# ---------------------------------------------------------------------------------------------------------
# ONNX for an architecture without an emitter: traced, its weights keeping their names.


def _session(model: Any) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference(net: nn.Module, x: np.ndarray) -> np.ndarray:
    import copy

    with torch.no_grad():
        return copy.deepcopy(net).double()(torch.from_numpy(x).double()).numpy()


def test_an_architecture_without_an_emitter_is_traced_and_matches_torch(
        toy: M.Arch, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(onnx_export, "_warned", set())
    net = randomize_(M.build("toy", dict(scale=3, slope=0.05)), 1)
    with caplog.at_level(logging.WARNING, logger="export.onnx"):
        model = onnx_export.export_onnx(net)
        onnx_export.export_onnx(net)
    assert [r.getMessage() for r in caplog.records] == [  # said once, loudly
        "no ONNX emitter for ToyNet: tracing it with torch.onnx.export; refit of its weights for alpha works only "
        "where export.onnx.refit_names_ok says so"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert model.opset_import[0].version == onnx_export.OPSET
    session = _session(model)
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 8, 12), (2, 3, 13, 5)]:  # one graph, two sizes: the traced shapes are dynamic
        x = rng.random(shape, dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        ref = _reference(net, x)
        assert got.shape == ref.shape == (shape[0], 3, shape[2] * 3, shape[3] * 3)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)  # float32 graph against float64 torch


@pytest.mark.parametrize("precision, io_dtype", [("fp16", "fp32"), ("fp16", "fp16"), ("fp32", "fp16")])
def test_a_traced_graph_in_fp16(toy: M.Arch, precision: str, io_dtype: str) -> None:
    net = randomize_(M.build("toy", dict(scale=2)), 2)
    model = onnx_export.export_onnx(net, precision=precision, io_dtype=io_dtype)
    weights = {t.name: t.data_type for t in model.graph.initializer if not t.name.startswith("const/")}
    elem = {"fp32": 1, "fp16": 10}  # onnx.TensorProto.FLOAT, FLOAT16
    assert set(weights.values()) == {elem[precision]}
    assert model.graph.input[0].type.tensor_type.elem_type == elem[io_dtype]
    assert model.graph.output[0].type.tensor_type.elem_type == elem[io_dtype]
    x = np.random.default_rng(3).random((2, 3, 6, 10), dtype=np.float32)
    got = _session(model).run(None, {"input": x.astype(np.float16) if io_dtype == "fp16" else x})[0]
    ref = _reference(net, x.astype(np.float16).astype(np.float32) if io_dtype == "fp16" else x)
    tol = 8 * 2.0**-10 * max(1.0, float(np.abs(ref).max()))  # a few fp16 ulps of the output's magnitude
    assert np.abs(got.astype(np.float64) - ref).max() < tol


def test_a_traced_graph_keeps_the_state_dict_names_so_alpha_refit_works(toy: M.Arch) -> None:
    a = randomize_(M.build("toy", dict(scale=2)), 3)
    b = randomize_(M.build("toy", dict(scale=2)), 4)
    model = onnx_export.export_onnx(a)
    assert onnx_export.refit_names_ok(model, a)
    assert sorted(onnx_export.weight_names(model)) == sorted(
        k for k, t in a.state_dict().items() if t.is_floating_point())  # batch norm's statistics included
    onnx_export.set_initializers(model, onnx_export.initializer_arrays(model, M.interpolate(a, b, 0.3)))
    x = np.random.default_rng(4).random((1, 3, 7, 9), dtype=np.float32)
    np.testing.assert_allclose(_session(model).run(None, {"input": x})[0],
                               _reference(M.interpolated(a, b, 0.3), x), rtol=0, atol=1e-5)
    assert not np.allclose(_session(onnx_export.export_onnx(a)).run(None, {"input": x})[0],
                           _reference(M.interpolated(a, b, 0.3), x), atol=1e-3)  # the refit changed the output


def test_refit_is_refused_by_name_when_the_trace_loses_one(toy: M.Arch) -> None:
    net: Any = randomize_(M.build("toy", dict(scale=2)), 5)
    net.blocks[1].weight = net.blocks[0].weight  # tied: two state-dict keys, one initializer in the trace
    model = onnx_export.export_onnx(net)
    assert not onnx_export.refit_names_ok(model, net)
    with pytest.raises(onnx_export.ExportError, match="alpha refit is unavailable for this ToyNet graph: no "
                       "initializer is named by its state-dict tensor 'blocks.1.weight'"):
        onnx_export.require_refit_names(model, net)
    emitted = onnx_export.export_onnx(randomize_(M.create("edsr", num_block=1, num_feat=8)))
    onnx_export.require_refit_names(emitted, M.create("edsr", num_block=1, num_feat=8))
