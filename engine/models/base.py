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
