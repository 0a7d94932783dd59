"""What every fused plan shares: weights packed into flat buffers per alpha endpoint, the in-place blend kernel,
the alpha checks, and the NHWC input.

All packed tensors of an endpoint live in one flat buffer; the live weights are views into a third buffer of the
same layout, which `set_alpha` rewrites in place with one `lerp_kernel` launch, so their addresses never change (a
captured CUDA graph stays valid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


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
    lerp_kernel[(triton.cdiv(n, block),)](a, b, out, n, float(alpha), QUANTIZE=out.dtype == torch.int8, BLOCK=block)
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


def nhwc_input(x: torch.Tensor, in_channels: int, unshuffle: int, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """(N, in_channels, H, W) float → pixel-unshuffled (for ×1/×2 RRDBNets) contiguous NHWC on `device`."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must have shape (N, {in_channels}, H, W), got {tuple(x.shape)}")
    if unshuffle > 1:
        x = F.pixel_unshuffle(x, unshuffle)
    return x.to(device, dtype).permute(0, 2, 3, 1).contiguous()
