"""Degradations that make low-resolution training inputs: MATLAB-compatible bicubic `imresize`.

The SR benchmarks (Set5, Set14, DIV2K, ...) make their LR images with MATLAB's `imresize(img, 1/s, 'bicubic')`,
which differs from the bicubic of PIL, OpenCV or `torch.nn.functional.interpolate`: Keys' cubic (a = -0.5), a
kernel stretched by 1/scale on downscale (antialiasing), symmetric mirroring at the borders and per-row weights
normalized to sum 1. `imresize` reproduces that algorithm, vectorized and batched in torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = ["imresize"]

_KERNEL_WIDTH = 4.0  # support of Keys' cubic, in source pixels, before stretching
_NUMPY_FLOATS = (np.float16, np.float32, np.float64)

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def imresize(
    img: ArrayT,
    scale: float | Sequence[float],
    *,
    antialiasing: bool = True,
    clamp: bool = True,
) -> ArrayT:
    """Bicubic resize exactly as MATLAB's `imresize(img, scale)` computes it on double images.

    Args:
        img: a float tensor of shape (..., H, W) on any device, e.g. (N, C, H, W), (C, H, W) or (H, W); or a
            float numpy array of shape (H, W, C) or (H, W). Values in [0, 1].
        scale: a positive factor for both dimensions (e.g. 1/4 or 4), or a pair (scale_h, scale_w).
        antialiasing: on downscale, stretch the kernel by 1/scale (MATLAB's default, True).
        clamp: clamp the result to [0, 1], as any 8-bit save of MATLAB's output does. With False the result
            is MATLAB's double result, which can overshoot [0, 1] near edges.

    Returns:
        The resized image, of the type, dtype, device and layout of `img`, with ceil(H·scale_h) rows and
        ceil(W·scale_w) columns. Float16/bfloat16 are computed in float32 and cast back.

    Raises:
        ValueError: `img` is not float data or is empty, or `scale` is not positive and finite.
    """
    if isinstance(img, np.ndarray):
        return _imresize_numpy(img, scale, antialiasing=antialiasing, clamp=clamp)
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"img must be a torch.Tensor or a numpy.ndarray, got {type(img).__name__}")
    if not img.is_floating_point():
        raise ValueError(f"img must be a float tensor with values in [0, 1], got dtype {img.dtype}")
    if img.ndim < 2:
        raise ValueError(f"img must have shape (..., H, W), got {tuple(img.shape)}")
    return _resize_hw(img, img.ndim - 2, img.ndim - 1, scale, antialiasing=antialiasing, clamp=clamp)


def _imresize_numpy(img: np.ndarray, scale: float | Sequence[float], *, antialiasing: bool,
                    clamp: bool) -> np.ndarray:
    """The numpy path: (H, W, C) or (H, W) float in, the same layout and dtype out."""
    if img.dtype not in _NUMPY_FLOATS:
        raise ValueError(f"img must be a float16/32/64 array with values in [0, 1], got dtype {img.dtype}")
    if img.ndim not in (2, 3):
        raise ValueError(f"a numpy img must have shape (H, W, C) or (H, W), got {img.shape}")
    x = torch.from_numpy(np.require(img, requirements=["C", "W"]))
    out = _resize_hw(x, 0, 1, scale, antialiasing=antialiasing, clamp=clamp)
    return out.numpy()


def _resize_hw(x: torch.Tensor, h_dim: int, w_dim: int, scale: float | Sequence[float], *,
               antialiasing: bool, clamp: bool) -> torch.Tensor:
    """Resize `x` along its dimensions `h_dim` and `w_dim` (non-negative), in MATLAB's order."""
    scale_h, scale_w = _parse_scale(scale)
    h, w = x.shape[h_dim], x.shape[w_dim]
    if h == 0 or w == 0:
        raise ValueError(f"img is empty: its (H, W) is ({h}, {w})")
    out_h, out_w = _output_length(h, scale_h, "H"), _output_length(w, scale_w, "W")

    compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    y = x.to(compute_dtype)
    for dim, in_len, out_len, s in _pass_order((h_dim, h, out_h, scale_h), (w_dim, w, out_w, scale_w)):
        indices, weights = _contributions(in_len, out_len, s, antialiasing=antialiasing)
        y = _resize_dim(y, dim, indices, weights)
    if clamp:
        y = y.clamp(0.0, 1.0)
    return y.to(x.dtype)


def _parse_scale(scale: float | Sequence[float]) -> tuple[float, float]:
    items: tuple[object, ...] = ()
    if isinstance(scale, numbers.Real):
        items = (scale, scale)
    elif isinstance(scale, Sequence) and not isinstance(scale, str):
        items = tuple(scale)
    values = [float(s) for s in items if isinstance(s, numbers.Real)]
    if len(items) != 2 or len(values) != 2:
        raise ValueError(f"scale must be a positive number or a pair (scale_h, scale_w), got {scale!r}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    return values[0], values[1]


def _output_length(in_len: int, scale: float, name: str) -> int:
    out_len = math.ceil(in_len * scale)
    if out_len < 1:
        raise ValueError(f"scale {scale} gives an output {name} of {out_len} for an input {name} of {in_len}")
    return out_len


_Pass = tuple[int, int, int, float]  # (dim, in_len, out_len, scale)


def _pass_order(h_pass: _Pass, w_pass: _Pass) -> list[_Pass]:
    """MATLAB resizes along the dimension of the smaller scale first; height first for equal scales."""
    return [h_pass, w_pass] if h_pass[3] <= w_pass[3] else [w_pass, h_pass]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`), support [-2, 2]."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _contributions(in_len: int, out_len: int, scale: float, *,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights of one dimension, as MATLAB's `contributions` computes them.

    Returns:
        indices: int64 (out_len, P), 0-based source indices, mirrored into [0, in_len).
        weights: float64 (out_len, P), each row summing to 1. Taps whose weight is zero for every output
            are dropped, as MATLAB does.
    """
    kernel: Callable[[np.ndarray], np.ndarray]
    if scale < 1 and antialiasing:
        width = _KERNEL_WIDTH / scale

        def kernel(d: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * d)
    else:
        width = _KERNEL_WIDTH
        kernel = _cubic

    x = np.arange(1, out_len + 1, dtype=np.float64)  # 1-based output coordinates
    u = x / scale + 0.5 * (1 - 1 / scale)  # their centres in 1-based source coordinates
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    indices = _mirror(indices.astype(np.int64), in_len)
    used = np.any(weights != 0, axis=0)
    return indices[:, used], weights[:, used]


def _mirror(indices: np.ndarray, in_len: int) -> np.ndarray:
    """1-based indices of any value -> 0-based indices in [0, in_len), reflected as MATLAB's
    `aux = [1:in, in:-1:1]; aux(mod(index - 1, 2 * in) + 1)` (the edge pixel is repeated)."""
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    return aux[np.mod(indices - 1, 2 * in_len)]


def _resize_dim(x: torch.Tensor, dim: int, indices: np.ndarray, weights: np.ndarray) -> torch.Tensor:
    """Weighted gather along `dim`: out[..., i, ...] = sum_p weights[i, p] * x[..., indices[i, p], ...]."""
    out_len, taps = indices.shape
    idx = torch.from_numpy(indices.reshape(-1)).to(x.device)
    w = torch.from_numpy(weights).to(device=x.device, dtype=x.dtype)
    gathered = x.index_select(dim, idx).unflatten(dim, (out_len, taps))
    w = w.view((out_len, taps) + (1,) * (x.ndim - 1 - dim))
    return (gathered * w).sum(dim=dim + 1)
