"""EDSR (Lim et al. 2017) in BasicSR's layout; the baseline is num_feat=64, num_block=16, res_scale=1.

    x ─ (x − mean)·img_range ─ conv_first ─┬─ body: num_block × [conv1 ─ ReLU ─ conv2, ·res_scale (+ skip)] ─┐
                                            │                                                 conv_after_body ─(+)─
                                            └──────────────────────── long skip ───────────────────────────────┘
    ─ upsample: per ×2 (or one ×3) stage [conv nf→nf·s² ─ PixelShuffle(s)] ─ conv_last ─ /img_range + mean ─ y

The upsampler is an `nn.Sequential` of (conv, PixelShuffle) pairs, so its convs are `upsample.0`, `upsample.2`, …
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .base import SRNet
from .shapes import StateDict, conv_channels, count, upsample_scale
from .srresnet import ResidualBlockNoBN, _stage_factors

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShiftSR(SRNet):
    """The frame EDSR and RCAN share: the DIV2K mean subtracted and the input scaled to `img_range`, conv_first, a
    body with a long skip through conv_after_body, the pixel-shuffle upsampler, conv_last, and back. Subclasses
    call `_frame` with a factory of their body (called after conv_first, so seeded weights keep their order)."""

    img_range: float
    mean: torch.Tensor

    def _frame(self, name: str, body: Callable[[], nn.Module], *, num_in_ch: int, num_out_ch: int, scale: int,
               num_feat: int, img_range: float, rgb_mean: tuple[float, ...]) -> None:
        factors = _stage_factors(scale, name)
        if not img_range > 0:  # the output is divided by it
            raise ValueError(f"{name} img_range must be positive (255 or 1 in published models), got {img_range}")
        self.img_range = img_range
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, -1, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = body()
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        stages: list[nn.Module] = []
        for f in factors:
            stages += [nn.Conv2d(num_feat, num_feat * f * f, 3, 1, 1), nn.PixelShuffle(f)]
        self.upsample = nn.Sequential(*stages)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        feat = self.conv_first((x - mean) * self.img_range)
        feat = feat + self.conv_after_body(self.body(feat))
        return self.conv_last(self.upsample(feat)) / self.img_range + mean


def mean_per_channel(name: str, rgb_mean: Sequence[float], num_in_ch: int, num_out_ch: int) -> tuple[float, ...]:
    """`rgb_mean` as floats, refused unless it has one value per input channel and the output has as many."""
    mean = tuple(float(m) for m in rgb_mean)
    if len(mean) != num_in_ch or num_in_ch != num_out_ch:
        raise ValueError(f"{name} subtracts a mean per channel: rgb_mean has {len(mean)} values for "
                         f"num_in_ch={num_in_ch}, num_out_ch={num_out_ch}; they must all agree")
    return mean


class EDSR(MeanShiftSR):
    """EDSR. Input (N, C, H, W) in [0, 1] → (N, C_out, H·scale, W·scale); `scale` ∈ {2, 3, 4, 8}."""

    arch = "edsr"

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 16,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        rgb_mean = mean_per_channel("EDSR", rgb_mean, num_in_ch, num_out_ch)
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat,
                           num_block=num_block, res_scale=res_scale, img_range=img_range, rgb_mean=rgb_mean)
        self._frame("EDSR", lambda: nn.Sequential(
            *(ResidualBlockNoBN(num_feat, res_scale, pytorch_init=True) for _ in range(num_block))),
            num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat, img_range=img_range,
            rgb_mean=rgb_mean)


# Hyper-parameters from shapes, on our key names:
#
#   conv_first              (nf, in, 3, 3)
#   body.{0..nb−1}.conv1    (nf, nf, 3, 3)        (and conv2)
#   conv_after_body         (nf, nf, 3, 3)
#   upsample.{0, 2, …}      (nf·s², nf, 3, 3)     PixelShuffle(s) between: scale = ∏ s
#   conv_last               (out, nf, 3, 3)
# res_scale, img_range and rgb_mean are not in the shapes: the defaults, or what a layout or our metadata adds.


def edsr_hparams(sd: StateDict) -> dict[str, Any]:
    """EDSR's hyper-parameters read from the shapes of its tensors (our key names)."""
    num_feat, in_ch = conv_channels(sd, "conv_first.weight")
    scale = upsample_scale(sd, num_feat, "EDSR")
    # res_scale is not stored in the weights: EDSR's published wide model (256 features, 32 blocks) uses
    # 0.1, the baseline (64 features) 1.0.
    return dict(num_in_ch=in_ch, num_out_ch=conv_channels(sd, "conv_last.weight")[0], scale=scale,
                num_feat=num_feat, num_block=count(sd, r"body\.(\d+)\.conv1\.weight"),
                res_scale=0.1 if num_feat >= 256 else 1.0)
