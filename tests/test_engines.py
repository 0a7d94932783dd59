"""python -m engine.build, engine directories (manifest, checksums), engine.load, ONNX Runtime engines and their
alpha refit, and the ONNX Runtime path of engine.infer / python -m engine.upscale."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from util import small_rrdb

import engine
import engine.models as M
from engine.backends.ort import OrtBackend, from_network
from engine.backends.registry import EngineError
from engine.build import choose_backend
from engine.build import main as build_main
from engine.engines import write_engine
from engine.manifest import FORMAT_VERSION, read_manifest
from engine.upscale import main as upscale_main
from export.onnx import export_onnx

REPO = Path(__file__).resolve().parents[1]
INT8_PSNR = 40.0  # measured 47.1, 48.4 and 48.9 dB at alpha 0, 0.6 and 1; a constant backend: about 10
TINY = REPO / "weights" / "tiny_x4.safetensors"  # the shipped, trained default model: outputs with a real range



def _tiny() -> M.SRNet:
    return M.load(TINY)[0].eval()


def _gan() -> M.SRNet:
    """A "GAN fine-tune" of the shipped model: every weight moved by 20% of its tensor's spread (fixed seed), so
    that alpha visibly changes the output while it stays an image."""
    net = _tiny()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * p.std() * torch.randn(p.shape, generator=g))
    return net


def _photo(h: int, w: int, top: int = 60, left: int = 180) -> np.ndarray:
    """A crop of a real photo, (h, w, 3) uint8 RGB."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[top:top + h, left:left + w])


def _photo_batch(n: int, h: int, w: int) -> np.ndarray:
    """(n, 3, h, w) float32 in [0, 1] from the photo."""
    return np.stack([_photo(h, w, 40 + 37 * i, 150 + 23 * i).transpose(2, 0, 1) for i in range(n)]).astype(
        np.float32) / 255


def assert_same_image(out: np.ndarray, ref: np.ndarray) -> None:
    """8-bit outputs equal within one level, and the reference is a real image (a spread of many levels), so that a
    backend that ignores its input cannot pass."""
    assert out.shape == ref.shape
    assert ref.std() > 20 and len(np.unique(ref)) > 100, "the reference output has no real range"
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    M.save(_tiny(), d / "psnr.safetensors")
    M.save(_gan(), d / "gan.safetensors")
    return d / "psnr.safetensors", d / "gan.safetensors"


@pytest.fixture(scope="module")
def alpha_engine(checkpoints: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("engines") / "small-fp32"
    a, b = checkpoints
    assert build_main(["--weights", str(a), "--gan-weights", str(b), "--alpha", "0.25", "--fp32", "--tile", "64",
                       "-o", str(out)]) == 0
    return out


def _onnx_run(net: M.SRNet, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(export_onnx(net).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _blend(alpha: float) -> M.SRNet:
    net = _tiny()
    net.load_state_dict(M.interpolate(_tiny(), _gan(), alpha))
    return net


# ---------------------------------------------------------------------------------------------------------
# build and load


def test_build_writes_a_manifest_that_describes_the_engine(alpha_engine: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = json.loads((alpha_engine / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["backend"] == "onnxruntime" and manifest["precision"] == "fp32"
    assert manifest["model"]["arch"] == "rrdbnet" and manifest["model"]["hparams"]["num_feat"] == 32
    assert (manifest["scale"], manifest["in_channels"], manifest["tile"], manifest["batch"]) == (4, 3, 64, 1)
    assert manifest["alpha"]["value"] == 0.25
    assert len(manifest["alpha"]["psnr"]["sha256"]) == 64 and len(manifest["alpha"]["gan"]["sha256"]) == 64
    assert set(manifest["files"]) == {"model.onnx", "weights_psnr.safetensors", "weights_gan.safetensors"}
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    assert not any(p.name.startswith(".") for p in alpha_engine.parent.iterdir())  # no temporary left behind


def test_loaded_engine_runs_the_network_at_the_build_alpha(alpha_engine: Path) -> None:
    eng = engine.load(alpha_engine)
    assert eng.alpha == 0.25 and eng.scale == 4 and eng.tile == 64
    x = _photo_batch(2, 12, 20)
    with torch.no_grad():
        ref = _blend(0.25).double()(torch.from_numpy(x).double()).numpy()
    assert ref.std() > 0.1  # an image, not a constant
    assert np.abs(eng.run(torch.from_numpy(x)).numpy() - ref).max() < 1e-5


def test_set_alpha_equals_exporting_the_interpolated_checkpoint(alpha_engine: Path) -> None:
    eng = engine.load(alpha_engine)
    x = _photo_batch(1, 16, 16)
    for alpha in (0.0, 0.7, 1.0):
        seconds = eng.set_alpha(alpha)
        assert eng.alpha == alpha and 0 < seconds == eng.last_refit_seconds
        got = eng.run(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, _onnx_run(_blend(alpha), x), rtol=0, atol=1e-6)
    # the endpoints really differ, so the equality above says something
    assert np.abs(_onnx_run(_blend(0.0), x) - _onnx_run(_blend(1.0), x)).max() > 0.05


def test_infer_takes_an_engine_directory_and_its_tile(alpha_engine: Path) -> None:
    image = _photo(72, 84)
    out = engine.infer(str(alpha_engine), image, alpha=0.5)
    ref = engine.infer(engine.TorchBackend(_blend(0.5)), image, tile=64)
    assert out.shape == (288, 336, 3)
    assert_same_image(out, ref)


def test_build_without_gan_weights_refuses_alpha(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    assert build_main(["--weights", str(checkpoints[0]), "-o", str(tmp_path / "e"), "--tile", "16", "--no-verify"]) == 0
    eng = engine.load(tmp_path / "e")
    with pytest.raises(ValueError, match="--gan-weights"):
        eng.set_alpha(0.5)
    assert set(read_manifest(tmp_path / "e")["files"]) == {"model.onnx"}


def test_auto_picks_onnxruntime_here_and_says_why(checkpoints: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    backend, why = choose_backend("auto")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert backend == "onnxruntime" and "no CUDA GPU" in why
    assert build_main(["--weights", str(checkpoints[0]), "-o", str(tmp_path / "e"), "--tile", "16",
                       "--no-verify"]) == 0
    assert "backend: onnxruntime (" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--model", "rrdb23"], "--random-weights"),
    (["--model", "rrdb6", "--random-weights", "--int8"], "--calib DIR"),
    (["--model", "rrdb6", "--random-weights", "--alpha", "0.5"], "--gan-weights"),
    (["--model", "rrdb6", "--random-weights", "--tile", "30", "--fp32"], None),
])
def test_build_refuses_what_it_cannot_do(argv: list[str], message: str | None, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    code = build_main([*argv, "-o", str(tmp_path / "e"), "--no-verify"])
    if message is None:
        assert code == 0  # tile 30 is fine for a ×4 network (no pixel-unshuffle)
    else:
        assert code == 2 and message in capsys.readouterr().err


def test_build_refuses_a_checkpoint_of_another_model(checkpoints: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert build_main(["--model", "rrdb23", "--weights", str(checkpoints[0]), "-o", str(tmp_path / "e")]) == 2
    assert "drop --model" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_build_pixel_unshuffle_tile_must_be_a_multiple(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = build_main(["--model", "rrdb6", "--random-weights", "--tile", "30", "-o", str(tmp_path / "e")])
    assert code == 0
    torch.manual_seed(0)
    M.save(M.create("rrdb6", num_block=1, num_feat=8, num_grow_ch=4, scale=1), tmp_path / "x1.safetensors")
    assert build_main(["--weights", str(tmp_path / "x1.safetensors"), "--tile", "30", "-o", str(tmp_path / "f")]) == 2
    assert "multiple of 4" in capsys.readouterr().err


def test_tensorrt_backend_without_tensorrt_says_what_to_install(checkpoints: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from export.tensorrt import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    code = build_main(["--weights", str(checkpoints[0]), "--backend", "tensorrt", "-o", str(tmp_path / "e")])
    assert code == 2 and "pip install" in capsys.readouterr().err and not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------------------------------------
# the manifest guards the engine


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_wrong_format_version_is_rejected(alpha_engine: Path, tmp_path: Path) -> None:
    d = _copy(alpha_engine, tmp_path / "e")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=r"format version 2, this esrgan-engine reads version 1: rebuild"):
        engine.load(d)


def test_checksum_mismatch_is_rejected(alpha_engine: Path, tmp_path: Path) -> None:
    d = _copy(alpha_engine, tmp_path / "e")
    data = bytearray((d / "weights_gan.safetensors").read_bytes())
    data[-1] ^= 1
    (d / "weights_gan.safetensors").write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"weights_gan.safetensors does not match its checksum"):
        engine.load(d)


def test_missing_file_and_missing_manifest_are_rejected(alpha_engine: Path, tmp_path: Path) -> None:
    d = _copy(alpha_engine, tmp_path / "e")
    (d / "model.onnx").unlink()
    with pytest.raises(EngineError, match=r"model.onnx is missing \(listed in manifest.json\)"):
        engine.load(d)
    (d / "manifest.json").unlink()
    with pytest.raises(EngineError, match="no manifest.json: not an engine directory"):
        engine.load(d)
    with pytest.raises(EngineError, match="no such engine directory"):
        engine.load(tmp_path / "nothing")


def test_a_plan_for_another_gpu_is_rejected(alpha_engine: Path, tmp_path: Path) -> None:
    d = _copy(alpha_engine, tmp_path / "e")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest.update(backend="tensorrt", gpu_arch="sm_0")
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="sm_0"):
        engine.load(d)


def test_rebuilding_replaces_an_engine_whole_and_refuses_other_folders(tmp_path: Path) -> None:
    out = tmp_path / "e"

    def write(text: str):
        return {"model.onnx": lambda p: Path(p).write_text(text)}

    base = dict(model={"name": None, "arch": "rrdbnet", "hparams": {}}, scale=4, in_channels=3, out_channels=3,
                multiple=1, precision="fp32", backend="onnxruntime", tile=8, batch=1)
    write_engine(out, base, write("one"))
    with pytest.raises(RuntimeError, match="disk full"):
        write_engine(out, base, {"model.onnx": lambda p: (_ for _ in ()).throw(RuntimeError("disk full"))},
                     overwrite=True)
    assert (out / "model.onnx").read_text() == "one" and read_manifest(out)["files"]["model.onnx"]["bytes"] == 3
    with pytest.raises(EngineError, match="pass --overwrite"):
        write_engine(out, base, write("two!"))
    write_engine(out, base, write("two!"), overwrite=True)
    assert (out / "model.onnx").read_text() == "two!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("x")
    with pytest.raises(EngineError, match="not an engine folder"):
        write_engine(tmp_path / "photos", base, write("x"), overwrite=True)
    assert (tmp_path / "photos" / "a.jpg").read_text() == "x"


# ---------------------------------------------------------------------------------------------------------
# ONNX Runtime as the CPU default


def test_ort_backend_matches_torch_and_exposes_threads() -> None:
    net = _tiny()
    backend = from_network(net, threads=1)
    assert isinstance(backend, engine.Backend) and backend.threads == 1
    assert backend.session.get_session_options().intra_op_num_threads == 1
    image = _photo(50, 46)
    out = engine.infer(backend, image, tile=32, tile_overlap=8)
    ref = engine.infer(engine.TorchBackend(net), image, tile=32, tile_overlap=8)
    assert_same_image(out, ref)


def test_ort_backend_refuses_alpha_without_endpoints() -> None:
    backend = OrtBackend(export_onnx(small_rrdb(0)).SerializeToString(), scale=4, in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match="--gan-weights"):
        backend.set_alpha(0.5)


def test_upscale_cli_runs_onnxruntime_on_the_cpu_and_takes_engines(alpha_engine: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    image = _photo(24, 20)[..., ::-1]  # BGR, as cv2 writes it
    cv2.imwrite(str(tmp_path / "in.png"), image)
    assert upscale_main(["-i", str(tmp_path / "in.png"), "-o", str(tmp_path / "a"), "-n", str(alpha_engine),
                         "--alpha", "0.5"]) == 0
    assert "refitted in" in capsys.readouterr().out
    out = cv2.imread(str(tmp_path / "a" / "in_out.png"))
    ref = engine.infer(engine.TorchBackend(_blend(0.5)), image[..., ::-1].copy())[..., ::-1]
    assert out.shape == (96, 80, 3)
    assert_same_image(out, ref)
    assert upscale_main(["-i", str(tmp_path / "in.png"), "-o", str(tmp_path / "b"), "-n", str(alpha_engine),
                         "--fp16"]) == 2
    assert "built engine" in capsys.readouterr().err


def test_int8_build_end_to_end_is_alpha_safe_and_close_to_fp32(checkpoints: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    import skimage.data

    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(calib / f"{name}.png"), getattr(skimage.data, name)()[::8, ::8, ::-1])
    a, b = checkpoints
    out = tmp_path / "int8"
    assert build_main(["--weights", str(a), "--gan-weights", str(b), "--int8", "--calib", str(calib), "--tile", "32",
                       "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibrating INT8 (mse) on 2 images" in text and "at alpha 0, 0.5 and 1" in text
    manifest = read_manifest(out)
    assert manifest["precision"] == "int8" and manifest["int8"]["alpha_safe"] is True
    graph = __import__("onnx").load(str(out / "model.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 0
    eng = engine.load(out)
    x = _photo_batch(1, 24, 24)
    for alpha in (0.0, 0.6, 1.0):
        eng.set_alpha(alpha)
        got = eng.run(torch.from_numpy(x)).numpy()
        ref = _onnx_run(_blend(alpha), x)
        peak = float(ref.max() - ref.min())  # scored against the output's own range, an image's (> 0.5)
        assert ref.std() > 0.1 and peak > 0.5
        psnr = 10 * np.log10(peak**2 / np.mean((got - ref) ** 2))
        assert psnr > INT8_PSNR, f"INT8 at alpha {alpha}: {psnr:.1f} dB from fp32"


def test_fp16_onnxruntime_build_runs_and_says_it_is_not_faster(checkpoints: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert build_main(["--weights", str(checkpoints[0]), "--fp16", "--backend", "onnxruntime", "--tile", "16",
                       "-o", str(tmp_path / "e")]) == 0
    assert "casts most fp16 ops to fp32" in capsys.readouterr().out
    graph = __import__("onnx").load(str(tmp_path / "e" / "model.onnx"))
    assert graph.graph.initializer[0].data_type == 10  # FLOAT16
    x = _photo_batch(1, 16, 16)
    got = engine.load(tmp_path / "e").run(torch.from_numpy(x)).numpy()
    ref = _onnx_run(_tiny(), x)
    assert ref.std() > 0.1 and np.abs(got - ref).max() < 8 * 2.0**-10


# ---------------------------------------------------------------------------------------------------------
# the end-to-end checks above can fail (issue 15.14)


def _constant(self: OrtBackend, batch: torch.Tensor) -> torch.Tensor:
    """A backend that ignores its input."""
    n, _, h, w = batch.shape
    return torch.full((n, self.out_channels, h * self.scale, w * self.scale), 0.5)


def _nearest(self: OrtBackend, batch: torch.Tensor) -> torch.Tensor:
    """A backend that ignores its weights: the input, upsampled."""
    return torch.nn.functional.interpolate(batch.float(), scale_factor=self.scale, mode="nearest")


@pytest.mark.parametrize("broken", [_constant, _nearest])
def test_the_end_to_end_checks_fail_on_a_broken_onnx_runtime_backend(broken, alpha_engine: Path,
                                                                      checkpoints: tuple[Path, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OrtBackend, "run", broken)
    checks = {
        "run": lambda d: test_loaded_engine_runs_the_network_at_the_build_alpha(alpha_engine),
        "set_alpha": lambda d: test_set_alpha_equals_exporting_the_interpolated_checkpoint(alpha_engine),
        "infer": lambda d: test_infer_takes_an_engine_directory_and_its_tile(alpha_engine),
        "ort": lambda d: test_ort_backend_matches_torch_and_exposes_threads(),
        "cli": lambda d: test_upscale_cli_runs_onnxruntime_on_the_cpu_and_takes_engines(alpha_engine, d, capsys),
        "int8": lambda d: test_int8_build_end_to_end_is_alpha_safe_and_close_to_fp32(checkpoints, d, capsys),
        "fp16": lambda d: test_fp16_onnxruntime_build_runs_and_says_it_is_not_faster(checkpoints, d, capsys),
    }
    if broken is _nearest:
        del checks["int8"]  # its build calibrates for seconds; the constant backend shows it fails
    passed = []
    for name, check in checks.items():
        (tmp_path / name).mkdir()
        try:
            check(tmp_path / name)
        except AssertionError:
            continue
        passed.append(name)
    assert passed == [], f"these checks pass with a broken backend ({broken.__name__}): {passed}"
