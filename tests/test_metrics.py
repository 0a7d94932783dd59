"""PSNR/SSIM of the SR evaluation protocol: hand-computed cases, and scikit-image on real photos.

skimage's `peak_signal_noise_ratio(data_range=255)` and `structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255)` compute the same statistics in float64 (its Gaussian
filter has 2·int(3.5·1.5 + 0.5) + 1 = 11 taps normalized to sum 1, and it discards the 5 filter-padded pixels
on each side before the mean), so only the floating-point summation order differs: we allow 1e-12.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import skimage.metrics
from scipy.ndimage import gaussian_filter

from engine.metrics import psnr, ssim

SKIMAGE_TOL = 1e-12


def skimage_ssim(img: np.ndarray, ref: np.ndarray) -> float:
    return skimage.metrics.structural_similarity(
        img, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=-1 if img.ndim == 3 else None,
    )


def noisy(img: np.ndarray, sigma: float = 10.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(img + rng.normal(0.0, sigma, img.shape)), 0, 255).astype(np.uint8)


def blurred(img: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    spatial = (sigma, sigma) + (0,) * (img.ndim - 2)
    return np.round(gaussian_filter(img.astype(np.float64), spatial)).astype(np.uint8)


def y_by_hand(img: np.ndarray) -> np.ndarray:
    """BT.601 Y of an RGB uint8 image, written independently of engine.metrics."""
    return img.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0


PHOTOS = {"astronaut": skimage.data.astronaut(), "chelsea": skimage.data.chelsea()}
DISTORTIONS = {"noisy": noisy, "blurred": blurred}


# --- hand-computed cases ---------------------------------------------------------------------------------

def test_identical_images():
    img = PHOTOS["chelsea"]
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == 1.0
    assert ssim(img, img, y_channel=True) == 1.0


def test_psnr_constant_offset():
    ref = PHOTOS["astronaut"].astype(np.float64)
    assert psnr(ref + 10, ref) == pytest.approx(10 * math.log10(255**2 / 100), rel=1e-12)  # 28.1308 dB


def test_psnr_dtypes_agree():
    ref, img = PHOTOS["chelsea"], noisy(PHOTOS["chelsea"])
    expected = psnr(img, ref)
    assert psnr(img.astype(np.float32), ref.astype(np.float32)) == expected
    assert psnr(img.astype(np.int32), ref) == expected


def test_psnr_y_channel_by_hand():
    ref = np.zeros((2, 2, 3), np.uint8)  # Y = 16 everywhere
    img = ref.copy()
    img[0, 1] = (255, 0, 0)  # Y = 16 + 65.481: one pixel of four differs by 65.481
    assert psnr(img, ref, y_channel=True) == pytest.approx(20 * math.log10(2 * 255 / 65.481), rel=1e-12)
    # read as BGR, that pixel is pure blue: it differs by 24.966
    assert psnr(img, ref, y_channel=True, channel_order="bgr") == pytest.approx(
        20 * math.log10(2 * 255 / 24.966), rel=1e-12)
    # without y_channel all three channels count: MSE = 255² / 12
    assert psnr(img, ref) == pytest.approx(10 * math.log10(12), rel=1e-12)


def test_psnr_crop_border_by_hand():
    ref = np.zeros((8, 8))
    img = ref.copy()
    img[0, :] = img[-1, :] = img[:, 0] = img[:, -1] = 50  # the 28 pixels of the outer ring
    img[3, 4] = 6
    assert psnr(img, ref) == pytest.approx(10 * math.log10(255**2 * 64 / (28 * 50**2 + 36)), rel=1e-12)
    assert psnr(img, ref, crop_border=1) == pytest.approx(20 * math.log10(255), rel=1e-12)  # MSE = 36/36
    assert psnr(img, ref, crop_border=3) == pytest.approx(10 * math.log10(255**2 / 9), rel=1e-12)  # 36/4
    img[3, 4] = 0
    assert psnr(img, ref, crop_border=1) == math.inf


def test_gray_input_ignores_y_channel():
    ref = skimage.data.camera()
    img = noisy(ref)
    assert psnr(img, ref, y_channel=True) == psnr(img, ref)
    assert ssim(img, ref, y_channel=True) == ssim(img, ref)
    assert ssim(img[..., None], ref[..., None], y_channel=True) == pytest.approx(ssim(img, ref), abs=1e-15)


def test_channel_order():
    ref = PHOTOS["astronaut"]
    img = noisy(ref)
    bgr_img, bgr_ref = img[..., ::-1], ref[..., ::-1]
    assert psnr(bgr_img, bgr_ref, y_channel=True, channel_order="bgr") == psnr(img, ref, y_channel=True)
    assert ssim(bgr_img, bgr_ref, y_channel=True, channel_order="bgr") == ssim(img, ref, y_channel=True)
    # reading BGR data as RGB gives another luma, hence another number
    assert abs(psnr(bgr_img, bgr_ref, y_channel=True) - psnr(img, ref, y_channel=True)) > 1e-3


# --- against scikit-image on real photos -----------------------------------------------------------------

@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("distortion", DISTORTIONS)
def test_psnr_matches_skimage(photo, distortion):
    ref = PHOTOS[photo]
    img = DISTORTIONS[distortion](ref)
    expected = skimage.metrics.peak_signal_noise_ratio(ref, img, data_range=255)
    assert psnr(img, ref) == pytest.approx(expected, rel=SKIMAGE_TOL, abs=0)
    expected_y = skimage.metrics.peak_signal_noise_ratio(y_by_hand(ref), y_by_hand(img), data_range=255)
    assert psnr(img, ref, y_channel=True) == pytest.approx(expected_y, rel=SKIMAGE_TOL, abs=0)


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("distortion", DISTORTIONS)
def test_ssim_matches_skimage(photo, distortion):
    ref = PHOTOS[photo]
    img = DISTORTIONS[distortion](ref)
    assert ssim(img, ref) == pytest.approx(skimage_ssim(img, ref), abs=SKIMAGE_TOL)
    assert ssim(img, ref, y_channel=True) == pytest.approx(
        skimage_ssim(y_by_hand(img), y_by_hand(ref)), abs=SKIMAGE_TOL)


def test_ssim_crop_border_matches_skimage():
    ref = PHOTOS["chelsea"]
    img = blurred(ref)
    c = 4
    assert ssim(img, ref, crop_border=c) == pytest.approx(
        skimage_ssim(img[c:-c, c:-c], ref[c:-c, c:-c]), abs=SKIMAGE_TOL)


def test_ssim_gray_matches_skimage():
    ref = skimage.data.camera()
    img = noisy(ref, sigma=20.0)
    assert ssim(img, ref) == pytest.approx(skimage_ssim(img, ref), abs=SKIMAGE_TOL)


def test_ssim_smallest_image():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (11, 11)).astype(np.float64)
    img = ref + rng.normal(0, 8, ref.shape)
    assert ssim(img, ref) == pytest.approx(skimage_ssim(img, ref), abs=SKIMAGE_TOL)


# --- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", [psnr, ssim])
def test_shape_mismatch(metric):
    with pytest.raises(ValueError, match=r"\(32, 32, 3\).*\(32, 31, 3\)"):
        metric(np.zeros((32, 32, 3)), np.zeros((32, 31, 3)))


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_crop_too_large(metric):
    with pytest.raises(ValueError, match="crop_border=16"):
        metric(np.zeros((32, 40)), np.zeros((32, 40)), crop_border=16)
    with pytest.raises(ValueError, match="crop_border"):
        metric(np.zeros((32, 40)), np.zeros((32, 40)), crop_border=-1)


def test_ssim_too_small():
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 40)), np.zeros((10, 40)))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((20, 20)), np.zeros((20, 20)), crop_border=5)
    assert psnr(np.zeros((10, 40)), np.ones((10, 40))) == pytest.approx(20 * math.log10(255))


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_uint16_rejected(metric):
    img = np.zeros((16, 16), np.uint16)
    with pytest.raises(ValueError, match="uint16.*0..255.*scale"):
        metric(img, img)


def test_other_bad_inputs():
    img = np.zeros((16, 16, 4))
    with pytest.raises(ValueError, match="4 channels"):
        psnr(img, img, y_channel=True)
    assert psnr(img, img) == math.inf  # four channels are fine without y_channel
    with pytest.raises(ValueError, match="channel_order"):
        psnr(img, img, channel_order="yuv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        psnr(np.zeros(16), np.zeros(16))
    with pytest.raises(ValueError, match="bool"):
        psnr(np.zeros((16, 16), bool), np.zeros((16, 16), bool))
