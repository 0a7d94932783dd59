"""TensorRT build (export/tensorrt.py) and runtime (engine/backends/trt.py), and what they share (engine/trt_lib.py).

Everywhere: both modules type-check against TensorRT's stubs (and the check catches a misspelt Refitter method),
use nothing TensorRT 11 removed, import without TensorRT and then fail with one error that says what to install;
the pure parts (profiles, refit weight matching against real exported ONNX, device-weight packing and blending,
progress bars) run on the CPU. With TensorRT and a GPU (`-m gpu`): fp16 parity with torch, refit to alpha equal to
a build from the interpolated weights, CUDA graphs re-captured after a refit.
"""

from __future__ import annotations

import ast
import copy
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import engine.models as M
from engine.backends.torch_eager import TorchBackend
from engine.backends.trt import TensorRTBackend
from engine.backends.trt_weights import BlendedWeights, pack_offsets
from engine.inference import upscale_planes
from engine.trt_lib import (
    MIN_VERSION,
    RefitWeightsError,
    TensorRTUnavailable,
    TrtLog,
    check_version,
    match_refit_weights,
    tensorrt_available,
)
from export.onnx import export_onnx, save
from export.tensorrt import BuildProgress, build_engine, check_profile, profile_shapes, refit_arrays

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "export" / "tensorrt.py", REPO / "engine" / "backends" / "trt.py", REPO / "engine" / "trt_lib.py",
           REPO / "engine" / "backends" / "trt_weights.py"]
HAVE_TRT = tensorrt_available("Builder")
HAVE_TRT_GPU = HAVE_TRT and torch.cuda.is_available()


def _tiny_net(seed: int = 0) -> M.SRNet:
    torch.manual_seed(seed)
    return M.create("rrdb6", num_block=1, num_feat=16, num_grow_ch=8).eval()


def _prototypes(model: onnx.ModelProto) -> dict[str, tuple[int, np.dtype]]:
    """What a REFIT engine built from `model` lists as refittable (the ONNX parser names weights by initializer):
    name → (element count, dtype) for every float initializer. The GPU tests check the real Refitter's names."""
    out = {}
    for t in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        if dtype.kind == "f":
            out[t.name] = (math.prod(t.dims), dtype)
    return out


# ---------------------------------------------------------------------------------------------------------
# Type check against TensorRT's stubs


@pytest.fixture(scope="session")
def trt_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TensorRT 10.13's stubs prepared by tools/trt-stubs.sh (downloaded once, kept in ~/.cache)."""
    pytest.importorskip("mypy", reason="mypy is not installed: pip install -e '.[test]'")
    target = Path(os.environ.get("ESRGAN_TRT_STUBS", Path.home() / ".cache" / "esrgan-engine" / "trt-stubs"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        target = tmp_path_factory.mktemp("trt-stubs")
    proc = subprocess.run(["bash", str(REPO / "tools" / "trt-stubs.sh"), str(target)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"tools/trt-stubs.sh could not prepare the TensorRT stubs (it pip-downloads tensorrt-stubs; "
                    f"is a package index reachable?):\n{proc.stderr}")
    stubs = Path(proc.stdout.strip().splitlines()[-1])
    assert (stubs / "tensorrt" / "__init__.pyi").is_file(), f"no stubs in {stubs}"
    return stubs


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(stubs: Path, cache: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    # --follow-imports=silent: imported modules (torch, engine.*) are analysed for their types, but their own
    # errors belong to their own checks, not to this one.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--follow-imports=silent",
         "--cache-dir", str(cache), "--show-error-codes", *map(str, files)],
        cwd=REPO, env={**os.environ, "MYPYPATH": str(stubs)}, capture_output=True, text=True, timeout=900)


def test_build_and_runtime_type_check_against_tensorrt_stubs(trt_stubs: Path, mypy_cache: Path) -> None:
    proc = _mypy(trt_stubs, mypy_cache, *SOURCES)
    assert proc.returncode == 0, f"mypy against the TensorRT 10.13 stubs:\n{proc.stdout}{proc.stderr}"


def test_type_check_catches_a_misspelt_refitter_method(trt_stubs: Path, mypy_cache: Path, tmp_path: Path) -> None:
    """Proof that the check above reads the stubs: without them `tensorrt` would be Any and pass anything."""
    body = '''
        import tensorrt as trt


        def refit(engine: trt.ICudaEngine, logger: trt.ILogger, stream: int) -> None:
            refitter = trt.Refitter(engine, logger)
            refitter.set_named_weights("conv_first.weight", trt.Weights(), trt.TensorLocation.DEVICE)
            refitter.refit_cuda_engine_async(stream)
    '''
    good = tmp_path / "good_refit.py"
    good.write_text(textwrap.dedent(body))
    bad = tmp_path / "bad_refit.py"
    bad.write_text(textwrap.dedent(body.replace("set_named_weights(", "set_named_weight(")
                                   .replace("_async(stream)", '_async("stream")')))
    proc = _mypy(trt_stubs, mypy_cache, good, bad)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "good_refit.py" not in out, out
    assert '"Refitter" has no attribute "set_named_weight"' in out, out
    assert 'incompatible type "str"; expected "int"' in out, out


# ---------------------------------------------------------------------------------------------------------
# No API that TensorRT 11 removed

REMOVED = {  # attribute names gone in TensorRT 11 (or deprecated since 10.x), wherever they appear
    "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "STRICT_TYPES", "REFIT_IDENTICAL",
    "IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator", "int8_calibrator", "set_calibration_profile", "EXPLICIT_BATCH", "max_workspace_size",
    "execute_async_v2", "execute_async", "get_binding_index", "get_binding_shape", "num_bindings",
    "set_binding_shape", "set_dynamic_range",
}
PRECISION_FLAGS = {"FP16", "INT8", "BF16", "FP8", "INT4", "FP4"}  # builder flags; fine only as DataType members


def removed_api_uses(source: str) -> list[str]:
    """Uses of removed TensorRT API in Python source: attributes, and getattr/hasattr with such a name."""
    hits: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        name, base = None, ""
        if isinstance(node, ast.Attribute):
            name = node.attr
            base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("getattr", "hasattr", "setattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            name = str(node.args[1].value)
        if name in REMOVED or (name in PRECISION_FLAGS and base != "DataType"):
            hits.append((node.lineno, name))
    return [f"line {line}: {name}" for line, name in sorted(hits)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_api_removed_in_tensorrt_11(path: Path) -> None:
    assert removed_api_uses(path.read_text()) == []


def test_removed_api_scan_has_teeth() -> None:
    source = textwrap.dedent('''
        config.set_flag(trt.BuilderFlag.FP16)
        config.int8_calibrator = calibrator
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        context.execute_async_v2(bindings, stream)
        flag = getattr(trt.BuilderFlag, "INT8")
        ok = trt.DataType.INT8, trt.BuilderFlag.REFIT, trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    ''')
    assert removed_api_uses(source) == ["line 2: FP16", "line 3: int8_calibrator", "line 4: EXPLICIT_BATCH",
                                        "line 5: execute_async_v2", "line 6: INT8"]


def test_builds_strongly_typed_and_refittable() -> None:
    attrs = {n.attr for n in ast.walk(ast.parse(SOURCES[0].read_text())) if isinstance(n, ast.Attribute)}
    assert {"STRONGLY_TYPED", "REFIT", "progress_monitor", "set_timing_cache"} <= attrs


# ---------------------------------------------------------------------------------------------------------
# Without TensorRT


def test_modules_import_lazily_and_runtime_never_imports_the_builder() -> None:
    code = ("import sys, engine.backends.trt; "
            "assert 'export.tensorrt' not in sys.modules and 'tensorrt' not in sys.modules; "
            "import export.tensorrt; assert 'tensorrt' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    onnx_path = tmp_path / "tiny.onnx"
    save(export_onnx(_tiny_net(), precision="fp16"), onnx_path)
    lo, opt, hi = profile_shapes(32, 2, 3, 1)
    with pytest.raises(TensorRTUnavailable) as error:
        build_engine(onnx_path, tmp_path / "tiny.plan", min_shape=lo, opt_shape=opt, max_shape=hi)
    message = str(error.value)
    assert isinstance(error.value, RuntimeError)
    assert "`pip install tensorrt`" in message and "--backend onnxruntime" in message
    assert not (tmp_path / "tiny.plan").exists()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_backend_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    plan = tmp_path / "tiny.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed: `pip install tensorrt` \(TensorRT 10"):
        TensorRTBackend(plan, scale=4, in_channels=3, out_channels=3, multiple=1)


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: a namespace portion cannot shadow it")
def test_stub_only_tensorrt_package_is_detected(tmp_path: Path) -> None:
    """What `pip install tensorrt-stubs` leaves: `import tensorrt` succeeds as an empty namespace package."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tensorrt; "
            "from engine.trt_lib import require_tensorrt, TensorRTUnavailable\n"
            "try:\n    require_tensorrt('Builder')\nexcept TensorRTUnavailable as e:\n    print(e)\n"
            "else:\n    raise SystemExit('not detected')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "pip install tensorrt" in proc.stdout and "pip uninstall tensorrt-stubs" in proc.stdout


@pytest.mark.parametrize(("version", "parsed"), [
    ("10.1.0", (10, 1)), ("10.1.0.27", (10, 1)), ("10.13.3.9.post1", (10, 13)), ("10.13.3.9", (10, 13)),
    ("11.0.0", (11, 0)), (" 12.4", (12, 4)),
])
def test_tensorrt_10_1_and_newer_are_accepted(version: str, parsed: tuple[int, int]) -> None:
    assert check_version(version) == parsed


@pytest.mark.parametrize("version", ["10.0.1.6", "10.0.0", "10.0", "8.6.1.post1", "9.3.0"])
def test_tensorrt_older_than_10_1_is_refused_with_what_to_do(version: str) -> None:
    """The runtime calls IExecutionContext.set_device_memory(ptr, size) and device_memory_size_v2 (TensorRT 10.1)."""
    assert MIN_VERSION == (10, 1)
    with pytest.raises(TensorRTUnavailable) as error:
        check_version(version)
    assert str(error.value) == (f"TensorRT {version} is installed; this project needs TensorRT 10.1 or newer "
                                f"(`pip install -U tensorrt`), or use --backend onnxruntime")


@pytest.mark.parametrize("version", ["?", "", "10", "ten.one", "v10.1"])
def test_an_unreadable_tensorrt_version_is_refused(version: str) -> None:
    with pytest.raises(TensorRTUnavailable, match=r"cannot tell the installed TensorRT's version .*TensorRT 10\.1 or "
                                                  r"newer \(`pip install -U tensorrt`\), or use --backend onnxruntime"):
        check_version(version)


# ---------------------------------------------------------------------------------------------------------
# Optimization profile


def test_profile_shapes() -> None:
    assert profile_shapes(256, 4, 3) == ((1, 3, 1, 1), (4, 3, 256, 256), (4, 3, 256, 256))
    assert profile_shapes(64, 1, 3, multiple=4) == ((1, 3, 4, 4), (1, 3, 64, 64), (1, 3, 64, 64))
    check_profile(*profile_shapes(96, 2, 1, multiple=2))
    with pytest.raises(ValueError, match="multiple of 4"):
        profile_shapes(66, 4, 3, multiple=4)
    with pytest.raises(ValueError, match="positive"):
        profile_shapes(0, 4, 3)


def test_check_profile_rejects_bad_profiles() -> None:
    with pytest.raises(ValueError, match="min ≤ opt ≤ max"):
        check_profile((1, 3, 8, 8), (4, 3, 64, 64), (2, 3, 64, 64))
    with pytest.raises(ValueError, match="channel count"):
        check_profile((1, 1, 8, 8), (4, 3, 64, 64), (4, 3, 64, 64))
    with pytest.raises(ValueError, match="4 positive sizes"):
        check_profile((1, 3, 8), (4, 3, 64, 64), (4, 3, 64, 64))


class _ShapeRecorder:
    """A Backend that records the batch shapes `upscale_planes` sends and answers with nearest upsampling."""

    def __init__(self, multiple: int) -> None:
        self.scale, self.in_channels, self.out_channels, self.multiple = 4, 3, 3, multiple
        self.device = torch.device("cpu")
        self.shapes: list[tuple[int, ...]] = []

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(batch.shape))
        return torch.nn.functional.interpolate(batch, scale_factor=4, mode="nearest")

    def bytes_per_pixel(self) -> float:
        return 1.0


@pytest.mark.parametrize("multiple", [1, 4])
def test_profile_covers_every_batch_that_infer_sends(multiple: int) -> None:
    tile, batch = 32, 3
    lo, _, hi = profile_shapes(tile, batch, 3, multiple)
    backend = _ShapeRecorder(multiple)
    for h, w in [(70, 45), (9, 13), (32, 32), (3, 101)]:
        upscale_planes(backend, np.zeros((3, h, w), np.float32), tile=tile, tile_overlap=8, batch=batch)
    assert backend.shapes
    for shape in backend.shapes:
        assert all(a <= b <= c for a, b, c in zip(lo, shape, hi, strict=True)), (shape, lo, hi)
        assert shape[2] % multiple == 0 and shape[3] % multiple == 0


# ---------------------------------------------------------------------------------------------------------
# Refit weights: matching, against real exported graphs


@pytest.fixture(scope="module")
def tiny_fp16() -> tuple[M.SRNet, M.SRNet, onnx.ModelProto]:
    psnr, gan = _tiny_net(0), _tiny_net(1)
    return psnr, gan, export_onnx(psnr, precision="fp16", io_dtype="fp32")


def test_every_initializer_of_an_exported_graph_maps(tiny_fp16: tuple[M.SRNet, M.SRNet, onnx.ModelProto]) -> None:
    psnr, _, model = tiny_fp16
    arrays = refit_arrays(model, psnr.state_dict())
    assert set(arrays) == {t.name for t in model.graph.initializer}
    prototypes = _prototypes(model)
    assert "conv_first.weight" in prototypes and any(n.startswith("const/") for n in prototypes)
    matched = match_refit_weights(prototypes, arrays)
    assert list(matched) == list(prototypes)
    for name, array in matched.items():
        assert array.dtype == prototypes[name][1] and array.ndim == 1 and array.flags.c_contiguous
        if not name.startswith("const/"):  # weights in the graph's fp16; constants also fp32 (Resize scales)
            assert array.dtype == np.float16
            expected = psnr.state_dict()[name].numpy().astype(np.float16).reshape(-1)
            np.testing.assert_array_equal(array, expected)


def test_wrong_dtype_count_and_missing_weights_are_named(
        tiny_fp16: tuple[M.SRNet, M.SRNet, onnx.ModelProto]) -> None:
    psnr, _, model = tiny_fp16
    prototypes = _prototypes(model)
    arrays = refit_arrays(model, psnr.state_dict())
    arrays["conv_first.weight"] = arrays["conv_first.weight"].astype(np.float32)
    with pytest.raises(RefitWeightsError, match=r"wrong dtype: conv_first\.weight is float32, the engine's weight "
                                                r"is float16") as error:
        match_refit_weights(prototypes, arrays, what="weights_gan")
    assert str(error.value).startswith("weights_gan do not fit the engine")
    assert "refit_arrays" in str(error.value)

    arrays = refit_arrays(model, psnr.state_dict())
    del arrays["body.0.rdb2.conv3.bias"]
    arrays["conv_last.weight"] = arrays["conv_last.weight"].reshape(-1)[:-1]
    arrays["conv_hr.bias"] = arrays["conv_hr.bias"].astype(np.float64)
    arrays["not.a.weight"] = np.zeros(3, np.float16)  # arrays the engine does not refit are ignored
    with pytest.raises(RefitWeightsError) as error:
        match_refit_weights(prototypes, arrays)
    message = str(error.value)
    assert "1 refittable weights have no array: body.0.rdb2.conv3.bias" in message
    assert "wrong element count: conv_last.weight has 431 elements (431,), the engine 432" in message
    assert "wrong dtype: conv_hr.bias is float64" in message
    assert "not.a.weight" not in message


def test_graph_constants_may_be_left_to_the_engine(tiny_fp16: tuple[M.SRNet, M.SRNet, onnx.ModelProto]) -> None:
    """Arrays without constants (`export.onnx.initializer_arrays`) fit when constants are declared fixed."""
    from export.onnx import initializer_arrays

    psnr, _, model = tiny_fp16
    prototypes = _prototypes(model)
    weights_only = initializer_arrays(model, psnr.state_dict())
    with pytest.raises(RefitWeightsError, match="have no array: const/"):
        match_refit_weights(prototypes, weights_only)
    matched = match_refit_weights(prototypes, weights_only, fixed_prefixes=("const/", "qdq/"))
    assert list(matched) == [n for n in prototypes if not n.startswith("const/")]
    del weights_only["conv_first.bias"]
    with pytest.raises(RefitWeightsError, match=r"1 refittable weights have no array: conv_first\.bias\)"):
        match_refit_weights(prototypes, weights_only, fixed_prefixes=("const/", "qdq/"))


def test_fp32_arrays_do_not_fit_an_fp16_graph(tiny_fp16: tuple[M.SRNet, M.SRNet, onnx.ModelProto]) -> None:
    psnr, _, model_fp16 = tiny_fp16
    arrays_fp32 = refit_arrays(export_onnx(psnr, precision="fp32"), psnr.state_dict())
    with pytest.raises(RefitWeightsError, match="wrong dtype: .*float32, the engine's weight is float16"):
        match_refit_weights(_prototypes(model_fp16), arrays_fp32)


def _quantize_conv_first(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with explicit Q/DQ on conv_first's weight (per output channel), as an INT8 graph has it."""
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index, conv = next((i, n) for i, n in enumerate(graph.node) if n.name == "conv_first")
    scale, zero = "conv_first.weight_scale", "conv_first.weight_zero_point"
    graph.initializer.extend([numpy_helper.from_array(np.full(16, 0.01, np.float32), scale),
                              numpy_helper.from_array(np.zeros(16, np.int8), zero)])
    q = helper.make_node("QuantizeLinear", [conv.input[1], scale, zero], ["w_q"], name="q_w", axis=0)
    dq = helper.make_node("DequantizeLinear", ["w_q", scale, zero], ["w_dq"], name="dq_w", axis=0)
    conv.input[1] = "w_dq"
    graph.node.insert(index, dq)
    graph.node.insert(index, q)
    onnx.checker.check_model(out, full_check=True)
    return out


def test_refit_arrays_of_a_qdq_graph_take_scales_from_the_graph() -> None:
    from export.onnx import ExportError

    net = _tiny_net(0)
    model = _quantize_conv_first(export_onnx(net, precision="fp32"))
    arrays = refit_arrays(model, net.state_dict())
    assert arrays["conv_first.weight_zero_point"].dtype == np.int8
    np.testing.assert_array_equal(arrays["conv_first.weight_scale"], np.full(16, 0.01, np.float32))
    np.testing.assert_array_equal(arrays["conv_first.weight"], net.conv_first.weight.detach().numpy())
    state = dict(net.state_dict())
    del state["conv_first.weight"]  # a quantized weight is still a network weight: it must come from the state
    with pytest.raises(ExportError, match="conv_first.weight"):
        refit_arrays(model, state)


# ---------------------------------------------------------------------------------------------------------
# Packing and blending of the device weights (on the CPU here; the same code runs on CUDA)


def test_pack_offsets_align_every_weight() -> None:
    assert pack_offsets([1, 64, 65], itemsize=2) == ([0, 128, 256], 384)
    assert pack_offsets([64, 1], itemsize=4) == ([0, 64], 128)
    assert pack_offsets([], itemsize=4) == ([], 0)


def test_blended_weights_are_the_interpolated_network(tiny_fp16: tuple[M.SRNet, M.SRNet, onnx.ModelProto]) -> None:
    psnr, gan, model = tiny_fp16
    prototypes = _prototypes(model)
    a = match_refit_weights(prototypes, refit_arrays(model, psnr.state_dict()))
    b = match_refit_weights(prototypes, refit_arrays(model, gan.state_dict()))
    weights = BlendedWeights(a, b, "cpu")
    assert sorted(weights.names) == sorted(prototypes)
    assert [p.live.dtype for p in weights.packs] == [torch.float16, torch.float32]  # fp32: the Resize scales
    addresses = {n: weights.live(n).data_ptr() for n in weights.names}
    for pack in weights.packs:
        assert all((addresses[n] - pack.live.data_ptr()) % 256 == 0 for n in pack.views)

    for alpha in (0.0, 0.3, 1.0):
        weights.set_alpha(alpha)
        assert {n: weights.live(n).data_ptr() for n in weights.names} == addresses  # in place
        blended = M.interpolate(psnr.state_dict(), gan.state_dict(), alpha)
        for name in weights.names:
            live = weights.live(name).numpy()
            if name.startswith("const/"):
                np.testing.assert_array_equal(live, a[name])  # equal endpoints blend exactly
                continue
            expected = blended[name].numpy().astype(np.float16).reshape(-1)
            if alpha in (0.0, 1.0):
                np.testing.assert_array_equal(live, expected)
            else:  # blending the fp16-rounded endpoints vs rounding the float64 blend: both endpoints' rounding
                # errors (half an fp16 ulp, 2^-11 relative, each) plus the result's: within 2^-10 of the larger one
                larger = np.maximum(np.abs(a[name]), np.abs(b[name])).astype(np.float32)
                error = np.abs(live.astype(np.float32) - expected.astype(np.float32))
                assert (error <= 2.0**-10 * larger + 2.0**-24).all(), (name, error.max())
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        weights.set_alpha(1.5)


def test_blended_weights_reject_mismatched_endpoints() -> None:
    w = np.ones(4, np.float16)
    with pytest.raises(RefitWeightsError, match="different weights: b"):
        BlendedWeights({"a": w, "b": w}, {"a": w}, "cpu")
    with pytest.raises(RefitWeightsError, match="a: float16 4 elements in weights_psnr, float32 4"):
        BlendedWeights({"a": w}, {"a": w.astype(np.float32)}, "cpu")
    with pytest.raises(RefitWeightsError, match="non-finite"):
        BlendedWeights({"a": w}, {"a": np.array([1, 2, np.inf, 4], np.float16)}, "cpu")
    with pytest.raises(RefitWeightsError, match="not blendable"):
        BlendedWeights({"i": np.arange(4)}, {"i": np.arange(4) + 1}, "cpu")
    fixed = BlendedWeights({"i": np.arange(4), "a": w}, {"i": np.arange(4), "a": 3 * w}, "cpu")
    fixed.set_alpha(0.5)
    assert fixed.live("i").tolist() == [0, 1, 2, 3] and fixed.live("a").tolist() == [2.0] * 4


# ---------------------------------------------------------------------------------------------------------
# Progress bars and TensorRT's log


def test_build_progress_nests_phases(capsys: pytest.CaptureFixture[str]) -> None:
    progress = BuildProgress(enabled=True)
    progress.phase_start("Building engine", None, 2)
    progress.phase_start("Timing tactics", "Building engine", 10)
    assert progress._depth == {"Building engine": 0, "Timing tactics": 1}
    for step in range(5):
        assert progress.step_complete("Timing tactics", step) is True
    assert progress._bars["Timing tactics"].n == 5
    progress.phase_finish("Timing tactics")
    assert progress.step_complete("Timing tactics", 6) is True  # a finished phase is ignored
    progress.step_complete("Building engine", 1)
    progress.close()
    assert progress._bars == {}
    assert "Timing tactics" in capsys.readouterr().err


def test_trt_log_forwards_and_keeps_errors(caplog: pytest.LogCaptureFixture) -> None:
    sink = TrtLog(keep=2)
    with caplog.at_level(logging.DEBUG, logger="engine.trt"):
        sink.record("WARNING", "slow tactic")
        sink.record("VERBOSE", "chatter")
        for i in range(3):
            sink.record("ERROR", f"bad {i}")
    assert sink.last_errors() == "bad 1; bad 2"
    assert [(r.levelno, r.getMessage()) for r in caplog.records][:2] == [
        (logging.WARNING, "TensorRT: slow tactic"), (logging.DEBUG, "TensorRT: chatter")]
    assert TrtLog().last_errors() == "TensorRT logged no error"


# ---------------------------------------------------------------------------------------------------------
# With TensorRT and a GPU

TILE, BATCH = 32, 2
# fp16 weights and activations through 12 convs of a tiny network whose outputs are O(0.1–1): an fp16 result
# is within a few fp16 ulps (2^-11 relative) per layer of fp32; 1e-2 absolute leaves room for kernel choice.
FP16_ATOL = 1e-2


def _build(tmp: Path, net: M.SRNet, name: str, *, refit: bool = True) -> tuple[Path, dict]:
    onnx_path, plan = tmp / f"{name}.onnx", tmp / f"{name}.plan"
    save(export_onnx(net, precision="fp16", io_dtype="fp32"), onnx_path)
    lo, opt, hi = profile_shapes(TILE, BATCH, net.in_channels, 1)
    info = build_engine(onnx_path, plan, min_shape=lo, opt_shape=opt, max_shape=hi, refit=refit, progress=False,
                        timing_cache=tmp / "timing.cache")
    return plan, info


def _backend(plan: Path, net: M.SRNet, **kw: Any) -> TensorRTBackend:
    return TensorRTBackend(plan, scale=net.scale, in_channels=net.in_channels, out_channels=net.out_channels,
                           multiple=1, **kw)


def _torch(net: M.SRNet, x: torch.Tensor) -> torch.Tensor:
    """The fp32 PyTorch reference on the GPU (a copy: TorchBackend moves its network)."""
    return TorchBackend(copy.deepcopy(net), device="cuda").run(x)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("trt")
    psnr, gan = _tiny_net(0), _tiny_net(1)
    model = export_onnx(psnr, precision="fp16", io_dtype="fp32")
    plan, info = _build(tmp, psnr, "psnr")
    return dict(tmp=tmp, psnr=psnr, gan=gan, plan=plan, info=info, model=model,
                weights_psnr=refit_arrays(model, psnr.state_dict()), weights_gan=refit_arrays(model, gan.state_dict()))


@pytest.mark.parametrize("shape", [(BATCH, 3, TILE, TILE), (1, 3, 20, 28), (5, 3, 16, 16)])
@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT 10.1 or newer and a CUDA GPU")
def test_fp16_engine_matches_torch(built: dict, shape: tuple[int, ...]) -> None:
    info = built["info"]
    assert info["gpu_arch"].startswith("sm_") and info["refittable"] is True
    assert info["input_dtype"] == "FLOAT" and (built["tmp"] / "timing.cache").stat().st_size > 0
    backend = _backend(built["plan"], built["psnr"])
    x = torch.rand(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    for _ in range(3):  # plain run, then graph replays (a 5-tile batch is split into the plan's batch of 2)
        out = backend.run(x)
    assert out.dtype == torch.float32 and out.shape == (shape[0], 3, shape[2] * 4, shape[3] * 4)
    torch.testing.assert_close(out, _torch(built["psnr"], x), atol=FP16_ATOL, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT 10.1 or newer and a CUDA GPU")
def test_refit_to_alpha_equals_a_build_from_the_interpolated_weights(built: dict) -> None:
    alpha = 0.3
    backend = _backend(built["plan"], built["psnr"], weights_psnr=built["weights_psnr"],
                       weights_gan=built["weights_gan"], alpha=0.0)
    refittable = set(backend._weights.names) if backend._weights is not None else set()
    assert "conv_first.weight" in refittable and refittable <= {t.name for t in built["model"].graph.initializer}
    seconds = backend.set_alpha(alpha)
    assert seconds > 0 and backend.last_refit_seconds == seconds and backend.alpha == alpha

    mixed = _tiny_net(0)
    mixed.load_state_dict(M.interpolate(built["psnr"].state_dict(), built["gan"].state_dict(), alpha))
    plan, _ = _build(built["tmp"], mixed, "mixed", refit=False)  # also guards against refit-only bugs (11.3.0)
    x = torch.rand(BATCH, 3, TILE, TILE, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    refitted, rebuilt = backend.run(x), _backend(plan, mixed).run(x)
    torch.testing.assert_close(refitted, rebuilt, atol=2e-3, rtol=0)
    torch.testing.assert_close(refitted, _torch(mixed, x), atol=FP16_ATOL, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT 10.1 or newer and a CUDA GPU")
def test_cuda_graph_after_refit_gives_the_new_output(built: dict) -> None:
    backend = _backend(built["plan"], built["psnr"], weights_psnr=built["weights_psnr"],
                       weights_gan=built["weights_gan"], cuda_graph=True)
    x = torch.rand(BATCH, 3, TILE, TILE, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    backend.set_alpha(0.0)
    backend.run(x)
    before = backend.run(x)  # graph replay
    state = backend._shapes[tuple(x.shape)]
    assert state.graph is not None, "CUDA graph capture failed (see the log warning)"
    backend.set_alpha(1.0)
    assert state.graph is None  # dropped by the refit
    after_plain, after_graph = backend.run(x), backend.run(x)
    assert state.graph is not None
    expected = _torch(built["gan"], x)
    torch.testing.assert_close(after_plain, expected, atol=FP16_ATOL, rtol=0)
    torch.testing.assert_close(after_graph, after_plain, atol=0, rtol=0)
    assert (after_graph - before).abs().max() > 10 * FP16_ATOL  # the GAN weights really differ


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT 10.1 or newer and a CUDA GPU")
def test_parse_errors_name_the_onnx_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    from export.tensorrt import TensorRTBuildError

    with pytest.raises(TensorRTBuildError, match="could not parse broken.onnx"):
        build_engine(broken, tmp_path / "broken.plan", min_shape=(1, 3, 8, 8), opt_shape=(1, 3, 8, 8),
                     max_shape=(1, 3, 8, 8), progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT 10.1 or newer and a CUDA GPU")
def test_plan_without_refit_refuses_alpha(built: dict, tmp_path: Path) -> None:
    plan, _ = _build(tmp_path, built["psnr"], "frozen", refit=False)
    with pytest.raises(ValueError, match="built without REFIT"):
        _backend(plan, built["psnr"], weights_psnr=built["weights_psnr"], weights_gan=built["weights_gan"])
