"""engine.infer and python -m engine.upscale: layouts and dtypes, seam-free tiles, alpha, precision fallback,
folder runs that lose nothing."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from util import small_rrdb

import engine
import engine.backends.torch_eager
import engine.machine
import engine.models as M
from engine.backends.torch_eager import TorchBackend
from engine.imageio import read_image, write_image
from engine.inference import plan_tiles, upscale_planes
from engine.upscale import main as upscale_main

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from tiling import TARGET_DB, crop_only_tiles, psnr8  # noqa: E402


@pytest.fixture(scope="module")
def shipped() -> TorchBackend:
    net, _ = M.load(REPO / "weights" / "tiny_x4.safetensors")
    return TorchBackend(net)



# ---------------------------------------------------------------------------------------------------------
# Layouts and dtypes.


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(13, 17), (13, 17, 1), (13, 17, 2), (13, 17, 3), (13, 17, 4)])
def test_every_dtype_and_layout_round_trips(shipped: TorchBackend, dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        image = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    else:
        image = rng.random(shape).astype(dtype)
    out = engine.infer(shipped, image, tile=0)
    assert out.dtype == dtype
    assert out.shape == (52, 68, *shape[2:])
    # the reference, computed independently: each plane set through the network in float, gray as its luma
    full = 1.0 if dtype in (np.float32, np.float64) else float(np.iinfo(dtype).max)
    planes = (image.reshape(13, 17, -1).astype(np.float64) / full).transpose(2, 0, 1)
    color, alpha = (planes[:-1], planes[-1:]) if planes.shape[0] in (2, 4) else (planes, planes[:0])

    def network(p: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.repeat(p, 3 // p.shape[0], axis=0)).float()[None]
        with torch.no_grad():
            y = shipped.net(x)[0].double().numpy()
        return y if p.shape[0] == 3 else np.tensordot([0.299, 0.587, 0.114], y, axes=1)[None]

    expected = np.concatenate([network(color)] + ([network(alpha)] if alpha.size else [])).transpose(1, 2, 0)
    got = out.reshape(52, 68, -1).astype(np.float64)
    if dtype in (np.float32, np.float64):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    else:
        assert np.abs(got - np.clip(np.rint(expected * full), 0, full)).max() <= 1  # float32 sums, rounding


def test_rgb_matches_the_network_and_gray_uses_luma(shipped: TorchBackend) -> None:
    rgb = skimage.data.chelsea()[100:140, 150:200]
    out = engine.infer(shipped, rgb, tile=0)
    with torch.no_grad():
        ref = shipped.net(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0]
    expected = np.clip(np.rint(ref.permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1  # float32 summation order only
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out_gray = engine.infer(shipped, gray, tile=0)
    luma = cv2.cvtColor(engine.infer(shipped, np.repeat(gray[..., None], 3, axis=2), tile=0), cv2.COLOR_RGB2GRAY)
    assert out_gray.shape == (gray.shape[0] * 4, gray.shape[1] * 4)
    assert np.abs(out_gray.astype(int) - luma.astype(int)).max() <= 1


def test_rgba_alpha_by_model_or_bicubic(shipped: TorchBackend) -> None:
    rgba = np.dstack([skimage.data.coffee()[:24, :30], np.full((24, 30), 200, np.uint8)])
    rgba[:, :10, 3] = 0
    for upsampler in ("model", "bicubic"):
        out = engine.infer(shipped, rgba, tile=0, alpha_upsampler=upsampler)
        assert out.shape == (96, 120, 4)
        assert abs(int(out[48, 100, 3]) - 200) <= 3 and out[48, 5, 3] <= 3
    np.testing.assert_array_equal(engine.infer(shipped, rgba, tile=0)[..., :3], engine.infer(shipped, rgba[..., :3],
                                                                                             tile=0))


def test_outscale_odd_sizes_and_images_smaller_than_a_tile(shipped: TorchBackend) -> None:
    image = skimage.data.astronaut()[:37, :23]
    assert engine.infer(shipped, image, tile=64).shape == (148, 92, 3)
    full = engine.infer(shipped, image, tile=0)
    for outscale, size in ((2, (74, 46)), (3.5, (130, 80))):
        out = engine.infer(shipped, image, outscale=outscale)
        assert out.shape == (*size, 3)
        expected = cv2.resize(full.astype(np.float32), size[::-1], interpolation=cv2.INTER_LANCZOS4)
        assert np.abs(out - np.clip(np.rint(expected), 0, 255)).max() <= 1
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="outscale must be positive and finite"):
            engine.infer(shipped, image, outscale=bad)
    with pytest.raises(ValueError, match="outscale 0.01 makes a 0×0 image"):
        engine.infer(shipped, image, outscale=0.01)


def test_non_finite_float_input_is_refused_and_out_of_range_clipped(shipped: TorchBackend,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """One NaN pixel made the whole output NaN, and floats outside [0, 1] passed silently."""
    image = np.random.default_rng(3).random((12, 14, 3)).astype(np.float32)
    for bad in (np.nan, np.inf):
        broken = image.copy()
        broken[5, 6, 1] = bad
        with pytest.raises(ValueError, match="1 NaN or infinite value"):
            engine.infer(shipped, broken, tile=0)
    wide = image * 1.6 - 0.3
    with caplog.at_level("WARNING", logger="engine"):
        out = engine.infer(shipped, wide, tile=0)
    assert "clipped" in caplog.text
    np.testing.assert_array_equal(out, engine.infer(shipped, np.clip(wide, 0, 1), tile=0))
    tensor = torch.from_numpy(wide).permute(2, 0, 1)
    np.testing.assert_array_equal(engine.infer(shipped, tensor, tile=0).permute(1, 2, 0).numpy(), out)
    tensor[1, 5, 6] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        engine.infer(shipped, tensor, tile=0)


@pytest.mark.parametrize("kw, message", [
    (dict(batch=0), "batch must be"), (dict(batch=-1), "batch must be"), (dict(tile=1), "less than twice"),
    (dict(tile=-8), "tile must be"), (dict(tile_overlap=-1), "tile_overlap must be"),
])
def test_nonsense_tiling_is_refused(shipped: TorchBackend, kw: dict, message: str) -> None:
    """--batch -1 wrote a black image and -t 1 degraded silently."""
    with pytest.raises(ValueError, match=message):
        engine.infer(shipped, np.zeros((20, 20, 3), np.uint8), **kw)


def test_streamed_rows_equal_the_whole_canvas(shipped: TorchBackend) -> None:
    """Output rows leave the blend band as soon as no later tile covers them; what arrives is the whole canvas."""
    planes = np.ascontiguousarray(skimage.data.coffee()[:70, :50].transpose(2, 0, 1) / 255, np.float32)
    whole = upscale_planes(shipped, planes, tile=24, tile_overlap=6, batch=3)
    rows: list[tuple[int, np.ndarray]] = []
    assert upscale_planes(shipped, planes, tile=24, tile_overlap=6, batch=3,
                          sink=lambda y0, r: rows.append((y0, r.copy()))) is None
    assert [y0 for y0, _ in rows] == sorted(y0 for y0, _ in rows) and rows[0][0] == 0 and len(rows) > 2
    np.testing.assert_array_equal(np.concatenate([r for _, r in rows], axis=1), whole)
    assert max(r.shape[1] for _, r in rows) <= 24 * 4
    # the reference: every tile accumulated into one whole canvas, in the same order
    from engine._ext import load_C

    C, plan = load_C(), plan_tiles(70, 50, 24, 6, 4)
    canvas = np.zeros((3, 280, 200), np.float32)
    for i, j in plan.tiles():
        tile = planes[:, plan.ys[i]:plan.ys[i] + 24, plan.xs[j]:plan.xs[j] + 24]
        out = shipped.run(torch.from_numpy(np.ascontiguousarray(tile))[None])[0].numpy()
        C.accumulate(canvas, out, plan.ys[i] * 4, plan.xs[j] * 4, plan.wy[i], plan.wx[j])
    np.testing.assert_allclose(whole, canvas, atol=1e-6)


def test_pixel_unshuffle_networks_pad_odd_sizes() -> None:
    net = small_rrdb(scale=2)  # pixel-unshuffle by 2: sides must be even inside
    image = np.random.default_rng(1).random((15, 21, 3)).astype(np.float32)
    assert engine.infer(net, image, tile=0).shape == (30, 42, 3)
    assert engine.infer(net, image, tile=8, tile_overlap=2).shape == (30, 42, 3)


@pytest.mark.parametrize("scales, multiple", [((2, 4), 2), ((1, 2), 4), ((4, 1), 1), ((2, 1), 2)])
def test_cascades_keep_their_stages_input_multiple(scales: tuple[int, int], multiple: int) -> None:
    """A stage that pixel-unshuffles needs its own input, the earlier stages' upscaled output, to be a multiple of
    2 or 4; the cascade's input multiple carries that back, and odd images are padded to it."""
    net = M.Cascade(*(small_rrdb(seed=i, scale=s) for i, s in enumerate(scales)))
    assert net.input_multiple == multiple
    image = np.random.default_rng(2).random((15, 21, 3)).astype(np.float32)
    s = net.scale
    out = engine.infer(net, image, tile=0)
    assert out.shape == (15 * s, 21 * s, 3)
    padded = np.pad(image, ((0, (-15) % multiple), (0, (-21) % multiple), (0, 0)), mode="reflect")
    with torch.no_grad():
        ref = net(torch.from_numpy(padded).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref[: 15 * s, : 21 * s], atol=1e-5)


def test_tensor_input_keeps_layout_and_dtype(shipped: TorchBackend) -> None:
    x = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    out = engine.infer(shipped, x, tile=0)
    assert out.shape == (2, 3, 40, 48) and out.dtype == torch.float64
    assert engine.infer(shipped, x[0], tile=0).shape == (3, 40, 48)


# ---------------------------------------------------------------------------------------------------------
# Tiles.


def test_tiled_output_matches_untiled_and_beats_crop_only_tiles(shipped: TorchBackend) -> None:
    """At the same tile size (Real-ESRGAN's -t 64: 64 + 10 pixels of context for crop-only tiles)."""
    planes = np.ascontiguousarray(skimage.data.chelsea()[40:200, 100:300].transpose(2, 0, 1) / 255, np.float32)
    whole = upscale_planes(shipped, planes, tile=0)
    blended = upscale_planes(shipped, planes, tile=64, tile_overlap=engine.inference.DEFAULT_TILE_OVERLAP)
    crop_only = crop_only_tiles(shipped, planes, tile=64, pad=10)
    ours, theirs = psnr8(blended, whole), psnr8(crop_only, whole)
    assert ours >= TARGET_DB, ours  # the target that picked the default overlap (bench/tiling.py)
    assert theirs < ours, (theirs, ours)


def test_tile_plan_weights_sum_to_one(shipped: TorchBackend) -> None:
    plan = plan_tiles(100, 70, 40, 8, 4)
    rows, cols = np.zeros(400, np.float32), np.zeros(280, np.float32)
    for i, y in enumerate(plan.ys):
        rows[y * 4:(y + plan.tile_h) * 4] += plan.wy[i]
    for j, x in enumerate(plan.xs):
        cols[x * 4:(x + plan.tile_w) * 4] += plan.wx[j]
    assert np.array_equal(rows, np.ones(400, np.float32)) and np.array_equal(cols, np.ones(280, np.float32))


def test_tiles_are_batched_and_progress_is_reported(shipped: TorchBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    original = shipped.run
    monkeypatch.setattr(shipped, "run", lambda b: (sizes.append(b.shape[0]), original(b))[1])
    done: list[int] = []
    engine.infer(shipped, skimage.data.camera()[:64, :90], tile=32, tile_overlap=4, batch=4, progress=done.append)
    # rows: ceil((64 - 4) / (32 - 4)) = 3, columns: ceil((90 - 4) / 28) = 4
    assert sum(sizes) == sum(done) == 3 * 4 and sizes == [4, 4, 4]
    engine.infer(shipped, skimage.data.camera()[:64, :60], tile=32, tile_overlap=4, batch=4)
    assert sizes[3:] == [4, 2]  # 3 × 2 tiles


def test_tile_size_is_chosen_from_the_memory_budget(shipped: TorchBackend) -> None:
    from engine.inference import auto_tile

    per_pixel = shipped.bytes_per_pixel()
    assert auto_tile(shipped, 4000, 4000, batch=1, budget=int(per_pixel * 200 * 200)) == 200
    assert auto_tile(shipped, 50, 60, batch=1, budget=2**30) == 60  # fits whole


@pytest.mark.parametrize("h,w,batch,budget_px", [(256, 256, 4, 256 * 256), (300, 300, 4, 300 * 300),
                                                 (4000, 3000, 4, 4 * 200 * 200), (640, 427, 4, 300 * 300),
                                                 (1000, 700, 8, 8 * 150 * 150), (320, 600, 4, 2 * 300 * 300)])
def test_auto_tile_takes_the_largest_tile_whose_batch_fits(shipped: TorchBackend, h: int, w: int, batch: int,
                                                           budget_px: int) -> None:
    """An image that fits as one tile is not cut (a batch of 4 is not budgeted for a single tile); otherwise the
    tiles one call takes (the batch, or fewer when the image has fewer) fit the budget, and 8 pixels more do not."""
    from engine.inference import auto_tile, tiles_in_flight

    per_pixel = shipped.bytes_per_pixel()
    budget = int(per_pixel * budget_px)
    side = auto_tile(shipped, h, w, batch, budget=budget)

    def fits(s: int) -> bool:
        return tiles_in_flight(h, w, s, batch) * min(s, h) * min(s, w) * per_pixel <= budget

    if h * w * per_pixel <= budget:
        assert side == max(h, w)
    else:
        assert side % 8 == 0 and side < max(h, w) and fits(side) and not fits(side + 8)


def test_the_memory_budget_follows_the_memory_left(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.inference as inference

    monkeypatch.setattr(inference, "available_memory", lambda: 8 * 2**30)
    assert inference.memory_budget(torch.device("cpu")) == 4 * 2**30
    monkeypatch.setattr(inference, "available_memory", lambda: None)
    assert inference.memory_budget(torch.device("cpu")) == inference.CPU_MEMORY_BUDGET


# ---------------------------------------------------------------------------------------------------------
# Alpha and precision.


def test_alpha_blends_the_two_networks(tmp_path: Path) -> None:
    psnr_net, gan_net = small_rrdb(1), small_rrdb(2)
    backend = TorchBackend(small_rrdb(1), gan_net=gan_net)
    image = np.random.default_rng(2).random((9, 11, 3)).astype(np.float32)
    blended = small_rrdb(1)
    blended.load_state_dict(M.interpolate(psnr_net, gan_net, 0.3))
    np.testing.assert_allclose(engine.infer(backend, image, tile=0, alpha=0.3), engine.infer(blended, image, tile=0),
                               atol=1e-6)
    np.testing.assert_allclose(engine.infer(backend, image, tile=0, alpha=0.0), engine.infer(psnr_net, image, tile=0),
                               atol=1e-6)
    with pytest.raises(ValueError, match="alpha needs"):
        engine.infer(psnr_net, image, alpha=0.5)


def test_compiled_backend_matches_eager_and_sees_set_alpha() -> None:
    """torch.compile (a benchmark row) runs the same network, and reads the weights set_alpha rewrites in place."""
    psnr_net, gan_net = small_rrdb(1), small_rrdb(2)
    backend = TorchBackend(small_rrdb(1), gan_net=gan_net, compile=True)
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backend.run(x), psnr_net(x), atol=1e-5, rtol=1e-5)
        backend.set_alpha(0.6)
        blended = small_rrdb(1)
        blended.load_state_dict(M.interpolate(psnr_net, gan_net, 0.6))
        torch.testing.assert_close(backend.run(x), blended(x), atol=1e-5, rtol=1e-5)
        assert (blended(x) - psnr_net(x)).abs().max() > 1e-3  # the blend changes the output: the check has teeth


def test_fp16_overflow_is_recomputed_in_fp32(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    backend = TorchBackend(small_rrdb(), dtype="bf16")
    backend.dtype = "fp16"  # a CPU stand-in: the fp16 pass is simulated to overflow
    real = backend._forward
    monkeypatch.setattr(backend, "_forward", lambda x, d: real(x, "fp32") * (torch.inf if d == "fp16" else 1))
    with caplog.at_level(logging.WARNING, logger="engine"):
        out = backend.run(torch.rand(1, 3, 8, 8))
    assert torch.isfinite(out).all() and "fp16 overflow" in caplog.text


@pytest.mark.parametrize("flags, fast", [("fpu avx2 fma", False), ("avx2 avx512f avx512_bf16", True),
                                         ("avx2 amx_bf16 amx_tile", True), (None, True)])
def test_bf16_on_a_cpu_without_bf16_instructions_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch, flags: str | None,
                                                          fast: bool) -> None:
    """On AVX2-only CPUs PyTorch emulates bf16, tens of times slower than fp32: said once, loudly."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + (f"flags\t\t: {flags}\n" if flags else ""))
    assert engine.machine.cpu_has_bf16(str(info)) is fast
    monkeypatch.setattr(engine.backends.torch_eager, "cpu_has_bf16", lambda: fast)
    with caplog.at_level("WARNING", logger="engine"):
        TorchBackend(small_rrdb(), dtype="bf16")
    assert ("no bf16 instructions" in caplog.text) is not fast


def test_fp16_on_the_cpu_is_refused() -> None:
    with pytest.raises(ValueError, match="fp16 inference needs a CUDA device"):
        TorchBackend(small_rrdb(), dtype="fp16")


# ---------------------------------------------------------------------------------------------------------
# The command line.


def _folder(tmp_path: Path, count: int = 3) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(count):
        write_image(src / f"img{i}.png", skimage.data.astronaut()[i * 20:i * 20 + 24, :20])
    return src


def test_cli_upscales_a_folder_with_the_default_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _folder(tmp_path)
    assert upscale_main(["-i", str(src), "-o", str(tmp_path / "out")]) == 0
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outs == ["img0_out.png", "img1_out.png", "img2_out.png"]
    assert read_image(tmp_path / "out" / "img0_out.png").shape == (96, 80, 3)
    assert "3 written" in capsys.readouterr().out


def test_cli_reports_a_corrupt_file_and_writes_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _folder(tmp_path, 2)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    assert upscale_main(["-i", str(src), "-o", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    failures = [line for line in captured.err.splitlines() if line.startswith("failed:")]
    assert len(failures) == 1 and failures[0].count("broken.png") == 1
    assert "header does not give its size" in failures[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0_out.png", "img1_out.png"]


def test_cli_keeps_existing_outputs_and_resumes_with_skip_existing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src, out = _folder(tmp_path), tmp_path / "out"
    out.mkdir()
    write_image(out / "img0_out.png", np.zeros((96, 80, 3), np.uint8))  # finished before the interruption
    (out / "img1_out.png").write_bytes(b"")  # an empty file is not a finished output: it is redone
    done = (out / "img0_out.png").read_bytes()
    assert upscale_main(["-i", str(src), "-o", str(out), "--skip-existing"]) == 0
    summary = capsys.readouterr().out
    assert "2 written" in summary and "1 skipped" in summary
    assert (out / "img0_out.png").read_bytes() == done
    assert read_image(out / "img1_out.png").shape == (96, 80, 3)

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert upscale_main(["-i", str(src), "-o", str(out)]) == 1  # nothing is replaced without --overwrite
    err = capsys.readouterr().err
    assert err.count("exists; pass --overwrite") == 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    assert upscale_main(["-i", str(src), "-o", str(out), "--overwrite"]) == 0
    assert read_image(out / "img0_out.png").shape == (96, 80, 3)


def test_cli_leaves_no_temporary_files_after_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "rgba.png", np.dstack([skimage.data.coffee()[:16, :16], np.full((16, 16), 9, np.uint8)]))
    out = tmp_path / "out"
    assert upscale_main(["-i", str(src), "-o", str(out), "--ext", "jpg"]) == 1  # JPEG has no alpha
    assert "alpha" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []


def test_cli_refuses_images_over_max_pixels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _folder(tmp_path, 1)
    assert upscale_main(["-i", str(src), "-o", str(tmp_path / "out"), "--max-pixels", "100"]) == 1
    assert "--max-pixels" in capsys.readouterr().err


def test_cli_accepts_real_esrgan_spellings_and_alpha(tmp_path: Path) -> None:
    src = _folder(tmp_path, 1)
    M.save(small_rrdb(1), tmp_path / "psnr.safetensors")
    M.save(small_rrdb(2), tmp_path / "gan.safetensors")
    code = upscale_main(["-i", str(src), "-o", str(tmp_path / "out"),
                         "--model_path", str(tmp_path / "psnr.safetensors"),
                         "--tile_pad", "4", "-t", "16", "--alpha", "0.5", "--gan-weights",
                         str(tmp_path / "gan.safetensors"), "-s", "2", "--suffix", "", "--ext", "webp"])
    assert code == 0
    assert read_image(tmp_path / "out" / "img0.webp").shape[:2] == (48, 40)


@pytest.mark.gpu
def test_cuda_backend_blends_on_the_device(shipped: TorchBackend) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    net, _ = M.load(REPO / "weights" / "tiny_x4.safetensors")
    gpu = TorchBackend(net, device="cuda", dtype="fp32")
    planes = np.ascontiguousarray(skimage.data.coffee()[:150, :170].transpose(2, 0, 1) / 255, np.float32)
    host = upscale_planes(shipped, planes, tile=64)
    device = upscale_planes(gpu, torch.from_numpy(planes).cuda(), tile=64)
    assert isinstance(device, torch.Tensor) and device.is_cuda
    np.testing.assert_allclose(device.cpu().numpy(), host, atol=1e-4)  # cuDNN vs CPU convolutions
    out = engine.infer(gpu, torch.from_numpy(planes).cuda(), tile=64)
    assert out.is_cuda and out.shape == (3, 600, 680)


def test_cli_reports_out_of_memory_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import engine.upscale as cli

    src = _folder(tmp_path, 2)
    real = cli.infer

    def infer_or_oom(backend: object, image: np.ndarray, **kw: object) -> object:
        if image[0, 0, 0] == skimage.data.astronaut()[0, 0, 0]:  # img0
            raise MemoryError("cannot allocate")
        return real(backend, image, **kw)

    monkeypatch.setattr(cli, "infer", infer_or_oom)
    assert upscale_main(["-i", str(src), "-o", str(tmp_path / "out")]) == 1
    assert "img0.png: out of memory (MemoryError) with tiles of auto and batch 4; use a smaller -t/--tile or --batch" \
        in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["img1_out.png"]


def test_cli_bf16_on_the_cpu(tmp_path: Path) -> None:
    src = _folder(tmp_path, 1)
    assert upscale_main(["-i", str(src), "-o", str(tmp_path / "out"), "--bf16", "--device", "cpu"]) == 0
    fp32 = engine.infer(TorchBackend(M.load(REPO / "weights" / "tiny_x4.safetensors")[0]), read_image(src / "img0.png"))
    bf16 = read_image(tmp_path / "out" / "img0_out.png")
    assert bf16.shape == fp32.shape and np.abs(bf16.astype(int) - fp32.astype(int)).mean() < 3
