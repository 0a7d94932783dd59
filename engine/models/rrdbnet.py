"""RRDBNet, the ESRGAN generator, in BasicSR's layout (BasicSR / Real-ESRGAN key names).

    x ─(pixel_unshuffle ÷4/÷2 for BasicSR ×1/×2)─ conv_first ─┬─ body: num_block × RRDB ─ conv_body ─(+)─
                                                              └──────────────── long skip ─────────────┘
    ─ num_upsample × [nearest ×2 ─ conv_upK ─ LeakyReLU(0.2)] ─ conv_hr ─ LeakyReLU(0.2) ─ conv_last ─ y

    RRDB(x)  = x + 0.2 · rdb3(rdb2(rdb1(x)))
    RDB(x)   = x + 0.2 · conv5([x, x1, x2, x3, x4]),  x_k = LeakyReLU(0.2)(conv_k([x, x1, …, x_{k−1}]))

All convs are 3×3, stride 1, padding 1, with bias. No batch norm.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import SRNet
from .shapes import FormatError, StateDict, conv_channels, count


def _scaled_kaiming_(modules: list[nn.Module], scale: float) -> None:
    """ESRGAN's initialisation: kaiming-normal weights times `scale` (0.1 in residual blocks), zero bias."""
    for m in modules:
        for conv in m.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight)
                conv.weight.data.mul_(scale)
                if conv.bias is not None:
                    conv.bias.data.zero_()


class ResidualDenseBlock(nn.Module):
    """Five 3×3 convs with dense connections; conv_k reads nf + (k−1)·gc channels."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        nf, gc = num_feat, num_grow_ch
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        _scaled_kaiming_([self], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + 0.2 * x5


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs and an outer residual scaled by 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(SRNet):
    """ESRGAN generator. Input (N, num_in_ch, H, W) in [0, 1] → output (N, num_out_ch, H·scale, W·scale).

    `scale` ∈ {1, 2, 4, 8}. With `pixel_unshuffle=True` (BasicSR / Real-ESRGAN) the ×1 and ×2 networks are the
    ×4 network behind a pixel-unshuffle by 4 or 2, so conv_first reads 16× or 4× the input channels and H, W
    must be multiples of 4 or 2. With `pixel_unshuffle=False` (ESRGAN/BSRGAN ×2 and ×1 checkpoints) they
    simply have one or zero upsampling stages.
    """

    arch = "rrdbnet"

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        pixel_unshuffle: bool = True,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4, 8):
            raise ValueError(f"RRDBNet scale must be 1, 2, 4 or 8, got {scale}")
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat,
                           num_block=num_block, num_grow_ch=num_grow_ch, pixel_unshuffle=pixel_unshuffle)
        self.unshuffle = 4 // scale if (scale < 4 and pixel_unshuffle) else 1
        self.num_upsample = int(math.log2(scale * self.unshuffle))

        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for k in range(1, self.num_upsample + 1):
            setattr(self, f"conv_up{k}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    @property
    def input_multiple(self) -> int:
        return self.unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            h, w = x.shape[-2:]
            if h % self.unshuffle or w % self.unshuffle:
                raise ValueError(
                    f"a ×{self.scale} RRDBNet pixel-unshuffles its input by {self.unshuffle}: height and width "
                    f"must be multiples of {self.unshuffle}, got {h}×{w}; pad the image, then crop the output")
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for k in range(1, self.num_upsample + 1):
            conv_up = getattr(self, f"conv_up{k}")
            feat = F.leaky_relu(conv_up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


# Hyper-parameters from shapes, on our key names:
#
#   conv_first            (nf, in·u², 3, 3)       u = 2 / 4 for BasicSR's pixel-unshuffle ×2 / ×1, else 1
#   body.{0..nb−1}.rdb{1,2,3}.conv{1..5}           conv1: (gc, nf, 3, 3)
#   conv_body             (nf, nf, 3, 3)
#   conv_up{1..n}         (nf, nf, 3, 3)          n nearest ×2 stages: scale 2ⁿ (÷u)
#   conv_hr, conv_last    (nf, nf, 3, 3), (out, nf, 3, 3)


def rrdbnet_hparams(sd: StateDict) -> dict[str, Any]:
    """RRDBNet's hyper-parameters read from the shapes of its tensors (our key names)."""
    num_feat, in_ch = conv_channels(sd, "conv_first.weight")
    out_ch = conv_channels(sd, "conv_last.weight")[0]
    num_upsample = count(sd, r"conv_up(\d+)\.weight", start=1)
    hp: dict[str, Any] = dict(
        num_feat=num_feat,
        num_block=count(sd, r"body\.(\d+)\.rdb1\.conv1\.weight"),
        num_grow_ch=conv_channels(sd, "body.0.rdb1.conv1.weight")[0],  # gc: conv1's output channels, never assumed
        num_out_ch=out_ch,
    )
    # BasicSR ×2 / ×1: the ×4 network behind pixel-unshuffle by 2 / 4, so conv_first reads 4× / 16× the
    # image channels (Real-ESRGAN x2plus: 12 = 4·3).
    if num_upsample == 2 and in_ch in (4 * out_ch, 16 * out_ch):
        unshuffle = 2 if in_ch == 4 * out_ch else 4
        return {**hp, "num_in_ch": in_ch // unshuffle**2, "scale": 4 // unshuffle, "pixel_unshuffle": True}
    if num_upsample > 3:
        raise FormatError(f"RRDBNet with {num_upsample} upsampling stages (×{2 ** num_upsample}) is not supported")
    return {**hp, "num_in_ch": in_ch, "scale": 2**num_upsample, "pixel_unshuffle": num_upsample >= 2}
