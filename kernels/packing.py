"""What every fused plan shares: weights packed into flat buffers per alpha endpoint, the in-place blend kernel,
the alpha checks, the per-shape arena of buffers, and the input and output conversion kernels (`FusedPlan`).

All packed tensors of an endpoint live in one flat buffer; the live weights are views into a third buffer of the
same layout, which `set_alpha` rewrites in place with one `lerp_kernel` launch, so their addresses never change (a
captured CUDA graph stays valid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import triton
import triton.language as tl

from .launch import launch


@triton.jit
def lerp_kernel(a_ptr, b_ptr, out_ptr, n, alpha, QUANTIZE: tl.constexpr, BLOCK: tl.constexpr):
    """out = (1 − alpha)·a + alpha·b, computed in fp32 and stored in out's type; with QUANTIZE (int8 weights whose
    endpoints are stored already divided by their fixed scale), rounded half away from zero and clamped to ±127."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
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
           dict(QUANTIZE=out.dtype == torch.int8, BLOCK=block), num_warps=4, num_stages=1)
    return out


def check_alpha(alpha: float, has_gan: bool, plan: str) -> float:
    """`alpha` as a float in [0, 1], for a plan made with its GAN weights; else a ValueError saying what to do."""
    if not has_gan:
        raise ValueError(f"alpha needs the GAN weights: {plan}(..., gan_net=...)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def flat_views(flat: torch.Tensor, shapes: Sequence[tuple[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
    """name → a view of `flat` with that shape, laid out one after another in the order given."""
    views, offset = {}, 0
    for name, shape in shapes:
        count = int(torch.Size(shape).numel())
        views[name] = flat[offset:offset + count].view(*shape)
        offset += count
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
        return torch.cat([tensors[name].reshape(-1) for name, _ in self.shapes]).to(device)

    @property
    def has_gan(self) -> bool:
        return len(self.ends) == 2

    def set_alpha(self, alpha: float) -> None:
        """live = (1 − alpha)·PSNR + alpha·GAN, in place, in one kernel launch (alpha checked by the caller)."""
        lerp_(self.live, self.ends[0], self.ends[1], alpha)


@triton.jit
def nchw_to_nhwc_kernel(x_ptr, y_ptr, C, H, W, TOTAL, R: tl.constexpr, BLOCK: tl.constexpr):
    """y (N, H/R, W/R, C·R²) in y's type = pixel_unshuffle(x, R) of float32 x (N, C, H, W), channels last: channel
    c·R² + i·R + j of pixel (h, w) is x[c, h·R + i, w·R + j]. One program writes BLOCK consecutive elements of y."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
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
def nhwc_to_nchw_kernel(x_ptr, y_ptr, C, HW, STRIDE, TOTAL, BLOCK: tl.constexpr):
    """float32 y (N, C, HW) from channels [0, C) of x (N, HW, STRIDE). One program writes BLOCK elements of y."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    hw = offs % HW
    t = offs // HW
    v = tl.load(x_ptr + ((t // C) * HW + hw) * STRIDE + t % C, mask=mask, other=0.0)
    tl.store(y_ptr + offs, v.to(tl.float32), mask=mask)


ARENA_ALIGN = 256  # every buffer of an arena starts on this many bytes (cudaMalloc's alignment)
IO_BLOCK = 1024


def carve(specs: Mapping[str, Sequence[tuple[Sequence[int], torch.dtype]]], device: torch.device
          ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """One uint8 arena on `device` holding every buffer of `specs` (group → [(shape, dtype)]), each 256-byte
    aligned, and the buffers as typed views into it, by group."""
    offsets, end = [], 0
    for group, items in specs.items():
        for shape, dtype in items:
            offsets.append((group, tuple(shape), dtype, end))
            nbytes = int(torch.Size(shape).numel()) * dtype.itemsize
            end += -(-nbytes // ARENA_ALIGN) * ARENA_ALIGN
    base = torch.empty(max(end, ARENA_ALIGN), dtype=torch.uint8, device=device)
    views: dict[str, list[torch.Tensor]] = {group: [] for group in specs}
    for group, shape, dtype, offset in offsets:
        count = int(torch.Size(shape).numel())
        views[group].append(base[offset:offset + count * dtype.itemsize].view(dtype).view(shape))
    return base, views


class FusedPlan:
    """The shape-independent part of the fused plans: per input tile shape (N, H, W), one arena (`carve`) holds the
    float32 NCHW `input` and `output` of the tile batch, the network's NHWC input `x` (pixel-unshuffled by
    `multiple`) and the subclass's buffers; `forward(n, H, W)` converts `input` into `x` (one kernel), runs the
    subclass's `_forward(buffers)` (its convs) and converts its NHWC `out` into `output` (one kernel). Every launch
    goes through `kernels.launch`, so a forward can be recorded (`kernels.plan`)."""

    scale: int
    in_channels: int
    out_channels: int
    multiple: int
    dtype: torch.dtype
    device: torch.device
    x_dtype: torch.dtype  # of the NHWC network input `x`
    params: Endpoints  # the packed weights: both endpoints and the live blend
    alpha: float | None  # None without GAN weights
    _arenas: dict[tuple[int, int, int], tuple[torch.Tensor, dict[str, list[torch.Tensor]]]]

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

    def arena(self, n: int, h: int, w: int) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """The arena of input tile shape (n, in_channels, h, w) and its buffers by name (made on first use)."""
        key = (n, h, w)
        if key not in self._arenas:
            self.check_shape(n, h, w)
            r, s = self.multiple, self.scale
            specs: dict[str, list[tuple[tuple[int, ...], torch.dtype]]] = {
                "input": [((n, self.in_channels, h, w), torch.float32)],
                "output": [((n, self.out_channels, h * s, w * s), torch.float32)],
                "x": [((n, h // r, w // r, self.in_channels * r * r), self.x_dtype)],
            }
            specs.update(self._specs(n, h // r, w // r))
            self._arenas[key] = carve(specs, self.device)
        return self._arenas[key]

    def buffers(self, n: int, h: int, w: int) -> dict[str, list[torch.Tensor]]:
        """The buffers of input tile shape (n, in_channels, h, w), by name."""
        return self.arena(n, h, w)[1]

    def forward(self, n: int, h: int, w: int) -> None:
        """Run the network on buffers(n, h, w)["input"] into ["output"]: launches only (capturable in a graph)."""
        buf = self.buffers(n, h, w)
        src, x = buf["input"][0], buf["x"][0]
        total = x.numel()
        launch(nchw_to_nhwc_kernel, (triton.cdiv(total, IO_BLOCK),), [src, x, self.in_channels, h, w, total],
               dict(R=self.multiple, BLOCK=IO_BLOCK), num_warps=4, num_stages=1)
        self._forward(buf)
        out, dst = buf["out"][0], buf["output"][0]
        total = dst.numel()
        hw = out.shape[1] * out.shape[2]
        launch(nhwc_to_nchw_kernel, (triton.cdiv(total, IO_BLOCK),), [out, dst, self.out_channels, hw,
                                                                       out.stride(2), total],
               dict(BLOCK=IO_BLOCK), num_warps=4, num_stages=1)

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
        return self.arena(n, h, w)[0].numel()
