"""SRResNet (SRGAN's generator) from the fused kernels: batch norm, PReLU and the pixel shuffle in the epilogues.

    plan = FusedSRResNet(net, dtype=torch.float16, device="cuda", gan_net=gan)
    y = plan(x)            # (N, C, H, W) float → (N, C_out, H·s, W·s) float32
    plan.set_alpha(0.8)    # one lerp kernel over the flat parameter buffer

Batch norm stays as its four raw parameters (gamma, beta, running mean, running var) applied in the conv epilogue,
not folded into the weights: folding is not linear in the parameters, so a folded engine could not blend α by a
plain lerp. PReLU's single slope is stored once per channel. Buffers per input tile shape (one arena,
`packing.FusedPlan`; NHWC, the plan's dtype):
feat (conv_first, kept for the long skip), body and tmp (the residual blocks: conv1 → tmp, conv2 + x → body in place),
one buffer per upsampling stage, and out. conv_body's epilogue adds feat; each upsampling conv stores shuffled.
"""

from __future__ import annotations

import torch

from engine.models.srresnet import SRResNet

from .conv import conv2d, conv_params
from .packing import Endpoints, FusedPlan


def _params(net: SRResNet, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """name → packed tensor: conv weights (k²·cin, cout), biases, batch norms (4, C), PReLU slopes (C,)."""
    nf = net.hparams["num_feat"]
    out: dict[str, torch.Tensor] = {}
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            out.update(conv_params(name, m, dtype))
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            out[name] = torch.stack([m.weight.detach(), m.bias.detach(), m.running_mean, m.running_var]).to(dtype)
        elif isinstance(m, torch.nn.PReLU):
            out[name] = m.weight.detach().expand(nf).to(dtype)
    return out


class FusedSRResNet(FusedPlan):
    """An `SRResNet` run by the Triton kernels of `kernels.conv`. See the module docstring."""

    def __init__(self, net: SRResNet, *, dtype: torch.dtype = torch.float16, device: str | torch.device = "cuda",
                 gan_net: SRResNet | None = None) -> None:
        if not isinstance(net, SRResNet):
            raise TypeError(f"FusedSRResNet runs an SRResNet, got {type(net).__name__}")
        if net.training:
            raise ValueError("the network is in training mode (batch norm would use batch statistics): call .eval()")
        self.device, self.dtype = torch.device(device), dtype
        self.nf, self.num_block = net.hparams["num_feat"], net.hparams["num_block"]
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.multiple, self.x_dtype = 1, dtype
        self.factors: list[int] = [int(m.upscale_factor) for m in net.upsample.modules()
                                   if isinstance(m, torch.nn.PixelShuffle)]
        self.eps = {name: m.eps for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        self.params = Endpoints(_params(net, dtype), _params(gan_net.eval(), dtype) if gan_net is not None else None,
                                self.device, "SRResNet")
        self.p = self.params.views
        self.alpha: float | None = 0.0 if gan_net is not None else None
        super().__init__()

    def _specs(self, n: int, h: int, w: int) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
        def spec(s: int, c: int) -> tuple[tuple[int, ...], torch.dtype]:
            return (n, h * s, w * s, c), self.dtype

        ups, s = [], 1
        for f in self.factors:
            s *= f
            ups.append(spec(s, self.nf))
        return {"feat": [spec(1, self.nf)], "body": [spec(1, self.nf)], "tmp": [spec(1, self.nf)], "up": ups,
                "out": [spec(s, self.out_channels)]}

    def launches(self) -> int:
        return 1 + 2 * self.num_block + 1 + len(self.factors) + 1

    def _forward(self, buf: dict[str, list[torch.Tensor]]) -> None:
        x = buf["x"][0]
        cin = x.shape[3]
        p, nf = self.p, self.nf
        feat, body, tmp = buf["feat"][0], buf["body"][0], buf["tmp"][0]
        conv2d(x, p["conv_first.weight"], p["conv_first.bias"], feat, cin=cin, cout=nf, ksize=9, act="prelu",
               slope=p["prelu_first"])
        src = feat
        for i in range(self.num_block):
            q = f"body.{i}"
            conv2d(src, p[f"{q}.conv1.weight"], p[f"{q}.conv1.bias"], tmp, cin=nf, cout=nf, bn=p[f"{q}.bn1"],
                   bn_eps=self.eps[f"{q}.bn1"], act="prelu", slope=p[f"{q}.prelu"])
            conv2d(tmp, p[f"{q}.conv2.weight"], p[f"{q}.conv2.bias"], body, cin=nf, cout=nf, bn=p[f"{q}.bn2"],
                   bn_eps=self.eps[f"{q}.bn2"], res1=src)  # body = src + bn2(conv2(tmp)); src is body after block 0
            src = body
        conv2d(src, p["conv_body.weight"], p["conv_body.bias"], tmp, cin=nf, cout=nf, bn=p["bn_body"],
               bn_eps=self.eps["bn_body"], res1=feat)
        cur, res = tmp, 1
        for k, f in enumerate(self.factors):
            q = f"upsample.{k}"
            conv2d(cur, p[f"{q}.conv.weight"], p[f"{q}.conv.bias"], buf["up"][k], cin=nf, cout=nf * f * f,
                   shuffle=f, act="prelu", slope=p[f"{q}.prelu"], res=res)
            cur, res = buf["up"][k], res * f
        out = buf["out"][0]
        conv2d(cur, p["conv_last.weight"], p["conv_last.bias"], out, cin=nf, cout=self.out_channels, ksize=9,
               res=res)
