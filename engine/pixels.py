"""Conversions between interleaved images and planar float tensors, backed by `engine._C`.

Layouts: an *image* is (H, W) or (H, W, C) with C in 1..4, dtype uint8 (0..255), uint16 (0..65535) or float32
(nominally 0..1); *planes* are float32 (C, H, W) in [0, 1] for integer images. Integer -> float divides by
255 or 65535; float -> integer clamps to [0, 1] (NaN -> 0), multiplies by 255 or 65535 and rounds half to even
(numpy.rint). `reverse_channels` swaps BGR <-> RGB (BGRA <-> RGBA, alpha stays last), e.g. for OpenCV images;
it does nothing for 1 or 2 channels.

numpy arrays are converted on the host with `threads` worker threads (0 = all cores; small images use one).
torch CUDA tensors are converted on their device, asynchronously on the current stream, and come back as
torch tensors.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from engine._ext import load_C

if TYPE_CHECKING:
    import torch

_PIXEL_DTYPES = ("uint8", "uint16", "float32")


def to_planar(
    image: np.ndarray | torch.Tensor, *, reverse_channels: bool = False, threads: int = 0
) -> np.ndarray | torch.Tensor:
    """Interleaved image (H, W[, C]) of uint8/uint16/float32 -> float32 planes (C, H, W).

    uint8 and uint16 are scaled to [0, 1]; float32 is copied unscaled. (H, W) gives C = 1. A numpy array gives
    a numpy array (threads: host worker threads, ignored for CUDA); a torch CUDA tensor gives a tensor on the
    same device.
    """
    if _is_torch_tensor(image):
        return _to_planar_cuda(image, reverse_channels)
    return load_C().to_planar(np.ascontiguousarray(image), reverse_channels=reverse_channels, threads=threads)


def from_planar(
    planes: np.ndarray | torch.Tensor,
    dtype: Any,
    *,
    reverse_channels: bool = False,
    threads: int = 0,
) -> np.ndarray | torch.Tensor:
    """float32 planes (C, H, W) -> interleaved image (H, W, C) of `dtype` ("uint8", "uint16", "float32").

    `dtype` may also be a numpy or torch dtype. Integer outputs are clamped, scaled and rounded half to even;
    float32 is copied unchanged. A numpy array gives a numpy array; a torch CUDA tensor gives a tensor on the
    same device.
    """
    if _is_torch_tensor(planes):
        return _from_planar_cuda(planes, dtype, reverse_channels)
    return load_C().from_planar(
        np.ascontiguousarray(planes),
        _without_torch_dtype(dtype),
        reverse_channels=reverse_channels,
        threads=threads,
    )


def _is_torch_tensor(x: object) -> TypeGuard[torch.Tensor]:
    torch = sys.modules.get("torch")  # if torch was never imported, x cannot be a tensor
    return torch is not None and isinstance(x, torch.Tensor)


def _without_torch_dtype(dtype: Any) -> Any:
    """torch.uint8 -> "uint8" (engine._C understands names and numpy dtypes); anything else unchanged."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return dtype


def _dtype_name(dtype: Any) -> str:
    dtype = _without_torch_dtype(dtype)
    try:
        return np.dtype(dtype).name if dtype is not None else "None"
    except TypeError:
        return repr(dtype)


def _require_cuda_tensor(x: torch.Tensor, name: str) -> None:
    if not x.is_cuda:
        raise TypeError(f"{name} must be a numpy array or a CUDA tensor, got a tensor on {x.device}")


def _to_planar_cuda(image: torch.Tensor, reverse_channels: bool) -> torch.Tensor:
    import torch

    _require_cuda_tensor(image, "image")
    if not (image.dim() == 2 or (image.dim() == 3 and 1 <= image.shape[2] <= 4)):
        raise ValueError(f"image must have shape (H, W) or (H, W, C) with C in 1..4, got {tuple(image.shape)}")
    src_dtype = _dtype_name(image.dtype)
    if src_dtype not in _PIXEL_DTYPES:
        raise TypeError(f"image must have dtype uint8, uint16 or float32, got {src_dtype}")
    image = image.contiguous()
    height, width = image.shape[:2]
    channels = image.shape[2] if image.dim() == 3 else 1
    planes = torch.empty((channels, height, width), dtype=torch.float32, device=image.device)
    with torch.cuda.device(image.device):
        load_C().to_planar_cuda(
            image.data_ptr(), planes.data_ptr(), height, width, channels, src_dtype, reverse_channels,
            torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip
    return planes


def _from_planar_cuda(planes: torch.Tensor, dtype: Any, reverse_channels: bool) -> torch.Tensor:
    import torch

    _require_cuda_tensor(planes, "planes")
    if not (planes.dim() == 3 and 1 <= planes.shape[0] <= 4):
        raise ValueError(f"planes must have shape (C, H, W) with C in 1..4, got {tuple(planes.shape)}")
    if planes.dtype != torch.float32:
        raise TypeError(f"planes must have dtype float32, got {_dtype_name(planes.dtype)}")
    dst_dtype = _dtype_name(dtype)
    if dst_dtype not in _PIXEL_DTYPES:
        raise ValueError(f"dtype must be uint8, uint16 or float32, got {dst_dtype}")
    planes = planes.contiguous()
    channels, height, width = planes.shape
    image = torch.empty((height, width, channels), dtype=getattr(torch, dst_dtype), device=planes.device)
    with torch.cuda.device(planes.device):
        load_C().from_planar_cuda(
            planes.data_ptr(), image.data_ptr(), height, width, channels, dst_dtype, reverse_channels,
            torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip
    return image
