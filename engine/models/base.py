"""What every generator of this package carries, so that loaders, savers and engines need nothing else."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn


class SRNet(nn.Module):
    """A super-resolution generator: (N, in_channels, H, W) → (N, out_channels, H·scale, W·scale).

    `hparams` are the constructor's keyword arguments: `type(net)(**net.hparams)` rebuilds it (for a
    `Cascade`, `build("cascade", net.hparams)`).
    """

    arch: ClassVar[str]
    hparams: dict[str, Any]
    scale: int
    in_channels: int
    out_channels: int

    @property
    def input_multiple(self) -> int:
        """Height and width of an input must be multiples of this (1 for most networks; a pixel-unshuffle ×2/×1
        RRDBNet: 2/4; a cascade: what every stage needs of its input, carried back through the earlier scales)."""
        return 1

    def _set_hparams(self, **hparams: Any) -> None:
        """Record the constructor's keyword arguments; `scale`, `num_in_ch` and `num_out_ch` are among them."""
        self.hparams = hparams
        self.scale, self.in_channels, self.out_channels = hparams["scale"], hparams["num_in_ch"], hparams["num_out_ch"]
