"""RCAN (Zhang et al., ECCV 2018) in BasicSR's layout; the paper's network is num_group=10 groups of num_block=20
RCABs, num_feat=64, reduction=16.

    x ─ (x − mean)·img_range ─ conv_first ─┬─ body: num_group × residual group ──────────── conv_after_body ─(+)─
                                            └──────────────────────── long skip ────────────────────────────┘
    residual group:  ─┬─ num_block × RCAB ─ conv ─(+)─          (group skip)
                      └──────────────────────────┘
    RCAB:            ─┬─ conv ─ ReLU ─ conv ─ channel attention ─(+)─
                      └──────────────────────────────────────────┘
    channel attention: y · sigmoid(conv1×1 nf/r→nf (ReLU(conv1×1 nf→nf/r (mean of y over H, W))))
    ─ upsample: per ×2 (or one ×3) stage [conv nf→nf·s² ─ PixelShuffle(s)] ─ conv_last ─ /img_range + mean ─ y

Keys are BasicSR's (`basicsr/archs/rcan_arch.py`): `body.{g}.residual_group.{b}.rcab.{0,2}` the block convs,
`body.{g}.residual_group.{b}.rcab.3.attention.{1,3}` the attention's squeeze and excite convs, `body.{g}.conv` the
group's last conv, and EDSR's `conv_first`, `conv_after_body`, `upsample.{0,2,…}`, `conv_last`.

The attention averages over the whole image: unlike the other networks here, an output pixel depends on every
input pixel, so tiled inference can only approximate whole-image inference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .edsr import DIV2K_RGB_MEAN, MeanShiftSR, mean_per_channel
from .shapes import FormatError, StateDict, conv_channels, count, upsample_scale


class ChannelAttention(nn.Module):
    """y · sigmoid(excite(ReLU(squeeze(mean of y over H, W)))); `attention.1` squeezes nf → nf/r, `attention.3`
    excites back to nf (the indices of BasicSR's Sequential: pool, conv, ReLU, conv, sigmoid)."""

    def __init__(self, num_feat: int, reduction: int) -> None:
        super().__init__()
        squeezed = num_feat // reduction
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, squeezed, 1), nn.ReLU(True),
                                       nn.Conv2d(squeezed, num_feat, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class RCAB(nn.Module):
    """Residual channel attention block: conv ─ ReLU ─ conv ─ channel attention, plus the identity."""

    def __init__(self, num_feat: int, reduction: int) -> None:
        super().__init__()
        self.rcab = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.ReLU(True),
                                  nn.Conv2d(num_feat, num_feat, 3, 1, 1), ChannelAttention(num_feat, reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.rcab(x)


class ResidualGroup(nn.Module):
    """num_block RCABs and a 3×3 conv, plus the identity."""

    def __init__(self, num_feat: int, num_block: int, reduction: int) -> None:
        super().__init__()
        self.residual_group = nn.Sequential(*(RCAB(num_feat, reduction) for _ in range(num_block)))
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.residual_group(x))


class RCAN(MeanShiftSR):
    """RCAN. Input (N, C, H, W) in [0, 1] → (N, C_out, H·scale, W·scale); `scale` ∈ {2, 3, 4, 8}."""

    arch = "rcan"

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_group: int = 10,
        num_block: int = 20,
        reduction: int = 16,
        img_range: float = 255.0,
        rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        rgb_mean = mean_per_channel("RCAN", rgb_mean, num_in_ch, num_out_ch)
        if not 1 <= reduction <= num_feat:
            raise ValueError(f"RCAN reduction must be between 1 and num_feat={num_feat} (the attention squeezes "
                             f"num_feat // reduction channels), got {reduction}")
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat,
                           num_group=num_group, num_block=num_block, reduction=reduction, img_range=img_range,
                           rgb_mean=rgb_mean)
        self._frame("RCAN", lambda: nn.Sequential(
            *(ResidualGroup(num_feat, num_block, reduction) for _ in range(num_group))),
            num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat, img_range=img_range,
            rgb_mean=rgb_mean)


# Hyper-parameters from shapes, on our key names:
#
#   conv_first                                      (nf, in, 3, 3)
#   body.{g}.residual_group.{0..nb−1}.rcab.0        (nf, nf, 3, 3)      g in 0..ng−1 (and rcab.2)
#   body.0.residual_group.0.rcab.3.attention.1      (nf // r, nf, 1, 1) the squeeze conv gives the reduction r
#   body.{0..ng−1}.conv                             (nf, nf, 3, 3)
#   conv_after_body, upsample.{0, 2, …}, conv_last  as EDSR's
# img_range and rgb_mean are not in the shapes: the defaults, or what a layout or our metadata adds.


def rcan_hparams(sd: StateDict) -> dict[str, Any]:
    """RCAN's hyper-parameters read from the shapes of its tensors (our key names)."""
    num_feat, in_ch = conv_channels(sd, "conv_first.weight")
    squeezed = conv_channels(sd, "body.0.residual_group.0.rcab.3.attention.1.weight")[0]  # the attention's nf // r
    reduction = num_feat // squeezed
    if num_feat // reduction != squeezed:
        raise FormatError(f"RCAN channel attention squeezes {num_feat} features to {squeezed}: not "
                          f"num_feat // reduction for any integer reduction")
    return dict(num_in_ch=in_ch, num_out_ch=conv_channels(sd, "conv_last.weight")[0],
                scale=upsample_scale(sd, num_feat, "RCAN"), num_feat=num_feat,
                num_group=count(sd, r"body\.(\d+)\.conv\.weight"),
                num_block=count(sd, r"body\.0\.residual_group\.(\d+)\.rcab\.0\.weight"), reduction=reduction)
