"""The PyTorch backend: a reference network run eagerly (or through torch.compile) by PyTorch, on the CPU or CUDA.

    backend = TorchBackend(net, device="cuda", dtype="fp16", gan_net=gan)
    backend.set_alpha(0.8)                       # θ = 0.2·θ_psnr + 0.8·θ_gan, in place
    out = engine.infer(backend, image)

It is the reference every other backend is verified against, and the one that runs any architecture.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch

from .. import models
from ..machine import cpu_has_bf16
from .registry import BackendInfo, BenchRow, register

log = logging.getLogger("engine")


class TorchBackend:
    """A reference network run by PyTorch: CPU (fp32, bf16) or CUDA (fp16, bf16, fp32, channels_last).

    With `gan_net` (the GAN fine-tune of `net`), `set_alpha(α)` rewrites the live weights in place as
    (1 − α)·θ_net + α·θ_gan (network interpolation, no rebuild). fp16 outputs that are not finite (overflow) are
    recomputed in fp32 with a warning, never returned black. `compile=True` runs the network through
    `torch.compile` (compiled on the first call of each input shape; `set_alpha` still writes the live weights, which
    the compiled graph reads as inputs).
    """

    def __init__(self, net: models.SRNet, *, device: str | torch.device = "cpu", dtype: str = "fp32",
                 channels_last: bool = False, gan_net: models.SRNet | None = None, compile: bool = False) -> None:
        self.device = torch.device(device)
        if dtype not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")
        if dtype == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 inference needs a CUDA device; use bf16 or fp32 on the CPU")
        if dtype == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            log.warning("this CPU has no bf16 instructions (avx512_bf16, amx_bf16): PyTorch emulates bf16 here, "
                        "tens of times slower than fp32; use fp32 (ONNX Runtime, the CPU default)")
        if gan_net is not None:
            models.registry.require_same_network(net, gan_net)
        self.net = net.eval().to(self.device)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.multiple = net.input_multiple
        self._endpoints = None
        if gan_net is not None:
            self._endpoints = ({k: v.detach().clone() for k, v in net.state_dict().items()},
                               {k: v.detach().to(self.device) for k, v in gan_net.state_dict().items()})
        self.alpha: float | None = 0.0 if gan_net is not None else None
        self._call: Any = torch.compile(self.net) if compile else self.net
        self._warned_overflow = False
        self._bpp: float | None = None

    def set_alpha(self, alpha: float) -> None:
        """Blend the live weights in place: θ = (1 − alpha)·θ_psnr + alpha·θ_gan."""
        if self._endpoints is None:
            raise ValueError("alpha needs the GAN weights of this network (--gan-weights / gan_net=)")
        blended = models.interpolate(self._endpoints[0], self._endpoints[1], alpha)
        with torch.no_grad():
            for key, t in self.net.state_dict().items():
                t.copy_(blended[key])
        self.alpha = float(alpha)

    def _forward(self, x: torch.Tensor, dtype: str) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        if dtype == "fp32":
            return self._call(x).float()
        amp = torch.float16 if dtype == "fp16" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=amp):
            return self._call(x).float()

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        out = self._forward(batch, self.dtype)
        if self.dtype == "fp16" and not torch.isfinite(out).all():
            if not self._warned_overflow:
                log.warning("fp16 overflow (non-finite output): recomputing in fp32; use --bf16 or --fp32 to avoid "
                            "the double work")
                self._warned_overflow = True
            out = self._forward(batch, "fp32")
        return out

    @torch.inference_mode()
    def bytes_per_pixel(self) -> float:
        """Peak activation bytes per input pixel, measured on a probe by the largest module outputs."""
        if self._bpp is None:
            side = 16 * self.multiple
            sizes: list[int] = []
            hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel()) if torch.is_tensor(o) else None)
                     for m in self.net.modules()]
            try:
                self.net(torch.zeros(1, self.in_channels, side, side, device=self.device))
            finally:
                for h in hooks:
                    h.remove()
            element = 2 if self.dtype in ("fp16", "bf16") else 4
            # the largest output, its input and a concat/workspace of the same size live at once
            self._bpp = 3 * max(sizes) * element / (side * side)
        return self._bpp


def from_network(net: models.SRNet, *, gan_net: models.SRNet | None = None, precision: str = "fp32",
                 device: str | torch.device = "cpu", threads: int = 0, calibration: Any = None,
                 **options: Any) -> TorchBackend:
    """The registry's constructor: `TorchBackend(net, ...)` (`threads` is PyTorch's own setting, left as it is;
    no precision here needs `calibration`)."""
    return TorchBackend(net, device=device, dtype=precision, gan_net=gan_net, **options)


def _no_fp16_on_cpu(device: torch.device) -> str | None:
    if device.type != "cuda":
        return ("PyTorch has no fast fp16 convolutions on the CPU (TorchBackend refuses fp16 there); bf16 is the "
                "CPU's half precision")
    return None


def _no_bf16_on_this_cpu(device: torch.device) -> str | None:
    if device.type == "cpu" and not cpu_has_bf16():
        return ("this CPU has no bf16 instructions (avx512_bf16, amx_bf16): PyTorch emulates bf16 here, tens of times "
                "slower than fp32")
    return None


def _compile_unavailable(device: torch.device) -> str | None:
    if device.type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None:
        return "torch.compile on the CPU needs a C++ compiler (g++ not found)"
    return None


register(BackendInfo(
    name="torch", label="PyTorch", precisions=("fp32", "fp16", "bf16"), devices=("cuda", "cpu"),
    unavailable=lambda: None, from_network=from_network,
    bench=(BenchRow("torch-fp32", "PyTorch eager fp32", "fp32"),
           BenchRow("torch-fp16", "PyTorch eager fp16", "fp16", unavailable=_no_fp16_on_cpu),
           BenchRow("torch-bf16", "PyTorch eager bf16", "bf16", unavailable=_no_bf16_on_this_cpu),
           BenchRow("torch-channels-last", "PyTorch eager channels_last", None, {"channels_last": True}),
           BenchRow("torch-compile", "torch.compile", None, {"compile": True}, _compile_unavailable)),
))
