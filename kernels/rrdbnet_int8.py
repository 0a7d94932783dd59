"""RRDBNet with an INT8 trunk: int8 × int8 → int32 convs for every RDB and conv_body, fp16 elsewhere.

    ranges = export.quantize.rdb_slice_ranges(net, images, gan_net=gan)        # alpha-safe activation ranges
    plan = FusedRRDBNetInt8(net, ranges, gan_net=gan, device="cuda")
    y = plan(x); plan.set_alpha(0.8)

Each RDB keeps one int8 NHWC buffer of nf + 4·gc channels, and each slice (x, y1 … y4) has its own activation
scale s = amax / 127 from `rdb_slice_ranges`. A conv reads a prefix made of several slices; their scales are folded
into its weights once (w · s_slice of each input channel), and the folded weights get one symmetric int8 scale per
output channel, from max(|θ_psnr|, |θ_gan|) so no blend clips (the INT8 issue's rule). The epilogue multiplies the
int32 sums by that per-channel scale, adds the bias, applies LeakyReLU and the residuals (int8, dequantized by
their slice scale), and requantizes into the next slice with its scale.

conv_first (3 input channels) runs in fp16 and requantizes its output into the first RDB's x slice; conv_body
reads the last RDB output in int8 and writes fp16; the upsampling, conv_hr and conv_last stay fp16 (the first and
last convs are kept in higher precision, as the INT8 measurement of the ONNX path chose, docs/int8.md).

Alpha: the int8 weights are stored as both endpoints divided by their fixed scales (float32), so `set_alpha` is one
launch of `lerp_pair_kernel`: a lerp with rounding and clamping over the flat int8 buffer and a plain lerp over the
fp16 buffer (biases and the fp16 convs), everything rewritten in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.models.rrdbnet import RRDBNet

from .conv import conv3x3, pack_conv_weight, upconv2x
from .launch import launch
from .packing import Endpoints, FusedPlan, check_alpha, flat_views, flatten
from .rrdbnet import pack_rrdbnet, rrdb_specs

QMAX = 127


@triton.jit
def lerp_pair_kernel(aq_ptr, bq_ptr, q_ptr, NQ, af_ptr, bf_ptr, f_ptr, NF, alpha, BLOCK: tl.constexpr):
    """One launch for both weight buffers of the INT8 plan: the first cdiv(NQ, BLOCK) programs write the int8
    weights (blend of the scaled endpoints, rounded half away from zero, clamped to ±127), the rest the float ones."""
    pid = tl.program_id(0)
    q_blocks = tl.cdiv(NQ, BLOCK)
    if pid < q_blocks:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < NQ
        a = tl.load(aq_ptr + offs, mask=mask, other=0.0)
        b = tl.load(bq_ptr + offs, mask=mask, other=0.0)
        v = a + alpha * (b - a)
        v = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(-v + 0.5))
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)
        tl.store(q_ptr + offs, v.to(tl.int8), mask=mask)
    else:
        offs = (pid - q_blocks) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < NF
        a = tl.load(af_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(bf_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(f_ptr + offs, (a + alpha * (b - a)).to(f_ptr.dtype.element_ty), mask=mask)


def range_keys(num_block: int) -> list[str]:
    """The activation ranges an INT8 trunk of `num_block` RRDBs needs (export.quantize.rdb_slice_ranges's keys)."""
    keys = [f"body.{i}.rdb{k}.{s}" for i in range(num_block) for k in (1, 2, 3) for s in ("x", "y1", "y2", "y3", "y4")]
    return keys + ["conv_body"]


def _scale(amax: float) -> float:
    return max(float(amax), 1e-8) / QMAX


class FusedRRDBNetInt8(FusedPlan):
    """See the module docstring. `ranges`: from `export.quantize.rdb_slice_ranges` (alpha-safe with `gan_net`)."""

    def __init__(self, net: RRDBNet, ranges: dict[str, float], *, gan_net: RRDBNet | None = None,
                 dtype: torch.dtype = torch.float16, device: str | torch.device = "cuda") -> None:
        if not isinstance(net, RRDBNet):
            raise TypeError(f"FusedRRDBNetInt8 runs an RRDBNet, got {type(net).__name__}")
        hp = net.hparams
        self.nf, self.gc, self.num_block = hp["num_feat"], hp["num_grow_ch"], hp["num_block"]
        if self.num_block < 1:
            raise ValueError("an INT8 trunk needs at least one RRDB")
        self.device, self.dtype = torch.device(device), dtype
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.unshuffle, self.num_upsample, self.multiple = net.unshuffle, net.num_upsample, net.input_multiple
        self.x_dtype = dtype  # conv_first stays in fp16
        missing = [k for k in self._range_keys() if k not in ranges]
        if missing:
            raise ValueError(f"ranges lack {missing[:3]}…: compute them with export.quantize.rdb_slice_ranges")
        self.s = {k: _scale(ranges[k]) for k in self._range_keys()}
        nets = [net.eval()] + ([gan_net.eval()] if gan_net is not None else [])
        int8 = [f"body.{i}.rdb{k}.conv{j}" for i in range(self.num_block) for k in (1, 2, 3) for j in range(1, 6)]
        self._pack_int8(int8 + ["conv_body"], [{k: v.detach().double().cpu() for k, v in n.state_dict().items()}
                                               for n in nets])
        # float tensors: every bias and the weights of the fp16 convs, packed as the fp16 plan packs them
        floats = [{k: v for k, v in pack_rrdbnet(n, dtype).items() if k[: -len(".weight")] not in self.wscale}
                  for n in nets]
        self.params = Endpoints(floats[0], floats[1] if gan_net is not None else None, self.device, "RRDBNet")
        self.f = self.params.views
        self.alpha: float | None = 0.0 if gan_net is not None else None
        super().__init__()

    # ------------------------------------------------------------------------------------------------- packing

    def _range_keys(self) -> list[str]:
        return range_keys(self.num_block)

    def x_scale(self, i: int, k: int) -> float:
        """The scale of RDB (i, k)'s input slice; (num_block, 1) is conv_body's input."""
        return self.s["conv_body"] if i == self.num_block else self.s[f"body.{i}.rdb{k}.x"]

    def _input_scales(self, name: str) -> torch.Tensor:
        """Per input channel of an int8 conv: the scale of the slice it comes from."""
        if name == "conv_body":
            return torch.full((self.nf,), self.s["conv_body"], dtype=torch.float64)
        rdb, conv = name.rsplit(".", 1)
        j = int(conv[-1])
        parts = [torch.full((self.nf,), self.s[f"{rdb}.x"], dtype=torch.float64)]
        parts += [torch.full((self.gc,), self.s[f"{rdb}.y{t}"], dtype=torch.float64) for t in range(1, j)]
        return torch.cat(parts)

    def _pack_int8(self, convs: list[str], states: list[dict[str, torch.Tensor]]) -> None:
        """The int8 convs: the slice scales folded into the weights, one fixed scale per output channel from both
        endpoints, and the endpoints stored divided by it (float32) in one flat buffer; the live int8 weights are
        views into `self._live_q`."""
        ends_q: list[list[torch.Tensor]] = [[] for _ in states]
        self.wscale: dict[str, torch.Tensor] = {}
        shapes_q: list[tuple[str, tuple[int, ...]]] = []
        for c in convs:
            folded = [st[f"{c}.weight"] * self._input_scales(c)[None, :, None, None] for st in states]
            amax = torch.stack([f.abs().flatten(1).amax(1) for f in folded]).amax(0).clamp_min(1e-12)
            wscale = amax / QMAX
            self.wscale[c] = wscale.float().to(self.device)
            packed = [pack_conv_weight(f / wscale[:, None, None, None]) for f in folded]
            for e, t in enumerate(packed):
                ends_q[e].append(t.reshape(-1))
            shapes_q.append((f"{c}.weight", tuple(packed[0].shape)))
        self._ends_q = [flatten(p).float().to(self.device) for p in ends_q]
        # alpha 0: the PSNR endpoint rounded as lerp_pair_kernel rounds (half away from zero, clamped); on the host,
        # so that a plan can be made (and recorded, `kernels.plan`) without running a kernel
        a = self._ends_q[0]
        self._live_q = torch.where(a >= 0, torch.floor(a + 0.5), -torch.floor(-a + 0.5)).clamp(-QMAX, QMAX).to(
            torch.int8)
        self.q = flat_views(self._live_q, shapes_q)

    def set_alpha(self, alpha: float) -> None:
        """Live weights = θ(alpha) with the fixed scales: int8 rounded from the blended endpoints, in place."""
        alpha = check_alpha(alpha, self.params.has_gan, "FusedRRDBNetInt8")
        f = self.params
        nq, nf, block = self._live_q.numel(), f.live.numel(), 1024
        grid = (triton.cdiv(nq, block) + triton.cdiv(nf, block),)
        args = [self._ends_q[0], self._ends_q[1], self._live_q, nq, f.ends[0], f.ends[1], f.live, nf, alpha]
        launch(lerp_pair_kernel, grid, args, dict(BLOCK=block), num_warps=4, num_stages=1)
        self.alpha = alpha

    # ------------------------------------------------------------------------------------------------- running

    def _specs(self, n: int, h: int, w: int) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
        return rrdb_specs(n, h, w, nf=self.nf, gc=self.gc, num_upsample=self.num_upsample,
                          out_channels=self.out_channels, dtype=self.dtype, ring_dtype=torch.int8)

    def _forward(self, buf: dict[str, list[torch.Tensor]]) -> None:
        x = buf["x"][0]
        cin = x.shape[3]
        f, q, nf, gc = self.f, self.q, self.nf, self.gc
        ring, trunk = buf["ring"], buf["trunk"][0]
        conv3x3(x, f["conv_first.weight"], f["conv_first.bias"], ring[0], cin=cin, cout=nf,
                out_scale=self.x_scale(0, 1))
        body = ring[0]
        for i in range(self.num_block):
            rrdb_in = body
            slots = (ring[0] if i == 0 else ring[3], ring[1], ring[2])
            for k in range(3):
                rdb, p = slots[k], f"body.{i}.rdb{k + 1}"
                for j in range(4):
                    c = f"{p}.conv{j + 1}"
                    conv3x3(rdb, q[f"{c}.weight"], f[f"{c}.bias"], rdb, cin=nf + j * gc, cout=gc,
                            y_channel=nf + j * gc, act="lrelu", slope=0.2, wscale=self.wscale[c],
                            out_scale=self.s[f"{p}.y{j + 1}"])
                c = f"{p}.conv5"
                if k < 2:  # x + 0.2·conv5 → the next RDB's x slice
                    conv3x3(rdb, q[f"{c}.weight"], f[f"{c}.bias"], slots[k + 1], cin=nf + 4 * gc, cout=nf,
                            wscale=self.wscale[c], res1=rdb[..., :nf], res1_scale=0.2, res1_dq=self.x_scale(i, k + 1),
                            out_scale=self.x_scale(i, k + 2))
                else:  # and the RRDB's x + 0.2·(that) → the next RRDB's input (conv_body's after the last)
                    conv3x3(rdb, q[f"{c}.weight"], f[f"{c}.bias"], ring[3], cin=nf + 4 * gc, cout=nf,
                            wscale=self.wscale[c], res1=rdb[..., :nf], res1_scale=0.2, res1_dq=self.x_scale(i, 3),
                            res2=rrdb_in[..., :nf], res2_scale=0.2, res2_dq=self.x_scale(i, 1),
                            out_scale=self.x_scale(i + 1, 1))
            body = ring[3]
        conv3x3(body, q["conv_body.weight"], f["conv_body.bias"], trunk, cin=nf, cout=nf,
                wscale=self.wscale["conv_body"], res1=ring[0][..., :nf], res1_dq=self.x_scale(0, 1))
        feat = trunk
        for k in range(self.num_upsample):
            up = buf["up"][k]
            upconv2x(feat, f[f"conv_up{k + 1}.weight"], f[f"conv_up{k + 1}.bias"], up, cin=nf, cout=nf, act="lrelu",
                     res=2**k)
            feat = up
        hr, out, top = buf["hr"][0], buf["out"][0], 2**self.num_upsample
        conv3x3(feat, f["conv_hr.weight"], f["conv_hr.bias"], hr, cin=nf, cout=nf, act="lrelu", slope=0.2, res=top)
        conv3x3(hr, f["conv_last.weight"], f["conv_last.bias"], out, cin=nf, cout=self.out_channels, res=top)
