"""A chain of generators run one after another, e.g. the ×16 perceptual-extreme setting: two ×4 RRDBNets."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import SRNet


class Cascade(SRNet):
    """`stages[0]` → `stages[1]` → …; the scale is the product of the stages' scales.

    Each stage keeps its own keys under `stages.{i}.`; `hparams["stages"]` lists each stage's arch and
    hyper-parameters, so a saved cascade rebuilds without other information.
    """

    arch = "cascade"

    def __init__(self, *stages: SRNet) -> None:
        super().__init__()
        if len(stages) < 2:
            raise ValueError(f"a Cascade needs at least two stages, got {len(stages)}")
        for prev, nxt in zip(stages, stages[1:], strict=False):
            if prev.out_channels != nxt.in_channels:
                raise ValueError(f"cascade stages do not connect: a stage gives {prev.out_channels} channels, "
                                 f"the next reads {nxt.in_channels}")
        self.stages = nn.ModuleList(stages)
        self.hparams = {"stages": [{"arch": s.arch, "hparams": dict(s.hparams)} for s in stages]}
        self.scale = math.prod(s.scale for s in stages)
        self.in_channels, self.out_channels = stages[0].in_channels, stages[-1].out_channels

    @property
    def input_multiple(self) -> int:
        """The least side multiple m such that every stage's input is a multiple of what that stage needs: stage k
        sees the input upscaled by s = the product of the earlier stages' scales, so it asks need / gcd(need, s)."""
        m, s = 1, 1
        stage: SRNet
        for stage in self.stages:  # type: ignore[assignment]  # an nn.ModuleList of SRNets
            need = stage.input_multiple
            m = math.lcm(m, need // math.gcd(need, s))
            s *= stage.scale
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x
