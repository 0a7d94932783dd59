"""Multiply-adds counted from the model (engine.models.flops) against the closed form of the architecture."""

from __future__ import annotations

import pytest
import torch

import engine.models as M
from engine.models.flops import count_macs, macs_per_pixel


def rrdbnet_macs_per_pixel(in_ch: int, out_ch: int, nf: int, gc: int, blocks: int, scale: int) -> int:
    """The closed form for a ×4 RRDBNet (no unshuffle): conv_first, 3 RDBs of 5 convs per block, conv_body, two
    nearest ×2 + 3×3 upconvs, conv_hr and conv_last at 16× the pixels."""
    assert scale == 4
    rdb = 9 * sum((nf + j * gc) * (gc if j < 4 else nf) for j in range(5))
    return 9 * in_ch * nf + 3 * blocks * rdb + 9 * nf * nf + 9 * nf * nf * (4 + 16) + 16 * 9 * nf * (nf + out_ch)


def test_rrdb23_counts_17926848_macs_per_input_pixel() -> None:
    net = M.create("rrdb23").eval()
    assert macs_per_pixel(net) == 17_926_848 == rrdbnet_macs_per_pixel(3, 3, 64, 32, 23, 4)


@pytest.mark.parametrize("side", [8, 12, 20])
def test_the_count_follows_the_model_and_not_the_probe(side: int) -> None:
    net = M.create("rrdb6", num_block=2, num_feat=16, num_grow_ch=8).eval()
    assert macs_per_pixel(net, side) == rrdbnet_macs_per_pixel(3, 3, 16, 8, 2, 4)


def test_groups_and_linear_layers_are_counted() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, groups=2), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 5 * 5, 10))
    assert count_macs(net, torch.zeros(1, 4, 5, 5)) == 8 * 25 * 2 * 9 + 10 * 200
