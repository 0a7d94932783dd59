"""PSNR and SSIM as the super-resolution literature reports them (BasicSR's `calculate_psnr` / `calculate_ssim`).

Both take two images as numpy arrays of shape (H, W) or (H, W, C), in the 8-bit range [0, 255] (uint8, signed
integer or float dtypes), and compute in float64:

* `crop_border` pixels are removed from every border first (the usual crop is the SR scale factor);
* `y_channel=True` compares the ITU-R BT.601 luma Y (range [16, 235]) of RGB images, or BGR images with
  `channel_order="bgr"` (as OpenCV reads them), exactly as BasicSR's `to_y_channel` does, without rounding;
* PSNR = 10·log10(255² / MSE) in dB, `inf` for identical images;
* SSIM follows Wang et al. (2004): an 11×11 Gaussian window with σ = 1.5, C1 = (0.01·255)², C2 = (0.03·255)²,
  statistics on the 'valid' region only (5 pixels lost on each side), the mean of the SSIM map, averaged
  over channels. It needs at least 11×11 pixels after cropping.

Numpy only (no OpenCV, no scipy), so that the default install stays light.
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import numpy as np

__all__ = ["psnr", "ssim"]

ChannelOrder = Literal["rgb", "bgr"]

_PEAK = 255.0
_SSIM_SIGMA = 1.5
_SSIM_WINDOW = 11
_SSIM_C1 = (0.01 * _PEAK) ** 2
_SSIM_C2 = (0.03 * _PEAK) ** 2
# BT.601 luma of R, G, B in [0, 255]: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255.
_Y_OFFSET = 16.0
_Y_WEIGHTS_RGB = (65.481, 128.553, 24.966)


def psnr(
    img: np.ndarray,
    ref: np.ndarray,
    crop_border: int = 0,
    y_channel: bool = False,
    *,
    channel_order: ChannelOrder = "rgb",
) -> float:
    """Peak signal-to-noise ratio of `img` against `ref`, in dB, for a peak value of 255.

    Args:
        img, ref: arrays of one shape, (H, W) or (H, W, C), values in [0, 255].
        crop_border: pixels removed from each of the four borders before comparing.
        y_channel: compare the BT.601 Y channel of 3-channel images (gray images are compared as they are).
        channel_order: "rgb" or "bgr", the order of the channels of 3-channel images (used by `y_channel`).

    Returns:
        10·log10(255² / MSE), `math.inf` when the images are equal.
    """
    a, b = _prepare(img, ref, crop_border, y_channel, channel_order)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(_PEAK**2 / mse)


def ssim(
    img: np.ndarray,
    ref: np.ndarray,
    crop_border: int = 0,
    y_channel: bool = False,
    *,
    channel_order: ChannelOrder = "rgb",
) -> float:
    """Structural similarity of `img` against `ref` (Wang et al. 2004, Gaussian 11×11 window, σ = 1.5).

    Args:
        img, ref: arrays of one shape, (H, W) or (H, W, C), values in [0, 255]; at least 11×11 after cropping.
        crop_border: pixels removed from each of the four borders before comparing.
        y_channel: compare the BT.601 Y channel of 3-channel images (gray images are compared as they are).
        channel_order: "rgb" or "bgr", the order of the channels of 3-channel images (used by `y_channel`).

    Returns:
        The mean of the SSIM map over the valid region, averaged over channels; 1.0 for equal images.
    """
    a, b = _prepare(img, ref, crop_border, y_channel, channel_order)
    if min(a.shape[:2]) < _SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels (after "
                         f"crop_border={crop_border}), got {a.shape[0]}x{a.shape[1]}")
    ssim_map = _ssim_map(a, b)
    if ssim_map.ndim == 2:
        return float(ssim_map.mean())
    return float(ssim_map.mean(axis=(0, 1)).mean())


def _prepare(
    img: np.ndarray, ref: np.ndarray, crop_border: int, y_channel: bool, channel_order: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies of both images, cropped and, if asked, converted to Y."""
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    a = _as_float64(img, "img")
    b = _as_float64(ref, "ref")
    if a.shape != b.shape:
        raise ValueError(f"img and ref must have the same shape, got img {a.shape} and ref {b.shape}")
    a, b = _crop(a, crop_border), _crop(b, crop_border)
    if y_channel:
        a, b = _to_y(a, channel_order), _to_y(b, channel_order)
    return a, b


def _as_float64(x: np.ndarray, name: str) -> np.ndarray:
    """`x` as a float64 array of shape (H, W) or (H, W, C), after checking that its dtype is 8-bit-range data."""
    arr = np.asarray(x)
    dtype = arr.dtype
    if np.issubdtype(dtype, np.unsignedinteger) and dtype.itemsize > 1:
        raise ValueError(f"{name} has dtype {dtype}: the metrics expect the 8-bit range 0..255; scale it "
                         f"first, e.g. {name}.astype(np.float64) * 255 / {np.iinfo(dtype).max}")
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.signedinteger) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{name} has dtype {dtype}: expected uint8, a signed integer or a float dtype")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got {arr.shape}")
    return arr.astype(np.float64)


def _crop(x: np.ndarray, crop_border: int) -> np.ndarray:
    c = operator.index(crop_border)
    if c < 0:
        raise ValueError(f"crop_border must be >= 0, got {c}")
    h, w = x.shape[:2]
    if 2 * c >= min(h, w):
        raise ValueError(f"crop_border={c} leaves nothing of a {h}x{w} image")
    return x[c:h - c, c:w - c] if c else x


def _to_y(x: np.ndarray, channel_order: str) -> np.ndarray:
    """BT.601 Y in [16, 235] of a (H, W, 3) image in [0, 255]; gray (H, W) or (H, W, 1) images unchanged."""
    if x.ndim == 2 or x.shape[2] == 1:
        return x
    if x.shape[2] != 3:
        raise ValueError(f"y_channel=True needs 3-channel (or gray) images, got {x.shape[2]} channels")
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    if channel_order == "bgr":
        r, b = b, r
    wr, wg, wb = _Y_WEIGHTS_RGB
    return _Y_OFFSET + (wr * r + wg * g + wb * b) / _PEAK


def _gaussian_taps() -> np.ndarray:
    """The 1-D Gaussian of the SSIM window (11 taps, σ = 1.5), normalized to sum 1."""
    x = np.arange(_SSIM_WINDOW, dtype=np.float64) - (_SSIM_WINDOW - 1) / 2
    g = np.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of `x` over its first two axes: (H, W, ...) -> (H-10, W-10, ...)."""
    n = len(taps)
    h, w = x.shape[0] - n + 1, x.shape[1] - n + 1
    rows = taps[0] * x[0:h]
    for k in range(1, n):
        rows += taps[k] * x[k:k + h]
    out = taps[0] * rows[:, 0:w]
    for k in range(1, n):
        out += taps[k] * rows[:, k:k + w]
    return out


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The SSIM map of two float64 images over the valid region: (H, W[, C]) -> (H-10, W-10[, C])."""
    taps = _gaussian_taps()
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a, taps) - mu_aa
    var_b = _filter_valid(b * b, taps) - mu_bb
    cov_ab = _filter_valid(a * b, taps) - mu_ab
    return ((2 * mu_ab + _SSIM_C1) * (2 * cov_ab + _SSIM_C2)) / (
        (mu_aa + mu_bb + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    )
