"""RRDBNet from the fused kernels: the whole forward as a fixed list of conv launches over preallocated buffers.

    plan = FusedRRDBNet(net, dtype=torch.float16, device="cuda", gan_net=gan)
    y = plan(x)               # (N, C, H, W) float → (N, C_out, H·s, W·s) float32
    plan.set_alpha(0.8)       # one fused kernel rewrites the packed weights in place

Buffers per input tile shape, carved from one arena (`packing.FusedPlan`): the float32 NCHW input and output, the
pixel-unshuffled NHWC input x, and NHWC in the plan's dtype:
    ring[0..3]  (nf + 4·gc) channels each: an RDB's input x in channels [0, nf), conv_k's output in its gc slice
    trunk       nf: conv_body(body) + feat
    up[k]       nf at 2^k × the input size; hr: nf; out: out_ch
Each RDB is 5 launches and copies nothing: conv1..4 read the prefix of the RDB's buffer and write their slice, conv5
reads all nf + 4·gc channels and writes `x + 0.2·conv5` into the next RDB's prefix; the third RDB of an RRDB also
applies the RRDB's `x + 0.2·y` (res2). conv_first writes ring[0][:nf], which is never overwritten (the first RRDB
is the only one that reads ring[0]; later RRDBs cycle through ring[3], ring[1], ring[2], updating ring[3][:nf] in
place), so it is also the long skip that conv_body's epilogue adds. Upsampling is `upconv2x` (four 2×2 phase convs,
no ×2 tensor).

All packed weights of an endpoint live in one flat buffer (`kernels.packing.Endpoints`); `set_alpha` is one
`lerp_kernel` launch over it, so the live weights keep their addresses (a captured CUDA graph stays valid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.models.rrdbnet import RRDBNet

from .conv import conv3x3, fold_upconv_weight, pack_conv_weight, upconv2x
from .packing import Endpoints, FusedPlan


@dataclass
class _Layer:
    """One conv of the plan: its packed weight and bias are views into the live flat buffer."""

    weight: torch.Tensor
    bias: torch.Tensor


def pack_rrdbnet(net: RRDBNet, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`{conv}.weight` (packed; upconvs folded into phases) and `{conv}.bias` for every conv; float64 → dtype."""
    out = {}
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            assert module.bias is not None  # every conv of RRDBNet has a bias
            w = module.weight.detach().double()
            packed = fold_upconv_weight(w) if name.startswith("conv_up") else pack_conv_weight(w)
            out[f"{name}.weight"], out[f"{name}.bias"] = packed.to(dtype), module.bias.detach().to(dtype)
    return out


def rrdb_specs(n: int, h: int, w: int, *, nf: int, gc: int, num_upsample: int, out_channels: int,
               dtype: torch.dtype, ring_dtype: torch.dtype) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
    """The NHWC buffers of an RRDBNet plan for network input (n, h, w): four RDB buffers of nf + 4·gc channels in
    `ring_dtype`, then trunk, one per upsampling stage, hr and out in `dtype` (for `packing.carve`)."""
    def spec(s: int, c: int, dt: torch.dtype) -> tuple[tuple[int, ...], torch.dtype]:
        return (n, h * s, w * s, c), dt

    top = 2 ** num_upsample
    return {"ring": [spec(1, nf + 4 * gc, ring_dtype) for _ in range(4)], "trunk": [spec(1, nf, dtype)],
            "up": [spec(2 ** k, nf, dtype) for k in range(1, num_upsample + 1)],
            "hr": [spec(top, nf, dtype)], "out": [spec(top, out_channels, dtype)]}


class FusedRRDBNet(FusedPlan):
    """An `RRDBNet` run by the Triton kernels of `kernels.conv`. See the module docstring."""

    def __init__(self, net: RRDBNet, *, dtype: torch.dtype = torch.float16, device: str | torch.device = "cuda",
                 gan_net: RRDBNet | None = None) -> None:
        if not isinstance(net, RRDBNet):
            raise TypeError(f"FusedRRDBNet runs an RRDBNet, got {type(net).__name__}")
        self.device, self.dtype = torch.device(device), dtype
        hp = net.hparams
        self.nf, self.gc, self.num_block = hp["num_feat"], hp["num_grow_ch"], hp["num_block"]
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.unshuffle, self.num_upsample = net.unshuffle, net.num_upsample
        self.multiple, self.x_dtype = net.input_multiple, dtype
        self.params = Endpoints(pack_rrdbnet(net, dtype), pack_rrdbnet(gan_net, dtype) if gan_net is not None else None,
                                self.device, "RRDBNet")
        views = self.params.views
        self.layers = {name[: -len(".weight")]: _Layer(views[name], views[name[: -len(".weight")] + ".bias"])
                       for name in views if name.endswith(".weight")}
        self.alpha: float | None = 0.0 if gan_net is not None else None
        super().__init__()

    def _specs(self, n: int, h: int, w: int) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
        return rrdb_specs(n, h, w, nf=self.nf, gc=self.gc, num_upsample=self.num_upsample,
                          out_channels=self.out_channels, dtype=self.dtype, ring_dtype=self.dtype)

    def launches(self) -> int:
        """Conv launches per forward: conv_first, 15 per RRDB, conv_body, the upconvs, conv_hr, conv_last (and two
        layout conversions around them, `FusedPlan.forward`)."""
        return 1 + 15 * self.num_block + 1 + self.num_upsample + 2

    def _forward(self, buf: dict[str, list[torch.Tensor]]) -> None:
        x = buf["x"][0]
        cin = x.shape[3]
        L, nf, gc = self.layers, self.nf, self.gc
        ring, trunk = buf["ring"], buf["trunk"][0]
        conv3x3(x, L["conv_first"].weight, L["conv_first"].bias, ring[0], cin=cin, cout=nf)
        body = ring[0]
        for i in range(self.num_block):
            rrdb_in = body
            slots = (ring[0] if i == 0 else ring[3], ring[1], ring[2])
            nxt = ring[3]
            for k in range(3):
                rdb = slots[k]
                p = f"body.{i}.rdb{k + 1}"
                for j in range(4):
                    layer = L[f"{p}.conv{j + 1}"]
                    conv3x3(rdb, layer.weight, layer.bias, rdb, cin=nf + j * gc, cout=gc, y_channel=nf + j * gc,
                            act="lrelu", slope=0.2)
                layer = L[f"{p}.conv5"]
                target = slots[k + 1] if k < 2 else nxt
                if k < 2:  # x + 0.2·conv5 → the next RDB's prefix
                    conv3x3(rdb, layer.weight, layer.bias, target, cin=nf + 4 * gc, cout=nf,
                            res1=rdb[..., :nf], res1_scale=0.2)
                else:  # and the RRDB's x + 0.2·(that): into the next RRDB's input (in place for i ≥ 1)
                    conv3x3(rdb, layer.weight, layer.bias, target, cin=nf + 4 * gc, cout=nf,
                            res1=rdb[..., :nf], res1_scale=0.2, res2=rrdb_in[..., :nf], res2_scale=0.2)
            body = nxt
        conv3x3(body, L["conv_body"].weight, L["conv_body"].bias, trunk, cin=nf, cout=nf, res1=ring[0][..., :nf])
        feat = trunk
        for k in range(self.num_upsample):
            layer = L[f"conv_up{k + 1}"]
            up = buf["up"][k]
            upconv2x(feat, layer.weight, layer.bias, up, cin=nf, cout=nf, act="lrelu", slope=0.2, res=2**k)
            feat = up
        hr, out = buf["hr"][0], buf["out"][0]
        top = 2**self.num_upsample
        conv3x3(feat, L["conv_hr"].weight, L["conv_hr"].bias, hr, cin=nf, cout=nf, act="lrelu", slope=0.2, res=top)
        conv3x3(hr, L["conv_last"].weight, L["conv_last"].bias, out, cin=nf, cout=self.out_channels, res=top)

    def rdb_traffic(self, n: int, h: int, w: int, *, rrdb_last: bool = False) -> dict[str, int]:
        """Predicted for one RDB: launches and compulsory bytes (each input channel read once per pixel, each
        output written once; halo re-reads and weights not counted), and FLOPs. conv_k reads nf + (k − 1)·gc
        channels and writes gc; conv5 reads nf + 4·gc, the residual x (nf), and on an RRDB's third RDB also the
        RRDB's input (nf), and writes nf."""
        e = torch.finfo(self.dtype).bits // 8
        px, nf, gc = n * h * w, self.nf, self.gc
        reads = sum(nf + j * gc for j in range(5)) + nf * (2 if rrdb_last else 1)
        return {"launches": 5, "bytes_read": reads * px * e, "bytes_written": (4 * gc + nf) * px * e,
                "flops": 2 * px * 9 * sum((nf + j * gc) * (gc if j < 4 else nf) for j in range(5))}


def fused_flops(plan: FusedRRDBNet, n: int, h: int, w: int) -> float:
    """FLOPs of one forward as the kernels compute it (upconvs: 4 phases × 2×2 taps on the low-resolution grid)."""
    nf, px = plan.nf, n * h * w
    rdb = plan.rdb_traffic(n, h, w)["flops"]
    cin0 = plan.in_channels * plan.unshuffle ** 2
    total = 2 * px * 9 * cin0 * nf + 3 * plan.num_block * rdb + 2 * px * 9 * nf * nf
    for k in range(plan.num_upsample):
        total += 2 * px * 4 ** k * 16 * nf * nf
    top = px * 4 ** plan.num_upsample
    return float(total + 2 * top * 9 * nf * nf + 2 * top * 9 * nf * plan.out_channels)
