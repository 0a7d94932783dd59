"""A toy architecture and a toy backend, each added the way the README says one is added: one module (this one, for
both) and one registration each. Importing it registers both; tests/test_registry.py imports it in a fresh
process and checks they show up in engine.build, engine.load, engine.upscale and bench/run.py with no other edit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine import models
from engine.backends import BackendInfo, BenchRow, BuildRequest, Built, LoadRequest, register
from engine.models.registry import Arch, register_arch

# ---------------------------------------------------------------------------------------------------------
# the architecture: conv → ReLU → conv → pixel shuffle


class ToyNet(models.SRNet):
    """A two-conv upscaler. Args: num_in_ch, num_out_ch (3), num_feat (8), scale (2)."""

    arch = "toynet"

    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 8, scale: int = 2) -> None:
        super().__init__()
        self._set_hparams(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, scale=scale)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv_last(torch.relu(self.conv_first(x))))


register_arch(Arch("toynet", ToyNet, detect=None))


# ---------------------------------------------------------------------------------------------------------
# the backend: the network in PyTorch fp32 on the CPU, its engine folder one checkpoint


class ToyBackend:
    def __init__(self, net: models.SRNet, gan: models.SRNet | None = None) -> None:
        self.net, self.device = net.eval(), torch.device("cpu")
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.multiple = net.input_multiple
        self._endpoints = (net.state_dict(), gan.state_dict()) if gan is not None else None
        self.alpha: float | None = 0.0 if gan is not None else None

    @torch.no_grad()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch.float()).float()

    def bytes_per_pixel(self) -> float:
        return 64.0

    def set_alpha(self, alpha: float) -> float:
        if self._endpoints is None:
            raise ValueError("no GAN endpoint")
        self.net.load_state_dict(models.interpolate(*self._endpoints, alpha))
        self.alpha = alpha
        return 0.0


def build(req: BuildRequest) -> Built:
    net = req.blended
    return Built(manifest={}, write={"toy.safetensors": lambda path: models.save(net, path)})


def load(req: LoadRequest) -> ToyBackend:
    net, _ = models.load(req.folder / "toy.safetensors")
    return ToyBackend(net)


def from_network(net: models.SRNet, *, gan_net: models.SRNet | None = None, precision: str = "fp32",
                 device: Any = "cpu", threads: int = 0, calibration: Any = None) -> ToyBackend:
    return ToyBackend(net, gan_net)


register(BackendInfo(
    name="toy", label="Toy (PyTorch fp32, CPU)", precisions=("fp32",), devices=("cpu",), unavailable=lambda: None,
    files=(frozenset({"toy.safetensors"}), frozenset()), build=build, load=load, from_network=from_network,
    bench=(BenchRow("toy-fp32", "Toy fp32", "fp32"),),
))
