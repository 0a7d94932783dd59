"""What every fused plan shares: weights packed into flat buffers per alpha endpoint, the in-place blend kernel,
the alpha checks, the per-shape arenas of buffers (a bounded, least-recently-used cache), and the input and output
conversion kernels (`FusedPlan`).

All packed tensors of an endpoint live in one flat buffer, each starting on a multiple of `FLAT_ALIGN` elements
(zeros between), so every weight and bias pointer is 16-byte aligned and the kernels keep Triton's divisibility-16
specialization; the live weights are views into a third buffer of the same layout, which `set_alpha` rewrites in
place with one `lerp_kernel` launch, so their addresses never change (a captured CUDA graph stays valid).

Element offsets: the kernels here compute them in int32, and in int64 (`OFF64`) when a buffer they touch spans
2³¹ elements or more (`needs_int64`, strides counted), so small shapes keep the cheaper 32-bit arithmetic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .conv import needs_int64
from .launch import launch


@triton.jit
def lerp_kernel(a_ptr, b_ptr, out_ptr, n, alpha, QUANTIZE: tl.constexpr, BLOCK: tl.constexpr, OFF64: tl.constexpr):
    """out = (1 − alpha)·a + alpha·b, computed in fp32 and stored in out's type; with QUANTIZE (int8 weights whose
    endpoints are stored already divided by their fixed scale), rounded half away from zero and clamped to ±127.
    OFF64: element offsets in int64 (buffers of 2³¹ elements or more)."""
    pid = tl.program_id(0)
    if OFF64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = a + alpha * (b - a)
    if QUANTIZE:
        out = tl.where(out >= 0, tl.floor(out + 0.5), -tl.floor(-out + 0.5))
        out = tl.minimum(tl.maximum(out, -127.0), 127.0)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def lerp_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float, block: int = 1024) -> torch.Tensor:
    """In place: out = (1 − alpha)·a + alpha·b over three flat contiguous buffers of one length (int8 `out`:
    rounded and clamped to ±127)."""
    if not (out.is_contiguous() and a.is_contiguous() and b.is_contiguous()) or not out.numel() == a.numel() == \
            b.numel():
        raise ValueError("lerp_ needs three contiguous buffers of one length")
    n = out.numel()
    launch(lerp_kernel, (triton.cdiv(n, block),), [a, b, out, n, float(alpha)],
           dict(QUANTIZE=out.dtype == torch.int8, BLOCK=block, OFF64=needs_int64(out, a, b)), num_warps=4,
           num_stages=1)
    return out


def check_alpha(alpha: float, has_gan: bool, plan: str) -> float:
    """`alpha` as a float in [0, 1], for a plan made with its GAN weights; else a ValueError saying what to do."""
    if not has_gan:
        raise ValueError(f"alpha needs the GAN weights: {plan}(..., gan_net=...)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


FLAT_ALIGN = 16  # elements: every packed tensor starts 16-byte aligned in any dtype, and buffers of different dtypes
#                  (float32 endpoints of int8 live weights) share one layout


def _padded(count: int) -> int:
    return -(-count // FLAT_ALIGN) * FLAT_ALIGN


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat buffer holding `tensors` in order, each starting on a multiple of `FLAT_ALIGN` elements, zeros
    between: the layout `flat_views` reads."""
    return torch.cat([F.pad(t.reshape(-1), (0, _padded(t.numel()) - t.numel())) for t in tensors])


def flat_views(flat: torch.Tensor, shapes: Sequence[tuple[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
    """name → a view of `flat` with that shape, in the order given, each starting on a multiple of `FLAT_ALIGN`
    elements (the layout `flatten` writes)."""
    views, offset = {}, 0
    for name, shape in shapes:
        count = int(torch.Size(shape).numel())
        views[name] = flat[offset:offset + count].view(*shape)
        offset += _padded(count)
    if offset > flat.numel():
        raise ValueError(f"the flat buffer has {flat.numel()} elements, its layout needs {offset}: make it with "
                         f"kernels.packing.flatten")
    return views


class Endpoints:
    """Named packed tensors of the PSNR network (and of its GAN fine-tune) in flat buffers on `device`, and the live
    tensors: views into one more buffer that starts as the PSNR endpoint and `set_alpha` blends in place."""

    def __init__(self, psnr: Mapping[str, torch.Tensor], gan: Mapping[str, torch.Tensor] | None,
                 device: torch.device, what: str) -> None:
        self.shapes = [(name, tuple(t.shape)) for name, t in psnr.items()]
        if gan is not None and [(name, tuple(t.shape)) for name, t in gan.items()] != self.shapes:
            raise ValueError(f"the GAN network is not the same {what} as the PSNR network")
        self.ends = [self._flatten(psnr, device)] + ([self._flatten(gan, device)] if gan is not None else [])
        self.live = self.ends[0].clone()
        self.views = flat_views(self.live, self.shapes)

    def _flatten(self, tensors: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        return flatten([tensors[name] for name, _ in self.shapes]).to(device)

    @property
    def has_gan(self) -> bool:
        return len(self.ends) == 2

    def set_alpha(self, alpha: float) -> None:
        """live = (1 − alpha)·PSNR + alpha·GAN, in place, in one kernel launch (alpha checked by the caller)."""
        lerp_(self.live, self.ends[0], self.ends[1], alpha)


@triton.jit
def nchw_to_nhwc_kernel(x_ptr, y_ptr, C, H, W, TOTAL, R: tl.constexpr, BLOCK: tl.constexpr, OFF64: tl.constexpr):
    """y (N, H/R, W/R, C·R²) in y's type = pixel_unshuffle(x, R) of float32 x (N, C, H, W), channels last: channel
    c·R² + i·R + j of pixel (h, w) is x[c, h·R + i, w·R + j]. One program writes BLOCK consecutive elements of y.
    OFF64: element offsets in int64 (buffers of 2³¹ elements or more)."""
    pid = tl.program_id(0)
    if OFF64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    co = offs % (C * R * R)
    p = offs // (C * R * R)
    wo = p % (W // R)
    p = p // (W // R)
    ho = p % (H // R)
    n = p // (H // R)
    c = co // (R * R)
    i = (co % (R * R)) // R
    j = co % R
    v = tl.load(x_ptr + (((n * C + c) * H + ho * R + i) * W + wo * R + j), mask=mask, other=0.0)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def nhwc_to_nchw_kernel(x_ptr, y_ptr, C, HW, STRIDE, TOTAL, BLOCK: tl.constexpr, OFF64: tl.constexpr):
    """float32 y (N, C, HW) from channels [0, C) of x (N, HW, STRIDE). One program writes BLOCK elements of y.
    OFF64: element offsets in int64 (buffers of 2³¹ elements or more)."""
    pid = tl.program_id(0)
    if OFF64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    hw = offs % HW
    t = offs // HW
    v = tl.load(x_ptr + ((t // C) * HW + hw) * STRIDE + t % C, mask=mask, other=0.0)
    tl.store(y_ptr + offs, v.to(tl.float32), mask=mask)


IO_BLOCK = 1024


def to_nhwc(src: torch.Tensor, x: torch.Tensor, multiple: int) -> None:
    """x (N, H/R, W/R, C·R²) = pixel_unshuffle(src, R) channels last, R = `multiple`, from float32 src (N, C, H, W);
    both contiguous. One kernel launch."""
    n, c, h, w = src.shape
    r = multiple
    if src.dtype != torch.float32 or not src.is_contiguous() or not x.is_contiguous() or \
            tuple(x.shape) != (n, h // r, w // r, c * r * r) or h % r or w % r:
        raise ValueError(f"to_nhwc needs a contiguous float32 src (N, C, H, W) with H, W multiples of {r} and a "
                         f"contiguous x (N, H/{r}, W/{r}, C·{r}²), got {tuple(src.shape)} {src.dtype} and "
                         f"{tuple(x.shape)}")
    total = x.numel()
    launch(nchw_to_nhwc_kernel, (triton.cdiv(total, IO_BLOCK),), [src, x, c, h, w, total],
           dict(R=r, BLOCK=IO_BLOCK, OFF64=needs_int64(src, x)), num_warps=4, num_stages=1)


def to_nchw(out: torch.Tensor, dst: torch.Tensor) -> None:
    """float32 dst (N, C, H, W), contiguous, = the first C channels of out (N, H, W, ≥ C), whose channels are
    contiguous and whose pixels lie one pixel stride apart (a channel prefix of an NHWC buffer). One kernel launch."""
    n, c, h, w = dst.shape
    stride = out.stride(2) if out.ndim == 4 else 0  # elements from one pixel to the next
    spaced = out.ndim == 4 and all(size == 1 or st == want for size, st, want in zip(
        out.shape, out.stride(), (h * w * stride, w * stride, stride, 1), strict=True))
    if dst.dtype != torch.float32 or not dst.is_contiguous() or not spaced or tuple(out.shape[:3]) != (n, h, w) or \
            out.shape[3] < c:
        raise ValueError(f"to_nchw needs a contiguous float32 dst (N, C, H, W) and out (N, H, W, ≥ C) with "
                         f"contiguous channels and evenly spaced pixels, got dst {tuple(dst.shape)} {dst.dtype}, out "
                         f"{tuple(out.shape)} with strides {out.stride()}")
    total = dst.numel()
    launch(nhwc_to_nchw_kernel, (triton.cdiv(total, IO_BLOCK),), [out, dst, c, h * w, stride, total],
           dict(BLOCK=IO_BLOCK, OFF64=needs_int64(out, dst)), num_warps=4, num_stages=1)


ARENA_ALIGN = 256  # every buffer of an arena starts on this many bytes (cudaMalloc's alignment)
MAX_SHAPES = 8  # input tile shapes whose arenas a FusedPlan keeps by default (as the TensorRT backend keeps)

Specs = Mapping[str, Sequence[tuple[Sequence[int], torch.dtype]]]


def arena_layout(specs: Specs) -> tuple[list[tuple[str, tuple[int, ...], torch.dtype, int]], int]:
    """Where `carve` puts each buffer of `specs`: [(group, shape, dtype, byte offset)] and the arena's bytes."""
    offsets, end = [], 0
    for group, items in specs.items():
        for shape, dtype in items:
            offsets.append((group, tuple(shape), dtype, end))
            nbytes = int(torch.Size(shape).numel()) * dtype.itemsize
            end += -(-nbytes // ARENA_ALIGN) * ARENA_ALIGN
    return offsets, max(end, ARENA_ALIGN)


def carve(specs: Specs, device: torch.device) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """One uint8 arena on `device` holding every buffer of `specs` (group → [(shape, dtype)]), each 256-byte
    aligned, and the buffers as typed views into it, by group."""
    offsets, nbytes = arena_layout(specs)
    base = torch.empty(nbytes, dtype=torch.uint8, device=device)
    views: dict[str, list[torch.Tensor]] = {group: [] for group in specs}
    for group, shape, dtype, offset in offsets:
        count = int(torch.Size(shape).numel())
        views[group].append(base[offset:offset + count * dtype.itemsize].view(dtype).view(shape))
    return base, views


@dataclass
class ShapeState:
    """What one input tile shape holds on the device: its arena, the buffers carved from it by name, and the CUDA
    graph a backend captured over those buffers (None until then). A graph bakes in the buffers' addresses, so it
    lives in the same entry and is dropped with the arena."""

    arena: torch.Tensor
    buffers: dict[str, list[torch.Tensor]]
    graph: torch.cuda.CUDAGraph | None = None


class FusedPlan:
    """The shape-independent part of the fused plans: per input tile shape (N, H, W), one arena (`carve`) holds the
    float32 NCHW `input` and `output` of the tile batch, the network's NHWC input `x` (pixel-unshuffled by
    `multiple`) and the subclass's buffers; `forward(n, H, W)` converts `input` into `x` (one kernel), runs the
    subclass's `_forward(buffers)` (its convs) and converts its NHWC `out` into `output` (one kernel). Every launch
    goes through `kernels.launch`, so a forward can be recorded (`kernels.plan`).

    Memory: the arenas of at most `max_shapes` shapes are kept (default `MAX_SHAPES`; set the attribute to change
    it), the least recently used one dropped first, together with the CUDA graph a backend attached to it
    (`ShapeState.graph`). When a new arena does not fit in device memory, every other shape is dropped, torch's
    cache emptied and the allocation tried once more; then `torch.OutOfMemoryError` names the shape and its bytes.
    Subclasses call `super().__init__()` in their constructor."""

    scale: int
    in_channels: int
    out_channels: int
    multiple: int
    dtype: torch.dtype
    device: torch.device
    x_dtype: torch.dtype  # of the NHWC network input `x`
    params: Endpoints  # the packed weights: both endpoints and the live blend
    alpha: float | None  # None without GAN weights

    def __init__(self, *, max_shapes: int = MAX_SHAPES) -> None:
        self._states: OrderedDict[tuple[int, int, int], ShapeState] = OrderedDict()  # least recently used first
        self.max_shapes = max_shapes

    @property
    def max_shapes(self) -> int:
        """How many input tile shapes keep their arena (and graph); lowering it drops the least recently used."""
        return self._max_shapes

    @max_shapes.setter
    def max_shapes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_shapes must be an integer ≥ 1, got {value!r}")
        self._max_shapes = value
        while len(self._states) > value:
            self._states.popitem(last=False)

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """The input tile shapes (n, h, w) whose arenas are kept, least recently used first."""
        return list(self._states)

    def set_alpha(self, alpha: float) -> None:
        """Live weights = (1 − alpha)·PSNR + alpha·GAN, in place, in one kernel launch."""
        self.alpha = check_alpha(alpha, self.params.has_gan, type(self).__name__)
        self.params.set_alpha(self.alpha)

    def _specs(self, n: int, h: int, w: int) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
        """The subclass's NHWC buffers for the network input (n, h, w) (after the unshuffle); `out` among them."""
        raise NotImplementedError

    def _forward(self, buf: dict[str, list[torch.Tensor]]) -> None:
        """The convs: read buf["x"][0], write buf["out"][0]."""
        raise NotImplementedError

    def check_shape(self, n: int, h: int, w: int) -> None:
        if n < 1 or h < 1 or w < 1 or h % self.multiple or w % self.multiple:
            raise ValueError(f"the input tile batch must be (N, {self.in_channels}, H, W) with N, H, W ≥ 1 and H, W "
                             f"multiples of {self.multiple}, got ({n}, {self.in_channels}, {h}, {w})")

    def arena_specs(self, n: int, h: int, w: int) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
        """Every buffer of input tile shape (n, in_channels, h, w), by name: [(shape, dtype)]."""
        self.check_shape(n, h, w)
        r, s = self.multiple, self.scale
        specs: dict[str, list[tuple[tuple[int, ...], torch.dtype]]] = {
            "input": [((n, self.in_channels, h, w), torch.float32)],
            "output": [((n, self.out_channels, h * s, w * s), torch.float32)],
            "x": [((n, h // r, w // r, self.in_channels * r * r), self.x_dtype)],
        }
        specs.update(self._specs(n, h // r, w // r))
        return specs

    def state(self, n: int, h: int, w: int) -> ShapeState:
        """The arena, buffers and graph slot of input tile shape (n, in_channels, h, w): made on first use (after
        dropping the least recently used shape when `max_shapes` are kept), then reused."""
        key = (n, h, w)
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        specs = self.arena_specs(n, h, w)
        while len(self._states) >= self.max_shapes:  # before allocating: the dropped arena's memory is reused
            self._states.popitem(last=False)
        state = self._allocate(specs, key)
        self._states[key] = state
        return state

    def _allocate(self, specs: Specs, key: tuple[int, int, int]) -> ShapeState:
        try:
            return ShapeState(*carve(specs, self.device))
        except torch.OutOfMemoryError:
            pass
        self._states.clear()  # every other shape's arena and graph
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            return ShapeState(*carve(specs, self.device))
        except torch.OutOfMemoryError as e:
            n, h, w = key
            nbytes = arena_layout(specs)[1]
            raise torch.OutOfMemoryError(
                f"the arena of input tile shape ({n}, {self.in_channels}, {h}, {w}) needs {nbytes} bytes "
                f"({nbytes / 2**30:.2f} GiB) on {self.device}, more than is free with no other shape kept: use a "
                f"smaller tile or batch (engine.infer tile=, batch=; --tile, --batch)") from e

    def arena(self, n: int, h: int, w: int) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """The arena of input tile shape (n, in_channels, h, w) and its buffers by name (`state`)."""
        state = self.state(n, h, w)
        return state.arena, state.buffers

    def buffers(self, n: int, h: int, w: int) -> dict[str, list[torch.Tensor]]:
        """The buffers of input tile shape (n, in_channels, h, w), by name."""
        return self.state(n, h, w).buffers

    def forward(self, n: int, h: int, w: int) -> None:
        """Run the network on buffers(n, h, w)["input"] into ["output"]: launches only (capturable in a graph)."""
        buf = self.buffers(n, h, w)
        to_nhwc(buf["input"][0], buf["x"][0], self.multiple)
        self._forward(buf)
        to_nchw(buf["out"][0], buf["output"][0])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float in [0, 1] → (N, out_channels, H·scale, W·scale) float32 on the device."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        n, _, h, w = x.shape
        buf = self.buffers(n, h, w)
        buf["input"][0].copy_(x)
        self.forward(n, h, w)
        return buf["output"][0].clone()

    def arena_bytes(self, n: int, h: int, w: int) -> int:
        """Bytes of the arena of input tile shape (n, in_channels, h, w), computed without allocating it (so a probe
        shape never takes the place of a kept one)."""
        return arena_layout(self.arena_specs(n, h, w))[1]
