"""SRResNet generators: SRGAN's (with batch norm and PReLU) and BasicSR's BN-free MSRResNet.

SRResNet (SRGAN, Ledig et al. 2017), our layout in BasicSR's naming style:

    x ─ conv_first 9×9 ─ PReLU ─┬─ body: num_block × [conv1 ─ bn1 ─ PReLU ─ conv2 ─ bn2 (+ skip)] ─┐
                                │                                             conv_body ─ bn_body ─(+)─
                                └──────────────────────── long skip ─────────────────────────────────┘
    ─ upsample: per ×2 (or one ×3) stage [conv nf→nf·s² ─ PixelShuffle(s) ─ PReLU] ─ conv_last 9×9 ─ y

MSRResNet (BasicSR `MSRResNet`, key names identical to BasicSR):

    x ─ conv_first ─ LReLU(0.1) ─ body: num_block × [conv1 ─ ReLU ─ conv2 (+ skip)]
    ─ upconv1 ─ PixelShuffle ─ LReLU(0.1)
    ─ (×4: upconv2 ─ PixelShuffle(2) ─ LReLU(0.1)) ─ conv_hr ─ LReLU(0.1) ─ conv_last ─(+ bilinear-upsampled x)─ y
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import SRNet
from .rrdbnet import _scaled_kaiming_
from .shapes import StateDict, conv_channels, count, shuffle_factor


def _stage_factors(scale: int, arch: str) -> list[int]:
    """Pixel-shuffle factors of the upsampling stages: ×2 per stage for powers of two, one ×3 stage for 3."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    raise ValueError(f"{arch} scale must be 2, 3, 4 or 8, got {scale}")


class SRGANBlock(nn.Module):
    """conv ─ BN ─ PReLU ─ conv ─ BN, plus the identity."""

    def __init__(self, num_feat: int, prelu_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(num_feat)
        self.prelu = nn.PReLU(prelu_channels)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class UpsampleBlock(nn.Module):
    """conv nf → nf·s², PixelShuffle(s), PReLU."""

    def __init__(self, num_feat: int, factor: int, prelu_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_feat, num_feat * factor * factor, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(factor)
        self.prelu = nn.PReLU(prelu_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.shuffle(self.conv(x)))


class SRResNet(SRNet):
    """SRGAN's generator. Input (N, C, H, W) in [0, 1] → (N, C_out, H·scale, W·scale), no output activation.

    `prelu_per_channel` chooses PReLU with one slope per channel instead of PyTorch's default single slope.
    Call `.eval()` for inference (batch norm uses its running statistics then).
    """

    arch = "srresnet"

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 16,
        prelu_per_channel: bool = False,
    ) -> None:
        super().__init__()
        factors = _stage_factors(scale, "SRResNet")
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat,
                           num_block=num_block, prelu_per_channel=prelu_per_channel)
        pc = num_feat if prelu_per_channel else 1
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 9, 1, 4)
        self.prelu_first = nn.PReLU(pc)
        self.body = nn.Sequential(*(SRGANBlock(num_feat, pc) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn_body = nn.BatchNorm2d(num_feat)
        self.upsample = nn.Sequential(*(UpsampleBlock(num_feat, f, pc) for f in factors))
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.prelu_first(self.conv_first(x))
        feat = feat + self.bn_body(self.conv_body(self.body(feat)))
        return self.conv_last(self.upsample(feat))



# SRResNet's hyper-parameters from shapes, on our key names:
#
#   conv_first            (nf, in, 9, 9)          prelu_first: (nf,) per channel or (1,)
#   body.{0..nb−1}.conv1  (nf, nf, 3, 3)          (with bn1, prelu, conv2, bn2)
#   upsample.{i}.conv     (nf·s², nf, 3, 3)       one stage per ×2 (or one ×3): scale = ∏ s
#   conv_last             (out, nf, 9, 9)


def srresnet_hparams(sd: StateDict) -> dict[str, Any]:
    """SRResNet's hyper-parameters read from the shapes of its tensors (our key names)."""
    num_feat, in_ch = conv_channels(sd, "conv_first.weight")
    stages = count(sd, r"upsample\.(\d+)\.conv\.weight")
    scale = math.prod(shuffle_factor(conv_channels(sd, f"upsample.{i}.conv.weight")[0], num_feat,
                                     f"upsample.{i}.conv") for i in range(stages))
    return dict(num_in_ch=in_ch, num_out_ch=conv_channels(sd, "conv_last.weight")[0], scale=scale,
                num_feat=num_feat, num_block=count(sd, r"body\.(\d+)\.conv1\.weight"),
                prelu_per_channel=sd["prelu_first.weight"].numel() > 1)

class ResidualBlockNoBN(nn.Module):
    """conv ─ ReLU ─ conv, scaled by `res_scale`, plus the identity (BasicSR's block of MSRResNet and EDSR)."""

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0, pytorch_init: bool = False) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        if not pytorch_init:
            _scaled_kaiming_([self], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x))) * self.res_scale


class MSRResNet(SRNet):
    """BasicSR's modified SRResNet (no BN, LeakyReLU 0.1, global bilinear skip); `scale` ∈ {2, 3, 4}."""

    arch = "msrresnet"

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 16,
    ) -> None:
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"MSRResNet scale must be 2, 3 or 4 (BasicSR's layout), got {scale}")
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat,
                           num_block=num_block)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat) for _ in range(num_block)))
        factor = 2 if scale == 4 else scale
        self.upconv1 = nn.Conv2d(num_feat, num_feat * factor * factor, 3, 1, 1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(factor)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        _scaled_kaiming_([self.conv_first, self.upconv1, self.conv_hr, self.conv_last], 0.1)
        if scale == 4:
            _scaled_kaiming_([self.upconv2], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.body(F.leaky_relu(self.conv_first(x), 0.1))
        feat = F.leaky_relu(self.pixel_shuffle(self.upconv1(feat)), 0.1)
        if self.scale == 4:
            feat = F.leaky_relu(self.pixel_shuffle(self.upconv2(feat)), 0.1)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.1))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


# MSRResNet's hyper-parameters from shapes, on our key names:
#
#   conv_first            (nf, in, 3, 3)
#   body.{0..nb−1}.conv1  (nf, nf, 3, 3)
#   upconv1               (nf·s², nf, 3, 3)       s = 2 or 3; an upconv2 (4·nf, nf, 3, 3) makes it ×4
#   conv_hr, conv_last    (nf, nf, 3, 3), (out, nf, 3, 3)


def msrresnet_hparams(sd: StateDict) -> dict[str, Any]:
    """MSRResNet's hyper-parameters read from the shapes of its tensors (our key names)."""
    num_feat, in_ch = conv_channels(sd, "conv_first.weight")
    if "upconv2.weight" in sd:
        scale = 4
    else:
        scale = shuffle_factor(conv_channels(sd, "upconv1.weight")[0], num_feat, "upconv1")
    return dict(num_in_ch=in_ch, num_out_ch=conv_channels(sd, "conv_last.weight")[0], scale=scale,
                num_feat=num_feat, num_block=count(sd, r"body\.(\d+)\.conv1\.weight"))
