"""Native plans (`kernels.plan`): built for sm_90 on this CPU machine by `python -m engine.build --backend native`,
parsed and validated by engine._C's host code, interpreted by the reference executor (TRITON_INTERPRET=1) against
PyTorch float64, and refused with clear messages when corrupted, truncated, of another version or for another GPU.
On a GPU, the C++ runtime against the Triton backend and the reference.

Plans are built in a subprocess: triton.compile needs real JIT functions, and this test process interprets them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from util import no_gpu_message, randomize_

import engine
import engine.models as M
from engine._ext import load_C
from engine.backends.registry import EngineError
from engine.manifest import read_manifest
from kernels import plan as P
from kernels.fused import fused_network
from kernels.plan_reference import ReferenceExecutor

REPO = Path(__file__).resolve().parents[1]
C = load_C()
GPU = torch.cuda.is_available()


def _rrdb(seed: int, **kw: object) -> M.SRNet:
    torch.manual_seed(seed)
    return M.create("rrdb6", num_block=1, num_feat=16, num_grow_ch=8, **kw).eval()


def _srgan(seed: int) -> M.SRNet:
    torch.manual_seed(seed)
    net = M.create("srgan", num_block=2, num_feat=16).eval()
    randomize_(net, seed + 10)
    return net


def _build(tmp: Path, name: str, net: M.SRNet, gan: M.SRNet | None, *flags: str) -> Path:
    """`python -m engine.build --backend native` in a subprocess without TRITON_INTERPRET; the engine directory."""
    M.save(net, tmp / f"{name}.safetensors")
    cmd = [sys.executable, "-m", "engine.build", "--backend", "native", "--weights", str(tmp / f"{name}.safetensors"),
           "-o", str(tmp / name), *flags]
    if gan is not None:
        M.save(gan, tmp / f"{name}_gan.safetensors")
        cmd += ["--gan-weights", str(tmp / f"{name}_gan.safetensors")]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / name


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four engines: RRDBNet ×4 fp32 with GAN weights, RRDBNet ×2 (pixel-unshuffle) fp16, SRResNet ×4 fp16, and
    RRDBNet ×4 with an INT8 trunk and GAN weights (calibrated on three small images)."""
    import cv2

    tmp = tmp_path_factory.mktemp("plans")
    calib = tmp / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        smooth = cv2.GaussianBlur(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(calib / f"{i}.png"), smooth)
    return {
        "x4": _build(tmp, "x4", _rrdb(0), _rrdb(1), "--fp32", "--tile", "12", "--batch", "2"),
        "x2": _build(tmp, "x2", _rrdb(2, scale=2), None, "--fp16", "--tile", "8", "--batch", "1"),
        "srgan": _build(tmp, "srgan", _srgan(3), None, "--fp16", "--tile", "8", "--batch", "1"),
        "int8": _build(tmp, "int8", _rrdb(4), _rrdb(5), "--int8", "--calib", str(calib), "--tile", "8", "--batch",
                       "1"),
    }


def _plan(d: Path) -> Path:
    return d / P.PLAN_FILE


# ---------------------------------------------------------------------------------------------------------
# parsed and validated by engine._C (host code)


def test_the_manifest_records_the_plan(built: dict[str, Path]) -> None:
    m = read_manifest(built["x4"])
    assert m["backend"] == "native" and m["gpu_arch"] == "sm_90" and m["precision"] == "fp32"
    assert m["plan"]["format_version"] == P.PLAN_VERSION and m["tile"] == 12 and m["batch"] == 2
    assert "gan" in m["alpha"]


def test_engine_C_parses_the_plan_built_for_sm90(built: dict[str, Path]) -> None:
    p = P.read_plan(_plan(built["x4"]), arch=90, cubins=True)
    assert p["version"] == P.PLAN_VERSION and p["arch"] == 90
    assert p["file_bytes"] == _plan(built["x4"]).stat().st_size
    meta = json.loads(p["meta"])
    assert meta["model"]["arch"] == "rrdbnet" and meta["scale"] == 4 and meta["has_alpha"]
    assert len(meta["kernels"]) == len(p["kernels"])
    for k in p["kernels"]:
        assert k["cubin"][:4] == b"\x7fELF" and k["cubin_bytes"] == len(k["cubin"])  # a real sm_90 cubin
        assert set(k["params"]) <= {4, 8}
    # one shape: (2, 3, 12, 12) → (2, 3, 48, 48); its launches are the two conversions and every conv
    (shape,) = p["shapes"]
    assert (shape["n"], shape["c_in"], shape["h"], shape["w"]) == (2, 3, 12, 12)
    assert (shape["c_out"], shape["h_out"], shape["w_out"]) == (3, 48, 48)
    assert shape["launch_count"] == 2 + (1 + 15 * 1 + 1 + 2 + 2)
    first, count = p["alpha"]
    assert count == 1 and first == shape["launch_count"]  # set_alpha: one lerp launch
    # every launch's arguments: one per cubin parameter, pointers inside their buffers
    for launch in p["launches"]:
        kernel = p["kernels"][launch["kernel"]]
        assert len(launch["args"]) == len(kernel["params"])
        for (kind, value), size in zip(launch["args"], kernel["params"], strict=True):
            assert size == (8 if kind in (P.ARG_ARENA, P.ARG_WEIGHTS, P.ARG_NULL) else 4)
            if kind == P.ARG_ARENA:
                assert 0 <= value < shape["arena_bytes"]
            if kind == P.ARG_WEIGHTS:
                assert 0 <= value < len(p["weights"])


def test_the_plan_round_trips_through_engine_C(tmp_path: Path) -> None:
    """What build_plan made is exactly what engine._C reads back (format-only plan: no compilation)."""
    net, gan = _rrdb(0), _rrdb(1)
    plan = P.build_plan(fused_network(net, "fp32", gan_net=gan), [(1, 3, 4, 4), (2, 3, 8, 4)], compile=False,
                        meta={"note": "round trip"})
    P.write_plan(tmp_path / "p.plan", plan)
    got = P.read_plan(tmp_path / "p.plan", cubins=True)
    assert json.loads(got["meta"]) == json.loads(json.dumps(plan.meta))
    assert got["weights"] == plan.weights
    assert got["shapes"] == plan.shapes
    assert got["alpha"] == plan.alpha
    assert [k["name"] for k in got["kernels"]] == [k["name"] for k in plan.kernels]
    assert [k["params"] for k in got["kernels"]] == [k["params"] for k in plan.kernels]
    assert len(got["launches"]) == len(plan.launches)
    for a, b in zip(got["launches"], plan.launches, strict=True):
        assert a["kernel"] == b["kernel"] and tuple(a["grid"]) == tuple(b["grid"])
        for (ka, va), (kb, vb) in zip(a["args"], b["args"], strict=True):
            assert ka == kb
            if kb == P.ARG_F32:
                assert va == struct.unpack("<f", struct.pack("<f", vb))[0]
            elif kb != P.ARG_ALPHA:
                assert va == vb
    # the live weights start as the PSNR endpoint: the plan's weights hold live, PSNR and GAN buffers
    fused = fused_network(net, "fp32", gan_net=gan)
    live = fused.params.live.numpy().tobytes()
    assert plan.weights.count(live) >= 2  # the live buffer and the PSNR endpoint are equal at alpha 0


# ---------------------------------------------------------------------------------------------------------
# refused with clear messages


def _sections(data: bytes) -> dict[str, tuple[int, int]]:
    count = struct.unpack_from("<I", data, 20)[0]
    out = {}
    for i in range(count):
        tag, _crc, offset, size = struct.unpack_from("<4sIQQ", data, 64 + 24 * i)
        out[tag.decode()] = (offset, size)
    return out


def _reheader(data: bytearray) -> bytearray:
    """Recompute the header CRC after editing header fields (so the check under test is the one that fires)."""
    struct.pack_into("<I", data, 36, zlib.crc32(bytes(data[:36])))
    return data


def _corrupt(src: Path, dst: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    dst.write_bytes(bytes(edit(data)))
    return dst


def _flip(data: bytearray, offset: int) -> bytearray:
    data[offset] ^= 0x5A
    return data


@pytest.mark.parametrize("case,message", [
    ("weights byte flipped", "section WGHT is corrupted"),
    ("launch table byte flipped", "section LNCH is corrupted"),
    ("truncated", "truncated"),
    ("wrong version", "plan format version 2, this runtime reads version 1"),
    ("bad magic", "not an engine plan"),
    ("header byte flipped", "header"),
    ("empty", "not an engine plan"),
])
def test_a_damaged_plan_is_refused(built: dict[str, Path], tmp_path: Path, case: str, message: str) -> None:
    src = _plan(built["x4"])
    sections = _sections(src.read_bytes())
    edits = {
        "weights byte flipped": lambda d: _flip(d, sections["WGHT"][0] + sections["WGHT"][1] // 2),
        "launch table byte flipped": lambda d: _flip(d, sections["LNCH"][0] + 3),
        "truncated": lambda d: d[: len(d) - 1000],
        "wrong version": lambda d: _reheader(d[:8] + struct.pack("<I", 2) + d[12:]),
        "bad magic": lambda d: b"NOTAPLAN" + d[8:],
        "header byte flipped": lambda d: _flip(d, 24),
        "empty": lambda d: b"",
    }
    bad = _corrupt(src, tmp_path / "bad.plan", edits[case])
    with pytest.raises(C.PlanError, match="bad.plan") as info:
        P.read_plan(bad)
    assert message in str(info.value)
    assert "rebuild" in str(info.value) or case in ("bad magic", "empty")
    assert isinstance(info.value, ValueError)


def test_a_plan_for_another_architecture_is_refused(built: dict[str, Path]) -> None:
    with pytest.raises(C.PlanError, match=r"built for sm_90, this GPU is sm_80.*rebuild"):
        P.read_plan(_plan(built["x4"]), arch=80)


def test_a_missing_plan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(C.PlanError, match="nothere.plan"):
        P.read_plan(tmp_path / "nothere.plan")


def test_an_out_of_range_offset_is_refused(tmp_path: Path) -> None:
    """A plan whose file is intact but whose launch points outside the arena (written by a buggy builder)."""
    plan = P.build_plan(fused_network(_rrdb(0), "fp32"), [(1, 3, 4, 4)], compile=False)
    kind_index = next(i for i, (kind, _) in enumerate(plan.launches[3]["args"]) if kind == P.ARG_ARENA)
    plan.launches[3]["args"][kind_index] = (P.ARG_ARENA, plan.shapes[0]["arena_bytes"] + 256)
    P.write_plan(tmp_path / "oob.plan", plan)
    with pytest.raises(C.PlanError, match="arena"):
        P.read_plan(tmp_path / "oob.plan")


def test_without_a_gpu_the_runtime_and_the_engine_say_what_to_do(built: dict[str, Path]) -> None:
    if GPU:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match=no_gpu_message()):
        C.NativePlan(str(_plan(built["x4"])))
    with pytest.raises(EngineError, match="ReferenceExecutor"):
        engine.load(built["x4"])


# ---------------------------------------------------------------------------------------------------------
# the reference executor: the plan's meaning, against PyTorch float64


def test_reference_executor_matches_pytorch_and_blends_alpha(built: dict[str, Path]) -> None:
    net, gan = _rrdb(0), _rrdb(1)
    ex = ReferenceExecutor(_plan(built["x4"]))
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    for alpha in (None, 0.3, 1.0):
        ref_net = net
        if alpha is not None:
            ex.set_alpha(alpha)
            ref_net = M.interpolated(net, gan, alpha)
        with torch.no_grad():
            ref = ref_net.double()(x.double())
        got = ex.run(x).double()
        assert got.shape == ref.shape == (2, 3, 48, 48)
        assert (got - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max())), alpha


@pytest.mark.parametrize("name", ["x2", "srgan"])
def test_reference_executor_fp16_plans(built: dict[str, Path], name: str) -> None:
    net = _rrdb(2, scale=2) if name == "x2" else _srgan(3)
    ex = ReferenceExecutor(_plan(built[name]))
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net.double()(x.double())
    got = ex.run(x).double()
    assert got.shape == ref.shape
    # as the fp16 whole-network tests of test_kernels: a few fp16 ulps of the output's magnitude
    assert (got - ref).abs().max() <= 8 * 2.0**-10 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("name", ["x2", "int8"])
def test_reference_executor_equals_the_triton_plan_it_froze(built: dict[str, Path], name: str) -> None:
    """The same kernels with the arguments read back from the file give the very same bits as the live Triton plan
    (for the INT8 trunk, with the manifest's calibrated ranges, at alpha 0 and 0.6)."""
    manifest = read_manifest(built[name])
    if name == "x2":
        fused = fused_network(_rrdb(2, scale=2), "fp16")
    else:
        fused = fused_network(_rrdb(4), "int8", gan_net=_rrdb(5), int8_ranges=manifest["int8"]["slice_ranges"])
    ex = ReferenceExecutor(_plan(built[name]))
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for alpha in ([None] if name == "x2" else [None, 0.6]):
        if alpha is not None:
            fused.set_alpha(alpha)
            ex.set_alpha(alpha)
        assert torch.equal(ex.run(x), fused(x))


def test_reference_executor_refuses_other_shapes(built: dict[str, Path]) -> None:
    ex = ReferenceExecutor(_plan(built["x2"]))
    with pytest.raises(ValueError, match=r"built for \[\(1, 3, 8, 8\)\]"):
        ex.run(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="without GAN weights"):
        ex.set_alpha(0.5)


# ---------------------------------------------------------------------------------------------------------
# a crafted plan runs nothing of its own (issue 15.1): format-only plans (no cubins) are enough for the executor


def _format_plan(tmp: Path, edit=None, *, gan: bool = True) -> Path:
    """A plan of a small RRDBNet (fp32, shape (1, 3, 4, 4)) as engine.build records it, without cubins; `edit`
    changes the Plan before it is written (the file stays intact: engine._C's checks pass)."""
    net = _rrdb(0)
    fused = fused_network(net, "fp32", gan_net=_rrdb(1) if gan else None)
    plan = P.build_plan(fused, [(1, 3, 4, 4)], compile=False,
                        meta={"model": {"name": None, "arch": net.arch, "hparams": net.hparams}, "precision": "fp32"})
    if edit is not None:
        edit(plan)
    P.write_plan(tmp / "model.plan", plan)
    return tmp / "model.plan"


def test_the_reference_executor_runs_a_format_only_plan(tmp_path: Path) -> None:
    """The control for the refusals below: the same plan, unedited, runs and matches PyTorch."""
    ex = ReferenceExecutor(_format_plan(tmp_path))
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _rrdb(0).double()(x.double())
    assert (ex.run(x).double() - ref).abs().max() <= 1e-5
    assert set(P.kernel_table()) >= {k["function"] for k in ex.meta["kernels"]}


@pytest.mark.parametrize("function", ["evil.run", "os.system", "kernels.conv.triton", "kernels.plan.write_plan"])
def test_a_plan_naming_code_of_its_own_runs_none_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       function: str) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nrun = print\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # as when python runs from the engine's folder

    def edit(plan: P.Plan) -> None:
        plan.meta["kernels"][0]["function"] = function

    path = _format_plan(tmp_path, edit)
    with pytest.raises(C.PlanError, match="which is not one of esrgan-engine's kernels") as info:
        ReferenceExecutor(path)
    assert str(path) in str(info.value) and "rebuild" in str(info.value)
    assert not marker.exists() and "evil" not in sys.modules


def _kernel(plan: P.Plan, function: str) -> dict:
    return next(k for k in plan.meta["kernels"] if k["function"] == function)


def _launch(plan: P.Plan, kind: int) -> list:
    return next(launch["args"] for launch in plan.launches
                if any(k == kind for k, _ in launch["args"]))


def _set_arg(plan: P.Plan, kind: int, value: int) -> None:
    args = _launch(plan, kind)
    i = next(i for i, (k, _) in enumerate(args) if k == kind)
    args[i] = (kind, value)


@pytest.mark.parametrize("what,edit,words", [
    ("a huge block", lambda p: _kernel(p, "kernels.conv.conv_kernel")["constexprs"].update(BLOCK_M=1 << 20),
     "its constexprs"),
    ("a text constexpr", lambda p: _kernel(p, "kernels.conv.conv_kernel")["constexprs"].update(ACT="__import__"),
     "its constexprs"),
    ("an unknown dtype",
     lambda p: _kernel(p, "kernels.conv.conv_kernel")["signature"].__setitem__(0, ["x_ptr", "*fp64"]), "its signature"),
    ("more warps", lambda p: _kernel(p, "kernels.packing.lerp_kernel").update(num_warps=32), "its num_warps"),
    ("a stride", lambda p: _set_arg(p, P.ARG_I32, 1 << 30), "differs from what the network it names records"),
    ("an offset", lambda p: _set_arg(p, P.ARG_WEIGHTS, 16), "differs from what the network it names records"),
    ("a grid", lambda p: p.launches[2].update(grid=(1 << 20, 1, 1)), "differs from what the network it names"),
    ("another network", lambda p: p.meta["model"].update(arch="edsr"), "names no network of the fused kernels"),
    ("a huge network", lambda p: p.meta["model"]["hparams"].update(num_block=10**9), "not plain numbers up to"),
    ("a bigger network", lambda p: p.meta["model"]["hparams"].update(num_feat=1024), "more than its weights"),
    ("nested hparams", lambda p: p.meta["model"]["hparams"].update(num_feat={"a": 1}), "not plain numbers"),
    ("no kernel list", lambda p: p.meta.update(kernels="conv"), "not an object with a list of kernels"),
])
def test_a_plan_that_differs_from_what_we_record_is_refused(tmp_path: Path, what: str, edit, words: str) -> None:
    path = _format_plan(tmp_path, edit)
    with pytest.raises(C.PlanError, match="rebuild it") as info:
        ReferenceExecutor(path)
    assert words in str(info.value), what


def test_build_refuses_what_a_plan_cannot_hold() -> None:
    with pytest.raises(ValueError, match="the fused kernels run rrdbnet, srresnet, srvgg, not edsr"):
        fused_network(M.create("edsr", num_block=1, num_feat=16), "fp16")
    with pytest.raises(P.PlanBuildError, match="multiples of 2"):
        P.build_plan(fused_network(_rrdb(0, scale=2), "fp16"), [(1, 3, 5, 6)], compile=False)


# ---------------------------------------------------------------------------------------------------------
# engine.infer hands whole images to a backend that tiles them itself (as engine.backends.native.NativeBackend does)


def test_infer_hands_whole_planes_to_a_backend_that_tiles_itself() -> None:
    from engine.backends.torch_eager import TorchBackend
    from engine.inference import upscale_planes

    inner = TorchBackend(_rrdb(0))
    calls = []

    class SelfTiling(TorchBackend):  # a real network; only the tiling moves into the backend
        def upscale_planes(self, planes, *, tile, tile_overlap):
            calls.append((planes.shape, tile, tile_overlap))
            return upscale_planes(inner, planes, tile=8, tile_overlap=tile_overlap)

    image = np.random.default_rng(0).integers(0, 256, (13, 11, 3), dtype=np.uint8)
    out = engine.infer(SelfTiling(_rrdb(0)), image, tile=8, tile_overlap=2)
    assert calls == [((3, 13, 11), 8, 2)]  # one call with the whole image, not a call per tile
    np.testing.assert_array_equal(out, engine.infer(inner, image, tile=8, tile_overlap=2))


# ---------------------------------------------------------------------------------------------------------
# the extension without nvcc


@pytest.mark.slow
def test_the_extension_builds_without_nvcc_and_reads_plans(built: dict[str, Path], tmp_path: Path) -> None:
    """ENGINE_CUDA=0: host code only. It imports, parses and validates plans, and the runtime says why it cannot."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.so", "__pycache__", "engines",
                                                             "results", "*.egg-info"))
    env = {**os.environ, "ENGINE_CUDA": "0"}
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    code = (
        "import engine._C as C, sys\n"
        "assert C.__file__.startswith(sys.argv[2]), C.__file__\n"
        "assert not C.built_with_cuda()\n"
        "p = C.read_plan(sys.argv[1], 90)\n"
        "print(len(p['launches']))\n"
        "try:\n    C.NativePlan(sys.argv[1])\nexcept RuntimeError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(_plan(built["x4"])), str(src)], cwd=src,
                          env={**env, "PYTHONPATH": str(src)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert int(lines[0]) > 20 and "built without CUDA" in lines[1]


# ---------------------------------------------------------------------------------------------------------
# on a GPU: the C++ runtime


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_native_runtime_matches_triton_and_reference_on_gpu(tmp_path: Path) -> None:
    from engine.backends.fused import TritonBackend

    major, minor = torch.cuda.get_device_capability()
    net, gan = _rrdb(0), _rrdb(1)
    d = _build(tmp_path, "gpu", net, gan, "--fp16", "--tile", "32", "--batch", "2", "--arch", f"{major}{minor}")
    native = engine.load(d)
    triton_backend = TritonBackend(net, dtype="fp16", gan_net=gan)
    x = torch.rand(2, 3, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    for alpha in (0.0, 0.7):
        native.set_alpha(alpha)
        triton_backend.set_alpha(alpha)
        with torch.no_grad():
            ref = M.interpolated(net, gan, alpha).cuda().double()(x.double())
        got, tri = native.run(x).double(), triton_backend.run(x).double()
        assert (got - tri).abs().max() <= 1e-3
        assert (got - ref).abs().max() <= 8 * 2.0**-10 * max(1.0, float(ref.abs().max()))
    stats = native.backend.runtime.stats()
    assert stats["graph_captures"] == 1  # set_alpha kept the graph
    # whole images: numpy in, numpy out; a CUDA tensor in, a CUDA tensor out (DLPack), the same pixels
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    out = engine.infer(native, image)
    assert out.shape == (180, 280, 3) and out.dtype == np.uint8
    planes = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255).cuda()
    dev = engine.infer(native, planes)
    assert dev.is_cuda and dev.shape == (3, 180, 280)
    host = engine.infer(native, image.astype(np.float32) / 255)
    assert np.abs(dev.cpu().numpy().transpose(1, 2, 0) - host).max() <= 1e-6


def test_an_image_smaller_than_the_plan_tile_is_named_before_it_is_padded() -> None:
    """The native runtime pads an image smaller than its one tile shape by repeating edge pixels, which changes the
    network's output near that edge (seen on an H200): upscale_planes warns with the --tile that avoids it."""
    from engine.backends.native import padded_edges

    assert padded_edges(544, 540, 960) is not None and "height 540" in padded_edges(544, 540, 960)
    assert "--tile 540" in padded_edges(544, 540, 960)
    both = padded_edges(512, 300, 400)
    assert both is not None and "height 300 and width 400" in both
    assert padded_edges(540, 540, 960) is None and padded_edges(256, 1080, 1920) is None
