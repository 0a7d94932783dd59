"""Training data: decoding, listing, on-the-fly LR patches against whole-image imresize, determinism of samples,
paired folders, skipping of bad images, validation images, the resumable batch sampler and the DataLoader."""

from __future__ import annotations

import itertools
import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from train import data as D
from train.data import (
    IMAGE_EXTENSIONS,
    TrainDataset,
    ValDataset,
    list_images,
    read_image,
)
from train.degradations import imresize
from train.sampler import InfiniteBatchSampler, build_train_loader

# --- helpers ------------------------------------------------------------------------------------------------------


def write_rgb(path: Path, rgb: np.ndarray, params: list[int] | None = None) -> Path:
    """Write an RGB (or gray, or RGBA) uint8/uint16/float32 array; works for non-ASCII paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        arr = rgb[..., ::-1]
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        arr = rgb[..., [2, 1, 0, 3]]
    else:
        arr = rgb
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(arr), params or [])
    assert ok
    buf.tofile(path)
    return path


def astronaut(h: int = 96, w: int = 80) -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[100: 100 + h, 150: 150 + w])


def chelsea(h: int = 70, w: int = 90) -> np.ndarray:
    return np.ascontiguousarray(skimage.data.chelsea()[60: 60 + h, 150: 150 + w])


def coffee(h: int = 66, w: int = 75) -> np.ndarray:
    return np.ascontiguousarray(skimage.data.coffee()[100: 100 + h, 200: 200 + w])


def as_float(rgb_u8: np.ndarray) -> np.ndarray:
    return rgb_u8.astype(np.float32) / 255


def chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def find_aligned(whole: torch.Tensor, patch: torch.Tensor, step: int) -> tuple[int, int]:
    """The unique (top, left), multiples of `step`, where `patch` (C, p, p) sits in `whole` (C, H, W)."""
    p = patch.shape[-1]
    hits = [(t, left) for t in range(0, whole.shape[1] - p + 1, step) for left in range(0, whole.shape[2] - p + 1, step)
            if torch.equal(whole[:, t: t + p, left: left + p], patch)]
    assert len(hits) == 1, hits
    return hits[0]


def transform(x: torch.Tensor, hflip: bool, vflip: bool, rot: bool) -> torch.Tensor:
    """BasicSR's augment, written independently on (C, H, W) via numpy."""
    a = x.numpy()
    if hflip:
        a = a[:, :, ::-1]
    if vflip:
        a = a[:, ::-1, :]
    if rot:
        a = a.transpose(0, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


# --- read_image ---------------------------------------------------------------------------------------------------


def test_read_8bit_png_is_rgb_float(tmp_path):
    rgb = astronaut(24, 32)
    out = read_image(write_rgb(tmp_path / "a.png", rgb))
    assert out is not None and out.dtype == np.float32 and out.shape == (24, 32, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb.astype(np.float32) / 255)


def test_read_pure_red_comes_back_red(tmp_path):
    red = np.zeros((5, 7, 3), np.uint8)
    red[..., 0] = 255
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(red, cv2.COLOR_RGB2BGR))
    out = read_image(tmp_path / "red.png")
    assert out is not None
    np.testing.assert_array_equal(out[..., 0], 1.0)
    np.testing.assert_array_equal(out[..., 1:], 0.0)


def test_read_16bit_png(tmp_path):
    rgb16 = np.random.default_rng(0).integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    rgb16[0, 0] = 65535
    out = read_image(write_rgb(tmp_path / "deep.png", rgb16))
    assert out is not None and out.dtype == np.float32
    np.testing.assert_allclose(out, rgb16.astype(np.float64) / 65535, atol=1e-7)
    assert out[0, 0, 0] == 1.0


def test_read_gray_gives_three_equal_channels(tmp_path):
    gray = skimage.data.camera()[:20, :30]
    out = read_image(write_rgb(tmp_path / "g.png", gray))
    assert out is not None and out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray.astype(np.float32) / 255)


def test_read_rgba_drops_alpha(tmp_path):
    rgb = chelsea(10, 12)
    alpha = np.random.default_rng(1).integers(0, 256, (10, 12, 1)).astype(np.uint8)
    out = read_image(write_rgb(tmp_path / "rgba.png", np.concatenate([rgb, alpha], axis=2)))
    assert out is not None and out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out, rgb.astype(np.float32) / 255)


@pytest.mark.parametrize("ext", [".bmp", ".tif", ".tiff", ".webp", ".jpg", ".jpeg", ".PNG"])
def test_read_other_formats(tmp_path, ext):
    rgb = coffee(40, 48)
    out = read_image(write_rgb(tmp_path / f"x{ext}", rgb))
    assert out is not None and out.shape == (40, 48, 3) and out.dtype == np.float32
    err = np.abs(out - rgb.astype(np.float32) / 255)
    if ext in (".jpg", ".jpeg"):
        assert err.mean() < 0.03  # lossy, but channels in the right order
    else:
        assert err.max() == 0  # lossless (OpenCV's WebP encoder is lossless at its default quality)


def test_read_float_tiff_is_kept(tmp_path):
    f = np.random.default_rng(2).random((6, 8, 3)).astype(np.float32)
    out = read_image(write_rgb(tmp_path / "f.tif", f))
    assert out is not None
    np.testing.assert_array_equal(out, f)


def test_read_non_ascii_path(tmp_path):
    rgb = astronaut(8, 9)
    out = read_image(write_rgb(tmp_path / "bilder_ü" / "straße_猫.png", rgb))
    assert out is not None
    np.testing.assert_array_equal(out, rgb.astype(np.float32) / 255)


def test_read_corrupt_or_empty_returns_none(tmp_path):
    (tmp_path / "bad.png").write_bytes(np.random.default_rng(3).integers(0, 256, 500).astype(np.uint8).tobytes())
    (tmp_path / "empty.png").write_bytes(b"")
    png = cv2.imencode(".png", astronaut(32, 32))[1].tobytes()
    (tmp_path / "truncated.png").write_bytes(png[:40])
    assert read_image(tmp_path / "bad.png") is None
    assert read_image(tmp_path / "empty.png") is None
    assert read_image(tmp_path / "truncated.png") is None


def test_read_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "nope.png")


# --- list_images --------------------------------------------------------------------------------------------------


def test_list_images_recursive_sorted_filtered(tmp_path):
    img = astronaut(4, 4)
    for rel in ["b.png", "a.JPG", "sub/c.webp", "sub/deeper/a.bmp", "a0.tif", "z.TIFF", "y.jpeg"]:
        write_rgb(tmp_path / rel, img)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub" / "model.pth").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a directory with an image suffix is not an image
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.JPG", "a0.tif", "b.png", "sub/c.webp", "sub/deeper/a.bmp", "y.jpeg", "z.TIFF"]
    assert all(isinstance(p, Path) for p in list_images(str(tmp_path)))
    assert IMAGE_EXTENSIONS == frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_images(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images in .*empty.*\.png"):
        list_images(tmp_path / "empty")


# --- on-the-fly LR ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lr_patch_equals_crop_of_whole_image_resize(scale):
    hr = D._mod_crop(as_float(astronaut(203, 150)), scale)  # 203×150 is not a multiple of any scale
    assert hr.shape[0] % scale == 0 and hr.shape[1] % scale == 0 and hr.shape[0] > 203 - scale
    whole = imresize(chw(hr), 1 / scale)
    lr_h, lr_w = whole.shape[1:]
    p = 8
    tops = [0, 1, 2, lr_h // 2, lr_h - p - 1, lr_h - p]
    lefts = [0, 3, lr_w // 2, lr_w - p - 2, lr_w - p]
    for top, left in itertools.product(tops, lefts):  # every border, corners, near-border and interior crops
        patch = D._lr_patch(hr, top, left, p, scale)
        assert patch.shape == (3, p, p) and patch.dtype == torch.float32 and patch.is_contiguous()
        torch.testing.assert_close(patch, whole[:, top: top + p, left: left + p], rtol=0, atol=1e-5)


def test_lr_patch_of_an_image_as_small_as_the_patch():
    hr = as_float(chelsea(32, 32))
    torch.testing.assert_close(D._lr_patch(hr, 0, 0, 8, 4), imresize(chw(hr), 1 / 4), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale,gt_size", [(4, 32), (2, 24)])
def test_dataset_lr_equals_whole_image_resize_at_every_border(tmp_path, scale, gt_size):
    rgb = astronaut(58, 67)  # not multiples of the scale: mod-crop drops the bottom/right remainder
    write_rgb(tmp_path / "hr" / "img.png", rgb)
    hr_full = D._mod_crop(as_float(rgb), scale)
    whole_hr, whole_lr = chw(hr_full), imresize(chw(hr_full), 1 / scale)
    ds = TrainDataset(tmp_path / "hr", scale=scale, gt_size=gt_size, use_flip=False, use_rot=False)
    p = gt_size // scale
    max_top, max_left = whole_lr.shape[1] - p, whole_lr.shape[2] - p
    seen = set()
    for seed in range(120):
        s = ds[(0, seed)]
        assert s["name"] == "img.png"
        assert s["hr"].shape == (3, gt_size, gt_size) and s["lr"].shape == (3, p, p)
        top, left = find_aligned(whole_hr, s["hr"], scale)
        seen.add((top // scale, left // scale))
        torch.testing.assert_close(s["lr"], whole_lr[:, top // scale: top // scale + p, left // scale:
                                                     left // scale + p], rtol=0, atol=1e-5)
    tops, lefts = {t for t, _ in seen}, {c for _, c in seen}
    assert {0, max_top} <= tops and {0, max_left} <= lefts  # touched every border
    assert any(0 < t < max_top and 0 < c < max_left for t, c in seen)  # and interior crops
    assert {(0, 0), (max_top, max_left)} & seen  # a corner


def test_gt_size_must_be_multiple_of_scale(tmp_path):
    write_rgb(tmp_path / "a.png", astronaut(40, 40))
    with pytest.raises(ValueError, match=r"gt_size 30.*scale 4"):
        TrainDataset(tmp_path, scale=4, gt_size=30)


# --- determinism and augmentation ---------------------------------------------------------------------------------


@pytest.fixture
def hr_folder(tmp_path) -> Path:
    write_rgb(tmp_path / "hr" / "astronaut.png", astronaut(96, 80))
    write_rgb(tmp_path / "hr" / "cats" / "chelsea.png", chelsea(70, 90))
    write_rgb(tmp_path / "hr" / "coffee.jpg", coffee(66, 75))
    return tmp_path / "hr"


def test_sample_is_a_pure_function_of_the_key(hr_folder):
    a = TrainDataset(hr_folder, scale=4, gt_size=32)
    b = TrainDataset(hr_folder, scale=4, gt_size=32)
    assert len(a) == 3 and a.names == ["astronaut.png", "cats/chelsea.png", "coffee.jpg"]
    for key in [(0, 0), (1, 7), (2, 2**62 + 5)]:
        s1, s2, s3 = a[key], a[key], b[key]
        for k in ("lr", "hr"):
            assert s1[k].dtype == torch.float32 and s1[k].is_contiguous()
            assert 0 <= s1[k].min() and s1[k].max() <= 1
            assert torch.equal(s1[k], s2[k]) and torch.equal(s1[k], s3[k])
        assert s1["name"] == s3["name"] == a.names[key[0]]
    hrs = [a[(0, seed)]["hr"] for seed in range(8)]
    distinct = {tuple(h.flatten()[:64].tolist()) for h in hrs}
    assert len(distinct) >= 6  # different seeds, different crops/augmentations


def test_flips_and_rotation_are_applied_identically_to_lr_and_hr(hr_folder):
    plain = TrainDataset(hr_folder, scale=4, gt_size=24, use_flip=False, use_rot=False)
    aug = TrainDataset(hr_folder, scale=4, gt_size=24)
    used = set()
    for seed in range(80):
        p, a = plain[(1, seed)], aug[(1, seed)]  # same seed: same crop, the augmentation on top
        matches = [f for f in itertools.product([False, True], repeat=3)
                   if torch.equal(transform(p["hr"], *f), a["hr"])]
        assert len(matches) == 1
        assert torch.equal(transform(p["lr"], *matches[0]), a["lr"])
        used.add(matches[0])
    assert len(used) == 8  # all eight combinations of hflip, vflip, transpose occur


def test_flip_only_and_rot_only(hr_folder):
    plain = TrainDataset(hr_folder, scale=2, gt_size=16, use_flip=False, use_rot=False)
    flip = TrainDataset(hr_folder, scale=2, gt_size=16, use_rot=False)
    rot = TrainDataset(hr_folder, scale=2, gt_size=16, use_flip=False)
    for seed in range(10):
        p = plain[(0, seed)]["hr"]
        assert any(torch.equal(transform(p, h, v, False), flip[(0, seed)]["hr"])
                   for h, v in itertools.product([False, True], repeat=2))
        assert any(torch.equal(transform(p, False, False, r), rot[(0, seed)]["hr"]) for r in (False, True))


def test_augmented_lr_still_matches_downscaled_hr(hr_folder):
    ds = TrainDataset(hr_folder, scale=4, gt_size=48)
    for seed in range(6):
        s = ds[(0, seed)]
        down = imresize(s["hr"], 1 / 4)  # flips and transposes commute with the separable symmetric kernel
        torch.testing.assert_close(down[:, 2:-2, 2:-2], s["lr"][:, 2:-2, 2:-2], rtol=0, atol=1e-5)


def test_index_out_of_range(hr_folder):
    with pytest.raises(IndexError):
        TrainDataset(hr_folder, scale=4, gt_size=32)[(3, 0)]


# --- paired folders -----------------------------------------------------------------------------------------------


def make_pair(tmp_path: Path, rel_hr: str, rel_lr: str, lr: np.ndarray, scale: int, pad: tuple[int, int] = (0, 0)):
    """LR image `lr` and HR = nearest upscale of it (plus `pad` extra rows/cols that mod-crop drops)."""
    write_rgb(tmp_path / "lr" / rel_lr, lr)
    hr = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    hr = np.pad(hr, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
    write_rgb(tmp_path / "hr" / rel_hr, hr)


def test_paired_matches_by_stem_and_folder(tmp_path):
    rng = np.random.default_rng(4)
    make_pair(tmp_path, "a.png", "a.bmp", rng.integers(0, 256, (12, 14, 3)).astype(np.uint8), 4)
    make_pair(tmp_path, "sub/b.png", "sub/b.png", rng.integers(0, 256, (10, 10, 3)).astype(np.uint8), 4, (3, 2))
    # a decoy with the same stem in another folder must not be taken
    write_rgb(tmp_path / "lr" / "other" / "b.png", np.zeros((10, 10, 3), np.uint8))
    ds = TrainDataset(tmp_path / "hr", scale=4, gt_size=32, lr_dir=tmp_path / "lr")
    assert [p.relative_to(tmp_path / "lr").as_posix() for p in ds.lr_paths] == ["a.bmp", "sub/b.png"]
    for i, seed in itertools.product(range(2), range(12)):
        s = ds[(i, seed)]
        assert s["lr"].shape == (3, 8, 8) and s["hr"].shape == (3, 32, 32)
        assert s["name"] == ["a.png", "sub/b.png"][i]
        up = s["lr"].repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
        assert torch.equal(up, s["hr"])  # the HR crop lies exactly above the LR crop, after augmentation too


def test_paired_missing_partner(tmp_path):
    lr = np.zeros((8, 8, 3), np.uint8)
    make_pair(tmp_path, "a.png", "a.png", lr, 4)
    write_rgb(tmp_path / "hr" / "sub" / "lonely.png", np.zeros((32, 32, 3), np.uint8))
    write_rgb(tmp_path / "lr" / "lonely.png", lr)  # same stem, wrong folder
    with pytest.raises(ValueError, match="sub/lonely.png"):
        TrainDataset(tmp_path / "hr", scale=4, gt_size=32, lr_dir=tmp_path / "lr")
    with pytest.raises(ValueError, match="sub/lonely.png"):
        ValDataset(tmp_path / "hr", scale=4, lr_dir=tmp_path / "lr")


def test_paired_size_mismatch_is_skipped_naming_both_files(tmp_path, caplog):
    write_rgb(tmp_path / "hr" / "x.png", np.zeros((40, 40, 3), np.uint8))
    write_rgb(tmp_path / "lr" / "x.png", np.zeros((9, 10, 3), np.uint8))
    make_pair(tmp_path, "y.png", "y.png", np.zeros((10, 10, 3), np.uint8), 4)
    ds = TrainDataset(tmp_path / "hr", scale=4, gt_size=32, lr_dir=tmp_path / "lr")
    s = ds[(0, 0)]
    assert s["name"] == "y.png"
    assert str(tmp_path / "hr" / "x.png") in s["skipped"] and str(tmp_path / "lr" / "x.png") in s["skipped"]
    assert "40×40" in s["skipped"] and "9×10" in s["skipped"] and "expected 10×10" in s["skipped"]
    with caplog.at_level(logging.WARNING, logger="train.data"):
        val = ValDataset(tmp_path / "hr", scale=4, lr_dir=tmp_path / "lr")
    assert val.names == ["y.png"] and any("9×10" in r.getMessage() for r in caplog.records)
    (tmp_path / "hr" / "y.png").unlink()
    (tmp_path / "lr" / "y.png").unlink()
    with pytest.raises(ValueError, match="no usable training image.*9×10"):
        TrainDataset(tmp_path / "hr", scale=4, gt_size=32, lr_dir=tmp_path / "lr")[(0, 0)]
    with pytest.raises(ValueError, match="no usable validation image.*9×10"):
        ValDataset(tmp_path / "hr", scale=4, lr_dir=tmp_path / "lr")


# --- unusable images ----------------------------------------------------------------------------------------------


def test_corrupt_and_small_images_are_skipped_and_reported_once(tmp_path):
    (tmp_path / "0_bad.png").write_bytes(b"\x89PNG not really")
    write_rgb(tmp_path / "1_small.png", astronaut(20, 30))
    write_rgb(tmp_path / "2_good.png", astronaut(64, 64))
    ds = TrainDataset(tmp_path, scale=4, gt_size=32)
    s0 = ds[(0, 5)]
    assert s0["name"] == "2_good.png"
    expected = TrainDataset(tmp_path, scale=4, gt_size=32)[(2, 5)]
    assert torch.equal(s0["hr"], expected["hr"]) and torch.equal(s0["lr"], expected["lr"])
    assert expected["skipped"] == ""
    reasons = s0["skipped"].splitlines()
    assert len(reasons) == 2
    assert "0_bad.png" in reasons[0] and "cannot be decoded" in reasons[0]
    assert "1_small.png" in reasons[1] and "is 20×28, smaller than gt_size 32" in reasons[1]
    assert ds[(0, 6)]["skipped"] == ds[(1, 7)]["skipped"] == ""  # once per file
    assert ds[(1, 7)]["name"] == "2_good.png"


def _png_header(height: int, width: int) -> bytes:
    """A PNG with only a header: what a decompression bomb's first bytes look like."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    iend = b"IEND"
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
            + struct.pack(">I", 0) + iend + struct.pack(">I", zlib.crc32(iend)))


def test_an_image_over_the_pixel_limit_is_skipped_before_decoding(tmp_path):
    (tmp_path / "a_bomb.png").write_bytes(_png_header(20_000, 20_000))
    write_rgb(tmp_path / "b.png", astronaut(40, 40))
    s = TrainDataset(tmp_path, scale=4, gt_size=32)[(0, 0)]
    assert s["name"] == "b.png"
    assert "a_bomb.png" in s["skipped"] and "20000×20000 pixels, more than a training image may have" in s["skipped"]
    with pytest.raises(D.imageio.ImageError, match="134 MP"):
        D.load_image(tmp_path / "a_bomb.png")


def test_a_file_gone_after_listing_is_skipped(tmp_path):
    write_rgb(tmp_path / "a.png", astronaut(40, 40))
    write_rgb(tmp_path / "b.png", astronaut(40, 40))
    ds = TrainDataset(tmp_path, scale=4, gt_size=32)
    (tmp_path / "a.png").unlink()
    s = ds[(0, 0)]
    assert s["name"] == "b.png" and "a.png" in s["skipped"] and "cannot be read" in s["skipped"]


def test_skipping_wraps_around(tmp_path):
    write_rgb(tmp_path / "a_good.png", chelsea(40, 40))
    write_rgb(tmp_path / "b_small.png", chelsea(40, 12))
    ds = TrainDataset(tmp_path, scale=2, gt_size=16)
    assert ds[(1, 0)]["name"] == "a_good.png"


def test_no_usable_image_raises(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"junk")
    write_rgb(tmp_path / "small.png", astronaut(10, 10))
    ds = TrainDataset(tmp_path, scale=4, gt_size=32)
    with pytest.raises(ValueError, match=f"no usable training image in {tmp_path} .2 image.*bad.png.*small.png"):
        ds[(0, 0)]
    with pytest.raises(ValueError, match=r"bad.png in .* cannot be decoded \(.*\); training image small.png"):
        ds[(1, 0)]  # the reasons are kept


# --- ValDataset ---------------------------------------------------------------------------------------------------


def test_val_dataset_shapes_modcrop_and_skip(tmp_path, caplog):
    write_rgb(tmp_path / "a.png", astronaut(203, 150))
    (tmp_path / "b.png").write_bytes(b"corrupt")
    write_rgb(tmp_path / "c" / "d.png", chelsea(33, 41))
    with caplog.at_level(logging.WARNING, logger="train.data"):
        ds = ValDataset(tmp_path, scale=4)
    assert len(ds) == 2 and ds.names == ["a.png", "c/d.png"]
    assert any("b.png" in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)
    s = ds[0]
    assert s["hr"].shape == (3, 200, 148) and s["lr"].shape == (3, 50, 37) and s["name"] == "a.png"
    hr = as_float(astronaut(203, 150))[:200, :148]
    assert torch.equal(s["hr"], chw(hr))
    torch.testing.assert_close(s["lr"], imresize(chw(hr), 1 / 4), rtol=0, atol=0)
    assert ds[1]["hr"].shape == (3, 32, 40) and ds[1]["lr"].shape == (3, 8, 10)


def test_val_dataset_paired(tmp_path):
    lr = np.random.default_rng(5).integers(0, 256, (7, 9, 3)).astype(np.uint8)
    make_pair(tmp_path, "x.png", "x.webp", lr, 3, pad=(2, 1))
    s = ValDataset(tmp_path / "hr", scale=3, lr_dir=tmp_path / "lr")[0]
    assert s["hr"].shape == (3, 21, 27) and s["lr"].shape == (3, 7, 9)
    assert torch.equal(s["lr"], chw(as_float(lr)))


def test_val_dataset_nothing_usable(tmp_path):
    (tmp_path / "b.png").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match=str(tmp_path)):
        ValDataset(tmp_path, scale=2)


# --- InfiniteBatchSampler -----------------------------------------------------------------------------------------


def take(sampler: InfiniteBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_sampler_resume_is_exact():
    batches = take(InfiniteBatchSampler(10, 4, seed=3), 12)
    for k in (0, 1, 5, 11):
        assert take(InfiniteBatchSampler(10, 4, seed=3, start_batch=k), 1)[0] == batches[k]
        assert InfiniteBatchSampler(10, 4, seed=3).batch(k) == batches[k]
    assert take(InfiniteBatchSampler(10, 4, seed=3, start_batch=5), 7) == batches[5:]
    assert take(InfiniteBatchSampler(10, 4, seed=4), 12) != batches


def test_sampler_epochs_are_permutations():
    s = InfiniteBatchSampler(10, 5, seed=0)
    stream = [k for b in take(s, 8) for k in b]
    assert all(len(b) == 5 for b in take(s, 8))
    epochs = [[i for i, _ in stream[e * 10: (e + 1) * 10]] for e in range(4)]
    for e, ep in enumerate(epochs):
        assert sorted(ep) == list(range(10))
        assert ep == torch.randperm(10, generator=torch.Generator().manual_seed(0 + e)).tolist()
    assert len({tuple(ep) for ep in epochs}) == 4
    seeds = [sd for _, sd in stream]
    assert len(set(seeds)) == len(seeds) and all(0 <= sd < 2**63 for sd in seeds)


def test_sampler_ranks_partition_padded_epochs():
    n, world = 7, 2  # padded to 8: the head of the permutation is repeated once
    ranks = [InfiniteBatchSampler(n, 3, seed=11, rank=r, world_size=world) for r in range(world)]
    streams = [[k for b in take(s, 8) for k in b] for s in ranks]  # 24 positions = 6 epochs of 4 per rank
    for e in range(6):
        shards = [[i for i, _ in st[e * 4: (e + 1) * 4]] for st in streams]
        interleaved = [shards[p % world][p // world] for p in range(8)]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(11 + e)).tolist()
        assert interleaved == perm + perm[:1]
        assert set(shards[0]) | set(shards[1]) == set(range(n))
    seeds0, seeds1 = {sd for _, sd in streams[0]}, {sd for _, sd in streams[1]}
    assert not seeds0 & seeds1  # ranks draw different samples


def test_sampler_world_larger_than_images_and_batch_larger_than_epoch():
    shards = [[i for i, _ in InfiniteBatchSampler(2, 3, seed=0, rank=r, world_size=5).batch(0)] for r in range(5)]
    perm = torch.randperm(2, generator=torch.Generator().manual_seed(0)).tolist()
    assert [shards[r][0] for r in range(5)] == (perm * 3)[:5]
    s = InfiniteBatchSampler(3, 8, seed=2)
    b0, b1 = s.batch(0), s.batch(1)
    assert len(b0) == len(b1) == 8
    idx = [i for i, _ in b0 + b1]
    for e in range(5):
        assert sorted(idx[e * 3: (e + 1) * 3]) == [0, 1, 2]
    assert take(InfiniteBatchSampler(3, 8, seed=2, start_batch=1), 1)[0] == b1


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        InfiniteBatchSampler(0, 4, seed=0)
    with pytest.raises(ValueError):
        InfiniteBatchSampler(5, 0, seed=0)
    with pytest.raises(ValueError):
        InfiniteBatchSampler(5, 2, seed=0, rank=2, world_size=2)


# --- DataLoader ---------------------------------------------------------------------------------------------------


def test_loader_same_batches_with_and_without_workers(hr_folder):
    ds = TrainDataset(hr_folder, scale=4, gt_size=32)
    loaders = [build_train_loader(ds, batch_size=4, seed=9, num_workers=w) for w in (0, 2)]
    runs = [list(itertools.islice(iter(loader), 3)) for loader in loaders]
    for b0, b2 in zip(*runs, strict=True):
        assert b0["lr"].shape == (4, 3, 8, 8) and b0["hr"].shape == (4, 3, 32, 32)
        assert isinstance(b0["name"], list) and len(b0["name"]) == 4
        assert torch.equal(b0["lr"], b2["lr"]) and torch.equal(b0["hr"], b2["hr"]) and b0["name"] == b2["name"]
    resumed = next(iter(build_train_loader(ds, batch_size=4, seed=9, num_workers=0, start_batch=2)))
    assert torch.equal(resumed["hr"], runs[0][2]["hr"])
    assert loaders[1].persistent_workers and loaders[1].prefetch_factor == 2
    assert isinstance(loaders[0].batch_sampler, InfiniteBatchSampler)
