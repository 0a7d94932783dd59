"""Independent re-implementations of the published networks, for the checkpoint tests.

Two kinds, both written from the papers' descriptions and the published key layouts, sharing no code with
`engine.models`:
- modules with the exact names of the foreign layouts (ESRGAN 2018 `nn.Sequential`, ESRGAN 2019 / BSRGAN,
  EDSR-PyTorch, RCAN's `model/rcan.py`, Real-ESRGAN's SRVGGNetCompact), so that their `state_dict()` is a
  checkpoint in that format;
- functional float64 forwards over a state dict in BasicSR's key names (RRDBNet, MSRResNet, EDSR, SRVGGNetCompact,
  and our SRResNet layout), to check our modules against the math;
- `LAYOUTS`: per architecture, the checkpoint layouts a network of ours can be written in (our key names bare or in
  `params_ema`, and the published modules above filled with its weights), for `util.assert_round_trip`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def lrelu(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    return torch.where(x >= 0, x, slope * x)


def nearest2(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def space_to_depth(x: torch.Tensor, s: int) -> torch.Tensor:
    """BasicSR's pixel_unshuffle: channel c·s² + i·s + j holds pixel (s·y + i, s·x + j) of channel c."""
    b, c, h, w = x.shape
    return x.view(b, c, h // s, s, w // s, s).permute(0, 1, 3, 5, 2, 4).reshape(b, c * s * s, h // s, w // s)


def depth_to_space(x: torch.Tensor, s: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c // (s * s), s, s, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (s * s), h * s, w * s)


# ---------------------------------------------------------------------------------------------------------
# ESRGAN 2018 ("old arch"): everything inside one nn.Sequential called `model`.


class _ConvAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, act: bool) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, 1, 1), *([nn.LeakyReLU(0.2)] if act else []))


class _RDB5C(nn.Module):
    def __init__(self, nf: int, gc: int, wrapped: bool) -> None:
        super().__init__()
        make = (lambda i, o, a: _ConvAct(i, o, a)) if wrapped else (lambda i, o, a: nn.Conv2d(i, o, 3, 1, 1))
        self.acts = [True, True, True, True, False]
        for j in range(5):
            setattr(self, f"conv{j + 1}", make(nf + j * gc, gc if j < 4 else nf, self.acts[j]))
        self.wrapped = wrapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for j in range(1, 5):
            y = getattr(self, f"conv{j}")(torch.cat(feats, 1))
            feats.append(y if self.wrapped else lrelu(y))
        return x + 0.2 * getattr(self, "conv5")(torch.cat(feats, 1))  # noqa: B009  # set by setattr


class _RRDBPublished(nn.Module):
    def __init__(self, nf: int, gc: int, wrapped: bool) -> None:
        super().__init__()
        self.RDB1, self.RDB2, self.RDB3 = (_RDB5C(nf, gc, wrapped) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.RDB3(self.RDB2(self.RDB1(x)))


class _Shortcut(nn.Module):
    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


class ESRGAN2018(nn.Module):
    """ESRGAN's original RRDB_net: model.0 conv, model.1 ShortcutBlock(sub = RRDBs + conv), then per
    upsampling stage [Upsample(nearest), conv, LeakyReLU], then HR conv, LeakyReLU, last conv."""

    def __init__(self, in_nc: int, out_nc: int, nf: int, nb: int, gc: int, n_upscale: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_nc, nf, 3, 1, 1),
            _Shortcut(nn.Sequential(*(_RRDBPublished(nf, gc, True) for _ in range(nb)), nn.Conv2d(nf, nf, 3, 1, 1))),
        ]
        for _ in range(n_upscale):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(nf, nf, 3, 1, 1), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(nf, out_nc, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ESRGAN2019(nn.Module):
    """ESRGAN's 2019 RRDBNet_arch (also KAIR/BSRGAN): conv_first, RRDB_trunk, trunk_conv, upconv1[, upconv2],
    HRconv, conv_last."""

    def __init__(self, in_nc: int, out_nc: int, nf: int, nb: int, gc: int, n_upscale: int) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(_RRDBPublished(nf, gc, False) for _ in range(nb)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.n_upscale = n_upscale
        for k in range(1, n_upscale + 1):
            setattr(self, f"upconv{k}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        for k in range(1, self.n_upscale + 1):
            fea = lrelu(getattr(self, f"upconv{k}")(F.interpolate(fea, scale_factor=2, mode="nearest")))
        return self.conv_last(lrelu(self.HRconv(fea)))


# ---------------------------------------------------------------------------------------------------------
# EDSR-PyTorch (the authors' code): images in [0, rgb_range], fixed mean-shift 1×1 convs.


class _MeanShift(nn.Conv2d):
    def __init__(self, rgb_range: float, rgb_mean: tuple[float, ...], sign: int) -> None:
        super().__init__(3, 3, 1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        assert self.bias is not None
        self.bias.data = sign * rgb_range * torch.tensor(rgb_mean)
        self.requires_grad_(False)


class _ResBlock(nn.Module):
    def __init__(self, nf: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.ReLU(True), nn.Conv2d(nf, nf, 3, 1, 1))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.res_scale + x


class EDSROfficial(nn.Module):
    def __init__(self, nf: int, nb: int, scale: int, res_scale: float = 1.0, rgb_range: float = 255.0) -> None:
        super().__init__()
        mean = (0.4488, 0.4371, 0.4040)
        self.sub_mean = _MeanShift(rgb_range, mean, -1)
        self.head = nn.Sequential(nn.Conv2d(3, nf, 3, 1, 1))
        self.body = nn.Sequential(*(_ResBlock(nf, res_scale) for _ in range(nb)), nn.Conv2d(nf, nf, 3, 1, 1))
        stages: list[nn.Module] = []
        for f in ([3] if scale == 3 else [2] * (scale.bit_length() - 1)):
            stages += [nn.Conv2d(nf, f * f * nf, 3, 1, 1), nn.PixelShuffle(f)]
        self.tail = nn.Sequential(nn.Sequential(*stages), nn.Conv2d(nf, 3, 3, 1, 1))
        self.add_mean = _MeanShift(rgb_range, mean, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))


class _CALayer(nn.Module):
    """Channel attention: x · sigmoid(conv(ReLU(conv(global average of x))))."""

    def __init__(self, nf: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(nf, nf // reduction, 1), nn.ReLU(True),
                                     nn.Conv2d(nf // reduction, nf, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.avg_pool(x))


class _RCAB(nn.Module):
    def __init__(self, nf: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.ReLU(True), nn.Conv2d(nf, nf, 3, 1, 1),
                                  _CALayer(nf, reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class _ResidualGroup(nn.Module):
    def __init__(self, nf: int, nb: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*(_RCAB(nf, reduction) for _ in range(nb)), nn.Conv2d(nf, nf, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class RCANOfficial(nn.Module):
    """RCAN_TrainCode / EDSR-PyTorch `model/rcan.py`: sub_mean, head.0, body.{g}.body.{b}.body.{0,2} (RCAB convs),
    body.{g}.body.{b}.body.3.conv_du.{0,2} (attention), body.{g}.body.{nb}, body.{ng}, tail.0.{2k}, tail.1,
    add_mean; images in [0, rgb_range]."""

    def __init__(self, nf: int, ng: int, nb: int, reduction: int, scale: int, rgb_range: float = 255.0) -> None:
        super().__init__()
        mean = (0.4488, 0.4371, 0.4040)
        self.sub_mean = _MeanShift(rgb_range, mean, -1)
        self.head = nn.Sequential(nn.Conv2d(3, nf, 3, 1, 1))
        self.body = nn.Sequential(*(_ResidualGroup(nf, nb, reduction) for _ in range(ng)), nn.Conv2d(nf, nf, 3, 1, 1))
        stages: list[nn.Module] = []
        for f in ([3] if scale == 3 else [2] * (scale.bit_length() - 1)):
            stages += [nn.Conv2d(nf, f * f * nf, 3, 1, 1), nn.PixelShuffle(f)]
        self.tail = nn.Sequential(nn.Sequential(*stages), nn.Conv2d(nf, 3, 3, 1, 1))
        self.add_mean = _MeanShift(rgb_range, mean, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))


class SRVGGOfficial(nn.Module):
    """Real-ESRGAN's SRVGGNetCompact as its paper and code describe it: one `body` ModuleList of conv 3×3 in→nf,
    activation, `num_conv` × (conv nf→nf, activation), conv nf→out·upscale²; then `upsampler` (pixel shuffle) plus the
    input upsampled by nearest neighbour. PReLU has one slope per feature; leakyrelu's slope is 0.1."""

    def __init__(self, num_in_ch: int, num_out_ch: int, num_feat: int, num_conv: int, upscale: int,
                 act_type: str) -> None:
        super().__init__()
        self.upscale = upscale

        def act() -> nn.Module:
            return {"relu": nn.ReLU, "prelu": lambda: nn.PReLU(num_parameters=num_feat),
                    "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.1)}[act_type]()

        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), act()])
        for _ in range(num_conv):
            self.body.extend([nn.Conv2d(num_feat, num_feat, 3, 1, 1), act()])
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


# ---------------------------------------------------------------------------------------------------------
# Functional float64 forwards on BasicSR key names.


def _conv(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    w = sd[f"{name}.weight"].double()
    return F.conv2d(x, w, sd[f"{name}.bias"].double(), padding=w.shape[-1] // 2)


def rrdbnet_math(sd: dict[str, torch.Tensor], x: torch.Tensor, *, unshuffle: int = 1) -> torch.Tensor:
    x = x.double()
    if unshuffle > 1:
        x = space_to_depth(x, unshuffle)
    nb = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    feat = _conv(sd, "conv_first", x)
    h = feat
    for i in range(nb):
        block_in = h
        for k in (1, 2, 3):
            feats = [h]
            for j in (1, 2, 3, 4):
                feats.append(lrelu(_conv(sd, f"body.{i}.rdb{k}.conv{j}", torch.cat(feats, 1))))
            h = h + 0.2 * _conv(sd, f"body.{i}.rdb{k}.conv5", torch.cat(feats, 1))
        h = block_in + 0.2 * h
    feat = feat + _conv(sd, "conv_body", h)
    k = 1
    while f"conv_up{k}.weight" in sd:
        feat = lrelu(_conv(sd, f"conv_up{k}", nearest2(feat)))
        k += 1
    return _conv(sd, "conv_last", lrelu(_conv(sd, "conv_hr", feat)))


def msrresnet_math(sd: dict[str, torch.Tensor], x: torch.Tensor, scale: int) -> torch.Tensor:
    x = x.double()
    nb = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    h = lrelu(_conv(sd, "conv_first", x), 0.1)
    for i in range(nb):
        h = h + _conv(sd, f"body.{i}.conv2", torch.relu(_conv(sd, f"body.{i}.conv1", h)))
    f = 2 if scale == 4 else scale
    h = lrelu(depth_to_space(_conv(sd, "upconv1", h), f), 0.1)
    if scale == 4:
        h = lrelu(depth_to_space(_conv(sd, "upconv2", h), 2), 0.1)
    out = _conv(sd, "conv_last", lrelu(_conv(sd, "conv_hr", h), 0.1))
    return out + F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def edsr_math(sd: dict[str, torch.Tensor], x: torch.Tensor, res_scale: float = 1.0) -> torch.Tensor:
    mean = torch.tensor([0.4488, 0.4371, 0.4040], dtype=torch.float64).view(1, 3, 1, 1)
    nb = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    h = feat = _conv(sd, "conv_first", (x.double() - mean) * 255.0)
    for i in range(nb):
        h = h + res_scale * _conv(sd, f"body.{i}.conv2", torch.relu(_conv(sd, f"body.{i}.conv1", h)))
    h = feat + _conv(sd, "conv_after_body", h)
    i = 0
    while f"upsample.{i}.weight" in sd:
        y = _conv(sd, f"upsample.{i}", h)
        h = depth_to_space(y, int(round((y.shape[1] / h.shape[1]) ** 0.5)))
        i += 2
    return _conv(sd, "conv_last", h) / 255.0 + mean


def srvgg_math(sd: dict[str, torch.Tensor], x: torch.Tensor, *, scale: int, act_type: str) -> torch.Tensor:
    """SRVGGNetCompact: convs at body.0, body.2, …; after each but the last the activation (PReLU weights at the odd
    indices); the last conv's output pixel-shuffled, plus every input pixel repeated scale × scale times."""
    x = x.double()
    convs = sorted(int(k.split(".")[1]) for k in sd if k.endswith(".bias"))
    h = x
    for i in convs:
        h = _conv(sd, f"body.{i}", h)
        if i == convs[-1]:
            break
        if act_type == "prelu":
            h = torch.where(h >= 0, h, sd[f"body.{i + 1}.weight"].double().view(1, -1, 1, 1) * h)
        else:
            h = lrelu(h, 0.1 if act_type == "leakyrelu" else 0.0)
    base = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return depth_to_space(h, scale) + base


def srresnet_math(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    def prelu(name: str, t: torch.Tensor) -> torch.Tensor:
        a = sd[f"{name}.weight"].double().view(1, -1, 1, 1)
        return torch.where(t >= 0, t, a * t)

    def bn(name: str, t: torch.Tensor) -> torch.Tensor:
        g = {s: sd[f"{name}.{s}"].double().view(1, -1, 1, 1) for s in ("weight", "bias", "running_mean", "running_var")}
        return (t - g["running_mean"]) / torch.sqrt(g["running_var"] + 1e-5) * g["weight"] + g["bias"]

    nb = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    h = feat = prelu("prelu_first", _conv(sd, "conv_first", x.double()))
    for i in range(nb):
        r = prelu(f"body.{i}.prelu", bn(f"body.{i}.bn1", _conv(sd, f"body.{i}.conv1", h)))
        h = h + bn(f"body.{i}.bn2", _conv(sd, f"body.{i}.conv2", r))
    h = feat + bn("bn_body", _conv(sd, "conv_body", h))
    i = 0
    while f"upsample.{i}.conv.weight" in sd:
        y = _conv(sd, f"upsample.{i}.conv", h)
        h = prelu(f"upsample.{i}.prelu", depth_to_space(y, int(round((y.shape[1] / h.shape[1]) ** 0.5))))
        i += 1
    return _conv(sd, "conv_last", h)


# ---------------------------------------------------------------------------------------------------------
# Writing a network of ours in each layout. A writer takes the network (its `hparams` and its state dict in
# BasicSR's key names) and returns the checkpoint, or None when the layout cannot hold those hyper-parameters
# exactly (what a layout does not store, a loader can only assume).

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


@dataclass(frozen=True)
class Written:
    checkpoint: dict[str, Any]  # what torch.save stores
    published: nn.Module | None = None  # the layout's own implementation holding the weights, on [0, 1] images


@dataclass(frozen=True)
class Layout:
    name: str  # the file's name in a round trip
    format: str  # what engine.models.load reports as ModelInfo.format
    write: Callable[[Any], Written | None]
    wrapper: str | None = None  # what load reports as ModelInfo.wrapper


class _Ranged(nn.Module):
    """A published network that works on [0, rgb_range], run on [0, 1] images: net(x·r) / r."""

    def __init__(self, net: nn.Module, rgb_range: float) -> None:
        super().__init__()
        self.net, self.rgb_range = net, rgb_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.rgb_range) / self.rgb_range


def _renamed(net: Any, rules: list[tuple[str, str]], module: nn.Module) -> nn.Module:
    """`module` holding `net`'s weights, each key renamed by the first rule (regex, template) that matches it;
    every key must be renamed and every tensor of `module` filled (load_state_dict is strict)."""
    sd = {}
    for key, tensor in net.state_dict().items():
        new = next((m.expand(t) for r, t in rules if (m := re.fullmatch(r, key))), None)
        assert new is not None, f"no rule renames {key!r}"
        sd[new] = tensor
    module.load_state_dict(sd, strict=False)  # the fixed mean shifts of EDSR/RCAN are the module's own
    missing = set(module.state_dict()) - set(sd) - {k for k in module.state_dict() if k.split(".")[0].endswith(
        "_mean")}
    assert not missing and set(sd) <= set(module.state_dict()), (missing, set(sd) - set(module.state_dict()))
    return module.eval()


def _exact_from_shapes(net: Any) -> bool:
    """Whether the shapes of `net`'s tensors tell all its hyper-parameters (so a bare state dict holds them)."""
    hp, arch = net.hparams, net.arch
    if arch == "rrdbnet":  # pixel_unshuffle changes nothing at ×4 and ×8, and is read as True there
        return hp["scale"] < 4 or hp["pixel_unshuffle"]
    if arch == "srresnet":  # one feature: one PReLU slope either way
        return hp["num_feat"] > 1 or not hp["prelu_per_channel"]
    if arch in ("edsr", "rcan"):  # the mean shift and EDSR's res_scale are no tensors
        conventional = arch == "rcan" or hp["res_scale"] == (0.1 if hp["num_feat"] >= 256 else 1.0)
        reduction = arch == "edsr" or hp["num_feat"] // (hp["num_feat"] // hp["reduction"]) == hp["reduction"]
        return conventional and reduction and hp["img_range"] == 255.0 and tuple(hp["rgb_mean"]) == DIV2K_MEAN
    if arch == "srvgg":  # ReLU and LeakyReLU leave no tensor: no PReLU weights are read as ReLU
        return hp["act_type"] != "leakyrelu"
    if arch == "cascade":
        return all(_exact_from_shapes(stage) for stage in net.stages)
    return arch == "msrresnet"


def _bare(net: Any) -> Written | None:
    return Written(dict(net.state_dict())) if _exact_from_shapes(net) else None


def _params_ema(net: Any) -> Written | None:
    return Written({"params_ema": dict(net.state_dict())}) if _exact_from_shapes(net) else None


def _esrgan_hparams(net: Any) -> tuple[int, int, int, int, int, int] | None:
    """(in_nc, out_nc, nf, nb, gc, n_upscale) of an RRDBNet that ESRGAN's layouts hold: no pixel-unshuffle (what
    they are read back as: pixel_unshuffle False below ×4, True from ×4 on)."""
    hp = net.hparams
    if hp["pixel_unshuffle"] != (hp["scale"] >= 4):
        return None
    return hp["num_in_ch"], hp["num_out_ch"], hp["num_feat"], hp["num_block"], hp["num_grow_ch"], \
        int(math.log2(hp["scale"]))


def _esrgan_2018(net: Any) -> Written | None:
    found = _esrgan_hparams(net)
    if found is None:
        return None
    nb, n = found[3], found[5]
    rules = [(r"conv_first\.(\w+)", r"model.0.\1"),
             (r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(\w+)", r"model.1.sub.\1.RDB\2.conv\3.0.\4"),
             (r"conv_body\.(\w+)", rf"model.1.sub.{nb}.\1"), (r"conv_hr\.(\w+)", rf"model.{3 * n + 2}.\1"),
             (r"conv_last\.(\w+)", rf"model.{3 * n + 4}.\1"),
             *((rf"conv_up{k}\.(\w+)", rf"model.{3 * k}.\1") for k in range(1, n + 1))]
    module = _renamed(net, rules, ESRGAN2018(*found))
    return Written(dict(module.state_dict()), module)


def _esrgan_2019(net: Any) -> Written | None:
    found = _esrgan_hparams(net)
    if found is None:
        return None
    rules = [(r"conv_first\.(\w+)", r"conv_first.\1"),
             (r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(\w+)", r"RRDB_trunk.\1.RDB\2.conv\3.\4"),
             (r"conv_body\.(\w+)", r"trunk_conv.\1"), (r"conv_up(\d)\.(\w+)", r"upconv\1.\2"),
             (r"conv_hr\.(\w+)", r"HRconv.\1"), (r"conv_last\.(\w+)", r"conv_last.\1")]
    module = _renamed(net, rules, ESRGAN2019(*found))
    return Written(dict(module.state_dict()), module)


def _official_range(net: Any) -> float | None:
    """The rgb_range of the authors' EDSR/RCAN code that holds `net`: three channels, the DIV2K mean, a range of 255
    or 1 (their add_mean bias is range·mean, which is how the range is read back)."""
    hp = net.hparams
    ok = hp["num_in_ch"] == hp["num_out_ch"] == 3 and tuple(hp["rgb_mean"]) == DIV2K_MEAN
    return hp["img_range"] if ok and hp["img_range"] in (1.0, 255.0) else None


def _edsr_official(net: Any) -> Written | None:
    hp, rgb_range = net.hparams, _official_range(net)
    if rgb_range is None or hp["res_scale"] != (0.1 if hp["num_feat"] >= 256 else 1.0):  # res_scale is not stored
        return None
    nb = hp["num_block"]
    rules = [(r"conv_first\.(\w+)", r"head.0.\1"), (r"body\.(\d+)\.conv1\.(\w+)", r"body.\1.body.0.\2"),
             (r"body\.(\d+)\.conv2\.(\w+)", r"body.\1.body.2.\2"), (r"conv_after_body\.(\w+)", rf"body.{nb}.\1"),
             (r"upsample\.(\d+)\.(\w+)", r"tail.0.\1.\2"), (r"conv_last\.(\w+)", r"tail.1.\1")]
    module = _renamed(net, rules, EDSROfficial(hp["num_feat"], nb, hp["scale"], hp["res_scale"], rgb_range))
    return Written(dict(module.state_dict()), _Ranged(module, rgb_range))


def _rcan_official(net: Any) -> Written | None:
    hp, rgb_range = net.hparams, _official_range(net)
    nf, r = hp["num_feat"], hp["reduction"]
    if rgb_range is None or nf // (nf // r) != r:  # the reduction is read from the squeezed width
        return None
    ng, nb = hp["num_group"], hp["num_block"]
    q = r"body\.(\d+)\.residual_group\.(\d+)\.rcab"
    rules = [(r"conv_first\.(\w+)", r"head.0.\1"), (rf"{q}\.([02])\.(\w+)", r"body.\1.body.\2.body.\3.\4"),
             (rf"{q}\.3\.attention\.1\.(\w+)", r"body.\1.body.\2.body.3.conv_du.0.\3"),
             (rf"{q}\.3\.attention\.3\.(\w+)", r"body.\1.body.\2.body.3.conv_du.2.\3"),
             (r"body\.(\d+)\.conv\.(\w+)", rf"body.\1.body.{nb}.\2"), (r"conv_after_body\.(\w+)", rf"body.{ng}.\1"),
             (r"upsample\.(\d+)\.(\w+)", r"tail.0.\1.\2"), (r"conv_last\.(\w+)", r"tail.1.\1")]
    module = _renamed(net, rules, RCANOfficial(nf, ng, nb, r, hp["scale"], rgb_range))
    return Written(dict(module.state_dict()), _Ranged(module, rgb_range))


def _srvgg_official(net: Any) -> Written | None:
    """Real-ESRGAN's release files: the official module's state dict under `params`."""
    if not _exact_from_shapes(net):
        return None
    hp = net.hparams
    module = _renamed(net, [(r"(.*)", r"\1")], SRVGGOfficial(hp["num_in_ch"], hp["num_out_ch"], hp["num_feat"],
                                                              hp["num_conv"], hp["scale"], hp["act_type"]))
    return Written({"params": dict(module.state_dict())}, module)


def _ours(fmt: str) -> list[Layout]:
    """Our key names (BasicSR's) in a .pth, bare and wrapped as BasicSR saves them."""
    return [Layout("bare", fmt, _bare), Layout("params_ema", fmt, _params_ema, wrapper="params_ema")]


LAYOUTS: dict[str, list[Layout]] = {
    "rrdbnet": [*_ours("basicsr"), Layout("esrgan-2018", "esrgan-2018", _esrgan_2018),
                Layout("esrgan-2019", "esrgan-2019", _esrgan_2019)],
    "srresnet": _ours("srresnet"),
    "msrresnet": _ours("basicsr"),
    "edsr": [*_ours("basicsr"), Layout("edsr-official", "edsr-official", _edsr_official)],
    "rcan": [*_ours("basicsr"), Layout("rcan-official", "rcan-official", _rcan_official)],
    "srvgg": [*_ours("basicsr"), Layout("realesrgan", "basicsr", _srvgg_official, wrapper="params")],
    "cascade": _ours("cascade"),
}
