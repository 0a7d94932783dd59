"""`engine.infer()`: the one inference call, for any image of any size.

    out = engine.infer(net, image)                    # HWC numpy (uint8/uint16/float; gray, RGB, RGBA) or torch
    out = engine.infer(net, image, tile=256, outscale=2)

Images larger than a tile are cut into overlapping tiles that are upscaled in batches and blended with weights
that sum to one at every output pixel (a raised-cosine ramp across the middle of each overlap, nothing on the
image borders), so there are no seams and memory stays bounded. Tile scheduling, pixel conversion and blending
run in `engine._C`; the network call per batch of tiles goes to a `Backend` (PyTorch here; ONNX Runtime,
TensorRT and our native plan plug into the same interface).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import models
from ._ext import load_C
from .backends.registry import Backend
from .backends.torch_eager import TorchBackend
from .engines import load
from .machine import available_memory

log = logging.getLogger("engine")

# Chosen by measurement (bench/tiling.py; the study is docs/tiling.md): the smallest overlap whose tiled output
# clears the PSNR target against the untiled one and beats crop-only tiles, for every photo and tile size measured.
DEFAULT_TILE_OVERLAP = 32
DEFAULT_BATCH = 4
CPU_MEMORY_BUDGET = 2 * 2**30  # bytes of activations in flight when the tile size is chosen and free memory is unknown


def backend_batch(backend: Any, batch: int | None) -> int:
    """Tiles (or whole frames) per network call: `batch` when given, else an engine's own batch, else
    `DEFAULT_BATCH`."""
    return batch if batch is not None else (getattr(backend, "batch", None) or DEFAULT_BATCH)


def as_backend(net: Any, *, device: str | torch.device | None = None, dtype: str | None = None,
               gan_net: Any = None) -> Backend:
    """A `Backend` for `net`: a Backend as is (an `Engine` too), a reference network, a checkpoint path (loaded)
    or an engine directory (`engine.load`)."""
    if isinstance(net, Backend):
        if device is not None or dtype is not None or gan_net is not None:
            raise ValueError("device, dtype and gan_net configure a network; a built backend already has them")
        return net
    if isinstance(net, (str, os.PathLike)):
        if os.path.isdir(net):  # an engine directory of python -m engine.build
            if device is not None or dtype is not None or gan_net is not None:
                raise ValueError("device, dtype and gan_net configure a network; an engine already has them")
            return load(net)
        net, _ = models.load(net)
    if isinstance(gan_net, (str, os.PathLike)):
        gan_net, _ = models.load(gan_net)
    if not isinstance(net, models.SRNet):
        raise TypeError(f"net must be a network of engine.models, a checkpoint path or a Backend, got "
                        f"{type(net).__name__}")
    return TorchBackend(net, device=device or "cpu", dtype=dtype or "fp32", gan_net=gan_net)


# ---------------------------------------------------------------------------------------------------------
# Tiles


@dataclass(frozen=True)
class TilePlan:
    """Tiles of an (H, W) low-resolution canvas: tile starts per axis, the tile size, and 1-D blend weights per
    tile in output pixels (`wy[i]` for the i-th row of tiles, `wx[j]` for the j-th column)."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: list[int]
    xs: list[int]
    wy: np.ndarray  # (len(ys), tile_h·scale) float32
    wx: np.ndarray  # (len(xs), tile_w·scale) float32

    def tiles(self) -> Iterator[tuple[int, int]]:
        """(row index, column index) of every tile, row by row."""
        for i in range(len(self.ys)):
            for j in range(len(self.xs)):
                yield i, j


def plan_tiles(height: int, width: int, tile: int, overlap: int, scale: int) -> TilePlan:
    C = load_C()
    ys, xs = C.axis_tiles(height, tile, overlap), C.axis_tiles(width, tile, overlap)
    return TilePlan(height, width, min(tile, height), min(tile, width), list(ys), list(xs),
                    C.axis_weights(height, ys, tile, scale), C.axis_weights(width, xs, tile, scale))


def memory_budget(device: torch.device) -> int:
    """Bytes the tiles in flight and their activations may take: half the free memory of a CUDA device; on the CPU
    half of what this process can still take (`machine.available_memory`), or `CPU_MEMORY_BUDGET` where that
    cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    available = available_memory()
    return available // 2 if available is not None else CPU_MEMORY_BUDGET


def auto_tile(backend: Backend, height: int, width: int, batch: int, budget: int | None = None,
              overlap: int = DEFAULT_TILE_OVERLAP) -> int:
    """The tile side for a `height` × `width` image, batches of up to `batch` tiles and `budget` bytes of
    activations (default `memory_budget`): the whole image when it fits as one tile; else the largest side,
    a multiple of 8 and of the backend's input multiple, whose tiles in flight (`batch`, or fewer when the image
    has fewer tiles) fit the budget. Larger tiles mean fewer overlaps to compute twice and blend."""
    if budget is None:
        budget = memory_budget(backend.device)
    per_pixel = backend.bytes_per_pixel()
    if height * width * per_pixel <= budget:
        return max(height, width)
    step = 8 * backend.multiple // math.gcd(8, backend.multiple)
    side = max(step, int(math.sqrt(budget / per_pixel)) // step * step)  # one tile in flight
    while side > step and (tiles_in_flight(height, width, side, batch, overlap) * min(side, height) * min(side, width)
                           * per_pixel > budget):
        side -= step
    return side


def tiles_in_flight(height: int, width: int, tile: int, batch: int, overlap: int = DEFAULT_TILE_OVERLAP) -> int:
    """How many tiles of side `tile` one network call takes for a `height` × `width` image: `batch`, or the
    image's tile count when that is smaller (1 when the image is one tile)."""
    if tile >= max(height, width):
        return 1
    C, overlap = load_C(), min(overlap, tile // 2)
    return min(batch, len(C.axis_tiles(height, tile, overlap)) * len(C.axis_tiles(width, tile, overlap)))


def check_tiling(tile: int | None, tile_overlap: int, batch: int) -> None:
    """Validate tiling arguments up front: ValueError naming the argument and the fix."""
    def whole(n: object) -> bool:  # int or numpy integer, not bool
        return isinstance(n, numbers.Integral) and not isinstance(n, (bool, np.bool_))

    if not whole(batch) or batch < 1:
        raise ValueError(f"batch must be a whole number of tiles per call, at least 1, got {batch!r}")
    if not whole(tile_overlap) or tile_overlap < 0:
        raise ValueError(f"tile_overlap must be a whole number of pixels, 0 or more, got {tile_overlap!r}")
    if tile is None or tile == 0:
        return
    if not whole(tile) or tile < 0:
        raise ValueError(f"tile must be a side in pixels (0: no tiling), got {tile!r}")
    if tile < 2 * tile_overlap:
        raise ValueError(f"tile {tile} is less than twice the tile overlap {tile_overlap}: such tiles see too little "
                         f"context and blend badly; use a tile of at least {2 * tile_overlap}, a smaller tile overlap, "
                         "or 0 for no tiling")


RowSink = Callable[[int, np.ndarray], None]


def upscale_planes(backend: Backend, planes: np.ndarray | torch.Tensor, *, tile: int | None = None,
                   tile_overlap: int = DEFAULT_TILE_OVERLAP, batch: int = DEFAULT_BATCH, threads: int = 0,
                   progress: Callable[[int], None] | None = None, sink: RowSink | None = None
                   ) -> np.ndarray | torch.Tensor | None:
    """float32 planes (C, H, W) in [0, 1] → (C, H·scale, W·scale), tiled and blended.

    On a CPU backend the tiles are blended by the host code of `engine._C` into a band of one row of tiles, and
    every output row is final as soon as the last tile over it is in: with `sink`, `sink(y0, rows)` receives them
    in order (rows: float32 (C, r, W·scale), output rows y0 … y0 + r − 1, a view to copy before returning) and
    nothing is returned, so memory stays bounded by one row of tiles; without `sink` they are collected into the
    returned array. On a CUDA backend the tiles stay on the device: the result is a CUDA tensor blended by
    `engine._C.accumulate_cuda` on the current stream (handed to `sink` whole, if given).
    `tile` is the tile side in input pixels (None: chosen from the memory budget; 0: no tiling); a tile smaller
    than twice `tile_overlap` gets the overlap lowered to half the tile, with a warning (check_tiling refuses it
    where the user chose it). `progress(n)` is called after each batch with the number of tiles done in it.

    A backend with its own `upscale_planes` (a native plan, `engine.backends.native`) does all of this itself, in
    `engine._C`.
    """
    native = getattr(backend, "upscale_planes", None)
    if callable(native):
        out = native(planes, tile=tile, tile_overlap=tile_overlap)
        if progress is not None:
            progress(1)
        return _deliver(out, sink)
    C = load_C()
    on_device = backend.device.type == "cuda"
    source = torch.as_tensor(planes, dtype=torch.float32).to(backend.device if on_device else "cpu")
    channels, h, w = source.shape
    if channels != backend.in_channels:
        raise ValueError(f"the network reads {backend.in_channels} channels, the image has {channels}")
    m = backend.multiple
    pad_h, pad_w = (-h) % m, (-w) % m
    if pad_h or pad_w:  # pixel-unshuffle networks need sides that are multiples of 2 or 4
        mode = "reflect" if min(h, w) > max(pad_h, pad_w) else "replicate"
        source = F.pad(source[None], (0, pad_w, 0, pad_h), mode=mode)[0]
    source = source.contiguous()
    H, W = source.shape[1:]
    if tile is None:
        tile = auto_tile(backend, H, W, batch, overlap=tile_overlap)
    if tile == 0:
        tile = max(H, W)
    if tile % m:
        raise ValueError(f"tile {tile} must be a multiple of {m} for this ×{backend.scale} network "
                         f"(pixel-unshuffle by {m})")
    if 2 * tile_overlap > tile and max(H, W) > tile:
        log.warning("tile overlap %d is more than half the tile %d: using %d", tile_overlap, tile, tile // 2)
        tile_overlap = tile // 2
    plan = plan_tiles(H, W, tile, tile_overlap, backend.scale)
    s = backend.scale
    positions = list(plan.tiles())

    def batches() -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        for first in range(0, len(positions), batch):
            chunk = positions[first:first + batch]
            inputs = torch.stack([source[:, plan.ys[i]:plan.ys[i] + plan.tile_h,
                                         plan.xs[j]:plan.xs[j] + plan.tile_w] for i, j in chunk])
            yield chunk, backend.run(inputs).float().contiguous()
            if progress is not None:
                progress(len(chunk))

    if on_device:
        canvas = torch.zeros((backend.out_channels, H * s, W * s), dtype=torch.float32, device=backend.device)
        wy = [torch.from_numpy(v).to(backend.device) for v in plan.wy]
        wx = [torch.from_numpy(v).to(backend.device) for v in plan.wx]
        stream = torch.cuda.current_stream(backend.device).cuda_stream
        for chunk, result in batches():
            for k, (i, j) in enumerate(chunk):
                C.accumulate_cuda(canvas.data_ptr(), result[k].data_ptr(), wy[i].data_ptr(), wx[j].data_ptr(),
                                  backend.out_channels, H * s, W * s, plan.tile_h * s, plan.tile_w * s,
                                  plan.ys[i] * s, plan.xs[j] * s, stream)
        return _deliver(canvas[:, : h * s, : w * s], sink)

    collected = None
    if sink is None:
        collected = np.empty((backend.out_channels, h * s, w * s), np.float32)

        def sink(y0: int, rows: np.ndarray) -> None:
            collected[:, y0:y0 + rows.shape[1]] = rows

    band = np.zeros((backend.out_channels, plan.tile_h * s, W * s), np.float32)  # output rows [top, top + tile_h·s)
    top, row = 0, 0

    def advance(new_top: int) -> None:
        """Hand the final rows [top, new_top) (cropped to the image) to the sink and move the band down."""
        nonlocal top
        done = new_top - top
        end = min(new_top, h * s)
        if end > top:
            sink(top, band[:, : end - top, : w * s])
        band[:, : band.shape[1] - done] = band[:, done:]
        band[:, band.shape[1] - done:] = 0.0
        top = new_top

    for chunk, result in batches():
        tiles = result.cpu().numpy()
        k = 0
        while k < len(chunk):
            i = chunk[k][0]
            if i != row:  # the rows above this row of tiles are complete
                advance(plan.ys[i] * s)
                row = i
            n = 1
            while k + n < len(chunk) and chunk[k + n][0] == i:
                n += 1
            cols = [j for _, j in chunk[k:k + n]]
            C.blend_tiles(band, tiles[k:k + n], [plan.ys[i] * s - top] * n, [plan.xs[j] * s for j in cols],
                          [plan.wy[i]] * n, [plan.wx[j] for j in cols], threads=threads)
            k += n
    advance(top + band.shape[1])
    return collected


def _deliver(out: np.ndarray | torch.Tensor, sink: RowSink | None) -> np.ndarray | torch.Tensor | None:
    if sink is None:
        return out
    sink(0, _host(out))
    return None


def _host(planes: np.ndarray | torch.Tensor) -> np.ndarray:
    return planes.cpu().numpy() if isinstance(planes, torch.Tensor) else planes


# ---------------------------------------------------------------------------------------------------------
# Images

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma, as cv2's RGB2GRAY


def _resize(planes: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    """Resize float32 planes (C, h, w) with OpenCV, channel by channel."""
    return np.stack([cv2.resize(p, (width, height), interpolation=interpolation) for p in planes])


def infer(net: Any, image: np.ndarray | torch.Tensor, *, tile: int | None = None,
          tile_overlap: int = DEFAULT_TILE_OVERLAP, batch: int | None = None, outscale: float | None = None,
          alpha: float | None = None, alpha_upsampler: str = "model", threads: int = 0,
          progress: Callable[[int], None] | None = None) -> np.ndarray | torch.Tensor:
    """Upscale one image.

    Args:
        net: a network of `engine.models`, a checkpoint path, an engine directory or `Engine` (`engine.load`), or
            a `Backend` (e.g. `TorchBackend(net, ...)`).
        image: numpy (H, W) or (H, W, C) with C ∈ {1, 2, 3, 4} (gray, gray+alpha, RGB, RGBA), uint8, uint16 or
            float (nominally [0, 1]); or a float torch tensor (C, H, W) or (N, C, H, W) in [0, 1].
        tile: tile side in input pixels; None: an engine's own tile (the size it was built for), else chosen
            from a memory budget; 0 disables tiling.
        tile_overlap: overlap of neighbouring tiles in input pixels (≤ tile / 2).
        batch: tiles per network call (default: an engine's own batch, else 4).
        outscale: final scale relative to the input (resized with Lanczos after the network); default: the
            network's scale.
        alpha: network interpolation weight, for a backend made with both endpoints (`TorchBackend(gan_net=…)`).
        alpha_upsampler: "model" (the alpha channel goes through the network as gray) or "bicubic".

    Returns:
        The upscaled image with the input's dtype and channel layout (a tensor on the input's device for tensors).
    """
    backend = as_backend(net)
    check_tiling(tile, tile_overlap, batch if batch is not None else DEFAULT_BATCH)
    if tile is None:
        tile = getattr(backend, "tile", None)
    batch = backend_batch(backend, batch)
    _set_alpha(backend, alpha)
    if alpha_upsampler not in ("model", "bicubic"):
        raise ValueError(f"alpha_upsampler must be model or bicubic, got {alpha_upsampler!r}")
    _check_outscale(outscale)
    if isinstance(image, torch.Tensor):
        return _infer_tensor(backend, image, tile, tile_overlap, batch, outscale, threads, progress)

    C = load_C()
    image = np.asarray(image)
    dtype, keep_axis = image.dtype, image.ndim == 3 and image.shape[2] == 1
    if dtype not in (np.uint8, np.uint16, np.float32):
        if dtype.kind != "f":
            raise ValueError(f"image must be uint8, uint16 or float, got {dtype}")
        image = image.astype(np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)) or 0 in image.shape[:2]:
        raise ValueError(f"image must have shape (H, W) or (H, W, C) with C in 1..4 and H, W ≥ 1, got {image.shape}")
    h, w = image.shape[:2]
    s = backend.scale
    out_h, out_w = output_size(h, w, s, outscale)
    planes = C.to_planar(np.ascontiguousarray(image), threads=threads)  # (C, H, W) float32
    if image.dtype == np.float32:
        _check_float_range(planes)
    channels = planes.shape[0]
    color, alpha_plane = (planes[:-1], planes[-1:]) if channels in (2, 4) else (planes, None)
    gray = color.shape[0] == 1
    out_dtype = np.dtype(dtype) if dtype in (np.uint8, np.uint16) else np.dtype(np.float32)
    result = np.empty((h * s, w * s, channels), out_dtype)

    def run(p: np.ndarray, first: int) -> None:
        """Upscale planes p into the result's channels first, first + 1, …, row band by row band."""
        if backend.device.type == "cuda" and out_dtype != np.float32 and p.shape[0] == backend.out_channels:
            # the output stays on the device until it is uint8/uint16: a quarter (half) of float32's bytes cross
            # to the host, and the device converts (engine._C's CUDA twin of from_planar, the same rounding)
            planes = torch.from_numpy(np.ascontiguousarray(p)).to(backend.device)  # a native plan keeps it there too
            up = upscale_planes(backend, planes, tile=tile, tile_overlap=tile_overlap, batch=batch, threads=threads,
                                progress=progress)
            assert up is not None  # no sink: the result is returned
            if isinstance(up, torch.Tensor) and up.is_cuda:
                result[..., first:first + up.shape[0]] = _quantize_on_device(up, out_dtype)
                return
            result[..., first:first + up.shape[0]] = _to_dtype(C, _host(up), out_dtype, threads)
            return

        def sink(y0: int, rows: np.ndarray) -> None:
            if rows.shape[0] != p.shape[0]:  # gray through a colour network: its luma
                rows = (_GRAY[:, None, None] * rows).sum(axis=0, keepdims=True, dtype=np.float32)
            result[y0:y0 + rows.shape[1], :, first:first + rows.shape[0]] = _to_dtype(C, rows, out_dtype, threads)

        source = np.repeat(p, 3, axis=0) if p.shape[0] == 1 and backend.in_channels == 3 else p
        upscale_planes(backend, np.ascontiguousarray(source), tile=tile, tile_overlap=tile_overlap, batch=batch,
                       threads=threads, progress=progress, sink=sink)

    run(color, 0)
    if alpha_plane is not None:
        if alpha_upsampler == "model":
            run(alpha_plane, channels - 1)
        else:
            up_alpha = _resize(alpha_plane, h * s, w * s, cv2.INTER_CUBIC)
            result[..., channels - 1:] = _to_dtype(C, up_alpha, out_dtype, threads)
    if (out_h, out_w) != (h * s, w * s):
        result = _resize_image(result, out_h, out_w)
    if dtype not in (np.uint8, np.uint16):
        result = result.astype(dtype, copy=False)
    if gray and alpha_plane is None and not keep_axis:
        return result[..., 0]
    return result


def _set_alpha(backend: Backend, alpha: float | None) -> None:
    if alpha is None:
        return
    set_alpha = getattr(backend, "set_alpha", None)
    if set_alpha is None:
        raise ValueError(f"alpha needs a backend with both endpoint weights; {type(backend).__name__} has none")
    if getattr(backend, "alpha", None) != alpha:
        set_alpha(alpha)


def _check_outscale(outscale: float | None) -> None:
    if outscale is not None and not (math.isfinite(outscale) and outscale > 0):
        raise ValueError(f"outscale must be positive and finite, got {outscale}")


def output_size(height: int, width: int, scale: int, outscale: float | None) -> tuple[int, int]:
    """(height, width) of the output of an (height, width) image: ×scale, or ×outscale when given. Raises
    ValueError when outscale makes an empty image."""
    if outscale is None or outscale == scale:
        return height * scale, width * scale
    out_h, out_w = round(height * outscale), round(width * outscale)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"outscale {outscale} makes a {out_w}×{out_h} image of this {width}×{height} one; use a "
                         "larger outscale")
    return out_h, out_w


def _check_float_range(planes: np.ndarray) -> None:
    """Float images are [0, 1]: NaN/Inf are refused (one spreads over the whole output), values outside are
    clipped with a warning."""
    finite = np.isfinite(planes)
    if not finite.all():
        bad = planes.size - int(np.count_nonzero(finite))
        raise ValueError(f"the image holds {bad} NaN or infinite value(s); float images must be finite, in [0, 1]")
    low, high = float(planes.min()), float(planes.max())
    if low < 0.0 or high > 1.0:
        outside = int(np.count_nonzero((planes < 0.0) | (planes > 1.0)))
        log.warning("float image values span [%.4g, %.4g]; the networks read [0, 1]: %d value(s) clipped", low, high,
                    outside)
        np.clip(planes, 0.0, 1.0, out=planes)


def _to_dtype(C: Any, planes: np.ndarray, dtype: np.dtype, threads: int) -> np.ndarray:
    """float32 planes (c, r, W) → (r, W, c) of dtype: integers clamped and rounded by engine._C, floats as they are."""
    if dtype == np.float32:
        return planes.transpose(1, 2, 0)
    return C.from_planar(np.ascontiguousarray(planes, dtype=np.float32), dtype.name, threads=threads)


def _quantize_on_device(planes: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """CUDA float32 planes (c, H, W) → host (H, W, c) of dtype (uint8/uint16), clamped and rounded on the device."""
    from .pixels import from_planar

    out = from_planar(planes.float().contiguous(), dtype.name)
    assert isinstance(out, torch.Tensor)  # a tensor in, a tensor out
    return out.cpu().numpy()


def infer_frames(net: Any, frames: list[np.ndarray], *, tile: int | None = None,
                 tile_overlap: int = DEFAULT_TILE_OVERLAP, batch: int | None = None, outscale: float | None = None,
                 alpha: float | None = None, threads: int = 0) -> list[np.ndarray]:
    """Upscale frames of one shape and dtype (a video's: RGB, uint8 or uint16) like `infer` on each, with several
    frames per network call where a frame is one tile: `batch` frames (default: an engine's own batch, else 4), or
    as many as the memory budget holds. A frame larger than its tile, a backend with its own tiling (a native plan)
    or other images go through `infer` one by one. The pixels are `infer`'s wherever the backend's output does not
    depend on the batch (ONNX Runtime and ncnn on the CPU, by test); PyTorch on the CPU may differ in the last bit
    of a float, so rarely by one level."""
    backend = as_backend(net)
    if not frames:
        return []
    check_tiling(tile, tile_overlap, batch if batch is not None else DEFAULT_BATCH)
    first = frames[0]
    h, w = first.shape[:2]
    simple = (first.ndim == 3 and first.shape[2] == 3 and first.dtype in (np.uint8, np.uint16)
              and backend.in_channels == 3 and backend.out_channels == 3
              and not callable(getattr(backend, "upscale_planes", None))
              and all(f.shape == first.shape and f.dtype == first.dtype for f in frames))
    if tile is None:
        tile = getattr(backend, "tile", None)
    batch = backend_batch(backend, batch)
    m = backend.multiple
    H, W = h + (-h) % m, w + (-w) % m
    per_frame = H * W * backend.bytes_per_pixel()
    if tile is None:  # as many frames as the memory budget holds, up to batch
        per_call = min(batch, memory_budget(backend.device) // per_frame)
    else:  # 0: no tiling; else whole frames only when one fits the tile
        per_call = batch if tile == 0 or tile >= max(H, W) else 0
    if not simple or per_call < 2:
        return [np.asarray(infer(backend, f, tile=tile, tile_overlap=tile_overlap, batch=batch, outscale=outscale,
                                 alpha=alpha, threads=threads)) for f in frames]
    _set_alpha(backend, alpha)
    _check_outscale(outscale)
    C = load_C()
    s = backend.scale
    out_h, out_w = output_size(h, w, s, outscale)
    results = []
    for start in range(0, len(frames), per_call):
        chunk = frames[start:start + per_call]
        planes = torch.from_numpy(np.stack([C.to_planar(np.ascontiguousarray(f), threads=threads) for f in chunk]))
        planes = planes.to(backend.device)
        if (H, W) != (h, w):  # as upscale_planes pads
            mode = "reflect" if min(h, w) > max(H - h, W - w) else "replicate"
            planes = F.pad(planes, (0, W - w, 0, H - h), mode=mode)
        up = backend.run(planes.contiguous())[:, :, : h * s, : w * s]
        for y in up:
            if y.is_cuda:
                out = _quantize_on_device(y, first.dtype)
            else:
                out = _to_dtype(C, np.ascontiguousarray(y.float().numpy()), first.dtype, threads)
            results.append(_resize_image(out, out_h, out_w) if (out_h, out_w) != (h * s, w * s) else out)
    return results


def _resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, C) image in its own dtype with Lanczos (OpenCV saturates integer types)."""
    if image.shape[2] <= 4:
        out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LANCZOS4)
        return out[..., None] if out.ndim == 2 else out
    return np.stack([cv2.resize(image[..., c], (width, height), interpolation=cv2.INTER_LANCZOS4)
                     for c in range(image.shape[2])], axis=-1)


def _infer_tensor(backend: Backend, image: torch.Tensor, tile: int | None, tile_overlap: int, batch: int,
                  outscale: float | None, threads: int, progress: Callable[[int], None] | None) -> torch.Tensor:
    """Float tensors (C, H, W) or (N, C, H, W) in [0, 1]: each image through the tiled path, same layout back.
    A CUDA tensor with a CUDA backend never leaves the device."""
    if not image.is_floating_point() or image.ndim not in (3, 4):
        raise ValueError(f"a tensor image must be float (C, H, W) or (N, C, H, W), got {image.dtype} "
                         f"{tuple(image.shape)}")
    frames = image.unsqueeze(0) if image.ndim == 3 else image
    if not bool(torch.isfinite(frames).all()):
        bad = int((~torch.isfinite(frames)).sum())
        raise ValueError(f"the image holds {bad} NaN or infinite value(s); float images must be finite, in [0, 1]")
    low, high = float(frames.min()), float(frames.max())
    if low < 0.0 or high > 1.0:
        log.warning("float image values span [%.4g, %.4g]; the networks read [0, 1]: values clipped", low, high)
        frames = frames.clamp(0.0, 1.0)
    outs = []
    for frame in frames:
        up = upscale_planes(backend, frame.detach().float(), tile=tile, tile_overlap=tile_overlap, batch=batch,
                            threads=threads, progress=progress)
        result = torch.as_tensor(up)
        if outscale is not None and outscale != backend.scale:
            h, w = frame.shape[-2:]
            result = F.interpolate(result[None], size=(round(h * outscale), round(w * outscale)), mode="bicubic",
                                   align_corners=False)[0]
        outs.append(result)
    out = torch.stack(outs).to(device=image.device, dtype=image.dtype)
    return out[0] if image.ndim == 3 else out
