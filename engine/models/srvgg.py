"""SRVGGNetCompact (Real-ESRGAN's compact VGG-style generator, realesr-animevideov3 / realesr-general-x4v3) in
Real-ESRGAN's own layout: every layer sits in one `body` list, all convs 3×3, stride 1, padding 1, and the only
upsampling is the pixel shuffle after the last conv, plus the nearest-upsampled input as a residual base.

    x ─ body.0 conv in→nf ─ act ─ num_conv × [conv nf→nf ─ act] ─ conv nf→out·s² ─ PixelShuffle(s) ─(+)─ y
    └──────────────────────────────── nearest ×s ──────────────────────────────────────────────────┘
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import SRNet
from .shapes import FormatError, StateDict, conv_channels, indices

ACT_TYPES = ("prelu", "relu", "leakyrelu")
LEAKY_SLOPE = 0.1  # Real-ESRGAN's "leakyrelu"
NO_PRELU_ACT = "relu"  # what a state dict without PReLU weights is read as (see srvgg_hparams)


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU()
    return nn.LeakyReLU(LEAKY_SLOPE)


class SRVGGNetCompact(SRNet):
    """A compact VGG-style generator that works at the input's resolution and upsamples only in its last layer.
    Input (N, C, H, W) in [0, 1] → (N, C, H·scale, W·scale).

    Args:
        num_in_ch: channels of the input. Default: 3.
        num_out_ch: channels of the output; must equal num_in_ch (the nearest-upsampled input is added to the
            output). Default: 3.
        num_feat: channels of the features. Default: 64.
        num_conv: number of nf→nf convs in the body (after the first conv, before the last). Default: 16.
        scale: upsampling factor, the pixel shuffle's. Default: 4.
        act_type: the activation after every conv but the last: "prelu" (one slope per channel, a weight),
            "relu", or "leakyrelu" (slope 0.1). Default: "prelu".
    """

    arch = "srvgg"

    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 scale: int = 4, act_type: str = "prelu") -> None:
        super().__init__()
        if act_type not in ACT_TYPES:
            raise ValueError(f"SRVGGNetCompact act_type must be one of {', '.join(ACT_TYPES)}, got {act_type!r}")
        if num_out_ch != num_in_ch:
            raise ValueError(f"SRVGGNetCompact adds the upsampled input to its output: num_out_ch ({num_out_ch}) "
                             f"must equal num_in_ch ({num_in_ch})")
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_conv=num_conv,
                          scale=scale, act_type=act_type)
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(self.body(x), self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


# Hyper-parameters from shapes, on Real-ESRGAN's key names (which are ours), n = num_conv:
#
#   body.0.weight            (nf, in, 3, 3)      first conv
#   body.1.weight            (nf,)               its PReLU (only when act_type is "prelu")
#   body.{2k}.weight         (nf, nf, 3, 3)      k = 1 … n
#   body.{2k+1}.weight       (nf,)               their PReLUs (prelu only)
#   body.{2n+2}.weight       (in·s², nf, 3, 3)   last conv, then PixelShuffle(s)
#
# Convs sit at the even indices whether or not the activations have weights (ReLU and LeakyReLU keep their place
# in the list without tensors). The output has the input's channels (the model adds the upsampled input), so the
# last conv's channels over num_in_ch are s², exactly. ReLU and LeakyReLU leave no tensor: a state dict without
# PReLU weights is read as "relu" (NO_PRELU_ACT); our safetensors keep the act_type in their metadata.


def srvgg_hparams(sd: StateDict) -> dict[str, Any]:
    """SRVGGNetCompact's hyper-parameters read from the shapes of its tensors (Real-ESRGAN's key names)."""
    num_feat, num_in_ch = conv_channels(sd, "body.0.weight")
    found = indices(sd, r"body\.(\d+)\.weight")
    last = found[-1]
    if last % 2 or last < 2:
        raise FormatError(f"SRVGGNetCompact's last conv is at an even body index from 2 on; the last weight is "
                          f"body.{last}")
    convs, acts = [i for i in found if i % 2 == 0], [i for i in found if i % 2]
    if convs != list(range(0, last + 1, 2)):
        raise FormatError(f"SRVGGNetCompact convs at body indices {convs}; expected 0, 2, …, {last}")
    if acts and acts != list(range(1, last, 2)):
        raise FormatError(f"SRVGGNetCompact PReLU weights at body indices {acts}; expected one after every conv but "
                          f"the last (1, 3, …, {last - 1})")
    for i in acts:
        if tuple(sd[f"body.{i}.weight"].shape) != (num_feat,):
            raise FormatError(f"tensor 'body.{i}.weight' has shape {list(sd[f'body.{i}.weight'].shape)}; a PReLU "
                              f"of {num_feat} features has shape [{num_feat}]")
    out, _ = conv_channels(sd, f"body.{last}.weight")
    scale = math.isqrt(out // num_in_ch)
    if out % num_in_ch or scale * scale * num_in_ch != out:
        raise FormatError(f"SRVGGNetCompact's last conv body.{last} gives {out} channels for a {num_in_ch}-channel "
                          f"input: not num_in_ch·scale² (the output has the input's channels)")
    return dict(num_in_ch=num_in_ch, num_out_ch=num_in_ch, num_feat=num_feat, num_conv=last // 2 - 1, scale=scale,
                act_type="prelu" if acts else NO_PRELU_ACT)
