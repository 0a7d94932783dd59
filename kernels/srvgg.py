"""SRVGGNetCompact (Real-ESRGAN's compact generator) from the fused kernels: the activation in each conv's epilogue,
and the pixel shuffle and the nearest-upsampled input in the last conv's.

    plan = FusedSRVGG(net, dtype=torch.float16, device="cuda", gan_net=gan)
    y = plan(x)            # (N, C, H, W) float → (N, C, H·s, W·s) float32
    plan.set_alpha(0.8)    # one lerp kernel over the flat parameter buffer

The network is 2 + num_conv 3×3 convs at the input's resolution; the plan is one launch per conv. Buffers per input
tile shape (one arena, `packing.FusedPlan`; NHWC, the plan's dtype): the input x, two feature buffers of nf
channels that the body's convs ping-pong between, and out (N, H·s, W·s, C). The activation (PReLU with one slope per
channel, ReLU, or LeakyReLU 0.1) is the conv's epilogue activation. The last conv (nf → C·s²) stores its output
pixel-shuffled and adds x read at its own low-resolution pixel (`res1_lowres`): every output pixel
(h·s + i, w·s + j) gets x(h, w), the nearest ×s upsampling, which is never made.
"""

from __future__ import annotations

import torch

from engine.models.srvgg import LEAKY_SLOPE, SRVGGNetCompact

from .conv import conv3x3, conv_params
from .packing import Endpoints, FusedPlan

# the network's act_type → the conv epilogue's act
_ACTS = {"prelu": "prelu", "relu": "relu", "leakyrelu": "lrelu"}


def _params(net: SRVGGNetCompact, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """name → packed tensor: `body.{2k}.weight` (9·cin, cout) and `.bias` per conv, `body.{2k+1}.weight` (nf,) per
    PReLU; packed from float64, then cast to `dtype`."""
    out: dict[str, torch.Tensor] = {}
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            out.update(conv_params(name, m, dtype))
        elif isinstance(m, torch.nn.PReLU):
            out[f"{name}.weight"] = m.weight.detach().to(dtype)
    return out


class FusedSRVGG(FusedPlan):
    """An `SRVGGNetCompact` run by the Triton kernels of `kernels.conv`. See the module docstring."""

    def __init__(self, net: SRVGGNetCompact, *, dtype: torch.dtype = torch.float16,
                 device: str | torch.device = "cuda", gan_net: SRVGGNetCompact | None = None) -> None:
        if not isinstance(net, SRVGGNetCompact):
            raise TypeError(f"FusedSRVGG runs an SRVGGNetCompact, got {type(net).__name__}")
        self.device, self.dtype = torch.device(device), dtype
        hp = net.hparams
        self.nf, self.num_conv, self.act_type = hp["num_feat"], hp["num_conv"], hp["act_type"]
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.multiple, self.x_dtype = 1, dtype
        self.params = Endpoints(_params(net, dtype), _params(gan_net, dtype) if gan_net is not None else None,
                                self.device, "SRVGGNetCompact")
        self.p = self.params.views
        self.alpha: float | None = 0.0 if gan_net is not None else None
        super().__init__()

    def _specs(self, n: int, h: int, w: int) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
        s = self.scale
        return {"feat": [((n, h, w, self.nf), self.dtype) for _ in range(2)],
                "out": [((n, h * s, w * s, self.out_channels), self.dtype)]}

    def launches(self) -> int:
        """Conv launches per forward: the first conv, num_conv body convs, the last conv (and two layout conversions
        around them, `FusedPlan.forward`)."""
        return 1 + self.num_conv + 1

    def _act(self, index: int) -> dict[str, object]:
        """The epilogue activation after conv body.{index}: act and slope keywords of `conv3x3`."""
        act = _ACTS[self.act_type]
        if act == "prelu":
            return {"act": act, "slope": self.p[f"body.{index + 1}.weight"]}
        return {"act": act, "slope": LEAKY_SLOPE if act == "lrelu" else 0.0}

    def _forward(self, buf: dict[str, list[torch.Tensor]]) -> None:
        x, feat, out = buf["x"][0], buf["feat"], buf["out"][0]
        p, nf = self.p, self.nf
        conv3x3(x, p["body.0.weight"], p["body.0.bias"], feat[0], cin=self.in_channels, cout=nf, **self._act(0))
        src = 0
        for k in range(1, self.num_conv + 1):
            i = 2 * k
            conv3x3(feat[src], p[f"body.{i}.weight"], p[f"body.{i}.bias"], feat[1 - src], cin=nf, cout=nf,
                    **self._act(i))
            src = 1 - src
        last = 2 * self.num_conv + 2
        conv3x3(feat[src], p[f"body.{last}.weight"], p[f"body.{last}.bias"], out, cin=nf,
                cout=self.out_channels * self.scale**2, shuffle=self.scale, res1=x, res1_lowres=True, res1_scale=1.0)
