"""Multiply-adds counted from a network itself: every Conv2d and Linear it runs on a probe input, so a benchmark's
TFLOP/s follows the model as it is built, with nothing hard-coded.

    macs_per_pixel(models.create("rrdb23"))      # 17,926,848 multiply-adds per input pixel

A conv counts output elements × (input channels / groups) × kernel area (the bias and activations are not
multiply-adds). Upsampling convs count as the network computes them (a 3×3 conv on the ×2 nearest-upsampled tensor),
not as a fused kernel might (`kernels.rrdbnet.fused_flops` counts the fused forms).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SRNet


def count_macs(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of `net(x)`, by forward hooks on its Conv2d and Linear modules."""
    total = 0

    def conv(m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear(m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return total


def macs_per_pixel(net: SRNet, side: int = 16) -> float:
    """Multiply-adds per input pixel: counted on a (1, C, side, side) probe (side rounded up to the network's input
    multiple) and divided by its pixels. Exact for fully convolutional networks."""
    multiple = net.input_multiple
    side = -(-side // multiple) * multiple
    param = next(net.parameters())
    x = torch.zeros(1, net.in_channels, side, side, dtype=param.dtype, device=param.device)
    return count_macs(net, x) / side**2
