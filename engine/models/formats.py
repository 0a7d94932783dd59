"""Checkpoint layouts found in the wild: each is recognised by the keys it must have, renamed to our key names
(BasicSR's), and its hyper-parameters are read from tensor shapes, never assumed.

Adding a layout = one `Format` row in `FORMATS`: required keys, a rename table, and the arch whose
hyper-parameters are read from the renamed tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]


class FormatError(ValueError):
    """A layout was recognised by its keys, but its tensors do not form a network of that layout."""


@dataclass(frozen=True)
class Detected:
    format: str
    arch: str
    hparams: dict[str, Any]
    state_dict: StateDict  # our key names


# ---------------------------------------------------------------------------------------------------------
# Hyper-parameters from tensor shapes, on our key names.


def _indices(sd: StateDict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over the keys."""
    return sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k))})


def _count(sd: StateDict, pattern: str, start: int = 0) -> int:
    """Number of consecutive indices start, start+1, … matched by `pattern`; gaps are an error."""
    found = _indices(sd, pattern)
    if found != list(range(start, start + len(found))):
        raise FormatError(f"layer indices of {pattern!r} are not consecutive from {start}: {found}")
    return len(found)


def _conv(sd: StateDict, key: str) -> tuple[int, int]:
    """(output, input) channels of the conv weight `key`: a 4-D tensor with no empty dimension."""
    shape = tuple(sd[key].shape)
    if len(shape) != 4 or 0 in shape:
        raise FormatError(f"tensor {key!r} has shape {list(shape)}; a conv weight is 4-D (out, in, kh, kw) and "
                          "not empty")
    return shape[0], shape[1]


def _shuffle_factor(conv_out: int, num_feat: int, what: str) -> int:
    factor = math.isqrt(conv_out // num_feat)
    if factor * factor * num_feat != conv_out or factor not in (2, 3):
        raise FormatError(f"{what} gives {conv_out} channels for num_feat={num_feat}: not a ×2 or ×3 "
                          f"pixel-shuffle stage (expected {4 * num_feat} or {9 * num_feat})")
    return factor


def _rrdbnet_hparams(sd: StateDict) -> dict[str, Any]:
    num_feat, in_ch = _conv(sd, "conv_first.weight")
    out_ch = _conv(sd, "conv_last.weight")[0]
    num_upsample = _count(sd, r"conv_up(\d+)\.weight", start=1)
    hp: dict[str, Any] = dict(
        num_feat=num_feat,
        num_block=_count(sd, r"body\.(\d+)\.rdb1\.conv1\.weight"),
        num_grow_ch=_conv(sd, "body.0.rdb1.conv1.weight")[0],  # gc: conv1's output channels, never assumed 32
        num_out_ch=out_ch,
    )
    # BasicSR ×2 / ×1: the ×4 network behind pixel-unshuffle by 2 / 4, so conv_first reads 4× / 16× the
    # image channels (Real-ESRGAN x2plus: 12 = 4·3).
    if num_upsample == 2 and in_ch in (4 * out_ch, 16 * out_ch):
        unshuffle = 2 if in_ch == 4 * out_ch else 4
        return {**hp, "num_in_ch": in_ch // unshuffle**2, "scale": 4 // unshuffle, "pixel_unshuffle": True}
    if num_upsample > 3:
        raise FormatError(f"RRDBNet with {num_upsample} upsampling stages (×{2 ** num_upsample}) is not supported")
    return {**hp, "num_in_ch": in_ch, "scale": 2**num_upsample, "pixel_unshuffle": num_upsample >= 2}


def _msrresnet_hparams(sd: StateDict) -> dict[str, Any]:
    num_feat, in_ch = _conv(sd, "conv_first.weight")
    if "upconv2.weight" in sd:
        scale = 4
    else:
        scale = _shuffle_factor(_conv(sd, "upconv1.weight")[0], num_feat, "upconv1")
    return dict(num_in_ch=in_ch, num_out_ch=_conv(sd, "conv_last.weight")[0], scale=scale, num_feat=num_feat,
                num_block=_count(sd, r"body\.(\d+)\.conv1\.weight"))


def _upsample_scale(sd: StateDict, num_feat: int, arch: str) -> int:
    """Scale of an `upsample` Sequential of (conv, PixelShuffle) pairs, convs at upsample.0, upsample.2, …"""
    convs = _indices(sd, r"upsample\.(\d+)\.weight")
    if convs != list(range(0, 2 * len(convs), 2)):
        raise FormatError(f"{arch} upsampler convs at unexpected positions {convs} (expected 0, 2, …)")
    return math.prod(_shuffle_factor(_conv(sd, f"upsample.{i}.weight")[0], num_feat, f"upsample.{i}")
                     for i in convs)


def _edsr_hparams(sd: StateDict) -> dict[str, Any]:
    num_feat, in_ch = _conv(sd, "conv_first.weight")
    scale = _upsample_scale(sd, num_feat, "EDSR")
    # res_scale is not stored in the weights: EDSR's published wide model (256 features, 32 blocks) uses
    # 0.1, the baseline (64 features) 1.0.
    return dict(num_in_ch=in_ch, num_out_ch=_conv(sd, "conv_last.weight")[0], scale=scale, num_feat=num_feat,
                num_block=_count(sd, r"body\.(\d+)\.conv1\.weight"), res_scale=0.1 if num_feat >= 256 else 1.0)


def _srresnet_hparams(sd: StateDict) -> dict[str, Any]:
    num_feat, in_ch = _conv(sd, "conv_first.weight")
    stages = _count(sd, r"upsample\.(\d+)\.conv\.weight")
    scale = math.prod(_shuffle_factor(_conv(sd, f"upsample.{i}.conv.weight")[0], num_feat, f"upsample.{i}.conv")
                      for i in range(stages))
    return dict(num_in_ch=in_ch, num_out_ch=_conv(sd, "conv_last.weight")[0], scale=scale, num_feat=num_feat,
                num_block=_count(sd, r"body\.(\d+)\.conv1\.weight"),
                prelu_per_channel=sd["prelu_first.weight"].numel() > 1)


def _rcan_hparams(sd: StateDict) -> dict[str, Any]:
    num_feat, in_ch = _conv(sd, "conv_first.weight")
    squeezed = _conv(sd, "body.0.residual_group.0.rcab.3.attention.1.weight")[0]  # the attention's nf // r
    reduction = num_feat // squeezed
    if num_feat // reduction != squeezed:
        raise FormatError(f"RCAN channel attention squeezes {num_feat} features to {squeezed}: not "
                          f"num_feat // reduction for any integer reduction")
    return dict(num_in_ch=in_ch, num_out_ch=_conv(sd, "conv_last.weight")[0],
                scale=_upsample_scale(sd, num_feat, "RCAN"), num_feat=num_feat,
                num_group=_count(sd, r"body\.(\d+)\.conv\.weight"),
                num_block=_count(sd, r"body\.0\.residual_group\.(\d+)\.rcab\.0\.weight"), reduction=reduction)


HPARAMS: dict[str, Callable[[StateDict], dict[str, Any]]] = {
    "rrdbnet": _rrdbnet_hparams,
    "msrresnet": _msrresnet_hparams,
    "edsr": _edsr_hparams,
    "srresnet": _srresnet_hparams,
    "rcan": _rcan_hparams,
}

# ---------------------------------------------------------------------------------------------------------
# Renaming foreign keys to ours.

Rule = tuple[str, str]  # (regex matching a whole foreign key, replacement template)


def _rename(sd: StateDict, rules: list[Rule], fmt: str) -> StateDict:
    out: StateDict = {}
    for key, tensor in sd.items():
        for pattern, repl in rules:
            if m := re.fullmatch(pattern, key):
                if repl:  # an empty replacement drops the tensor
                    out[m.expand(repl)] = tensor
                break
        else:
            raise FormatError(f"tensor {key!r} has no place in the {fmt} layout")
    return out


_SAME = [(r"(.*)", r"\1")]

ESRGAN_2019_RULES: list[Rule] = [
    (r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)", r"body.\1.rdb\2.conv\3.\4"),
    (r"trunk_conv\.(weight|bias)", r"conv_body.\1"),
    (r"upconv([1-3])\.(weight|bias)", r"conv_up\1.\2"),
    (r"HRconv\.(weight|bias)", r"conv_hr.\1"),
    (r"(conv_first|conv_last)\.(weight|bias)", r"\1.\2"),
]


def _esrgan_2018_rules(sd: StateDict) -> list[Rule]:
    """ESRGAN's 2018 `nn.Sequential` layout, with n nearest-neighbour upsampling stages:

        model.0            conv_first
        model.1.sub.{i}    RRDB i (RDB{1,2,3}.conv{1..5}.0 = conv, the .1 LeakyReLU has no weights)
        model.1.sub.{nb}   trunk conv (model.1 is the long-skip ShortcutBlock)
        model.{3k−1,3k,3k+1}  stage k = Upsample, conv, LeakyReLU  → conv at model.{3k}
        model.{3n+2}       HR conv (then LeakyReLU at 3n+3)
        model.{3n+4}       last conv                                (×4: 3, 6, 8, 10)
    """
    nb = _count(sd, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight")
    top = [i for i in _indices(sd, r"model\.(\d+)\.weight") if i != 1]
    n = (top[-1] - 4) // 3 if top else -1
    expected = [0, *range(3, 3 * n + 1, 3), 3 * n + 2, 3 * n + 4]
    if n < 0 or top != expected:
        raise FormatError(f"ESRGAN 2018 layout with top-level layers at model.{top}; expected model.{expected} "
                          "(conv_first, upconvs, HR conv, last conv with nearest-neighbour upsampling)")
    places = {0: "conv_first", 3 * n + 2: "conv_hr", 3 * n + 4: "conv_last"}
    places |= {3 * k: f"conv_up{k}" for k in range(1, n + 1)}
    return [
        (r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)", r"body.\1.rdb\2.conv\3.\4"),
        (rf"model\.1\.sub\.{nb}\.(weight|bias)", r"conv_body.\1"),
        *((rf"model\.{i}\.(weight|bias)", rf"{name}.\1") for i, name in places.items()),
    ]


def _edsr_official_rules(sd: StateDict) -> list[Rule]:
    """EDSR-PyTorch (the authors' code): sub_mean/add_mean are fixed mean-shift convs, `head.0` the first
    conv, `body.{i}.body.{0,2}` the block convs, `body.{nb}` the conv after the body, `tail.0.{2k}` the
    upsampler convs and `tail.1` the last conv."""
    nb = _count(sd, r"body\.(\d+)\.body\.0\.weight")
    return [
        (r"(sub_mean|add_mean)\.(weight|bias)", ""),
        (r"head\.0\.(weight|bias)", r"conv_first.\1"),
        (r"body\.(\d+)\.body\.0\.(weight|bias)", r"body.\1.conv1.\2"),
        (r"body\.(\d+)\.body\.2\.(weight|bias)", r"body.\1.conv2.\2"),
        (rf"body\.{nb}\.(weight|bias)", r"conv_after_body.\1"),
        (r"tail\.0\.(\d+)\.(weight|bias)", r"upsample.\1.\2"),
        (r"tail\.1\.(weight|bias)", r"conv_last.\1"),
    ]


def _rcan_official_rules(sd: StateDict) -> list[Rule]:
    """RCAN_TrainCode / EDSR-PyTorch `model/rcan.py` (the authors' code), ng groups of nb RCABs:

        sub_mean, add_mean               fixed mean-shift 1×1 convs (dropped; their bias gives img_range, rgb_mean)
        head.0                           conv_first
        body.{g}.body.{b}.body.0, .2     RCAB b of group g: conv, (ReLU at .1), conv
        body.{g}.body.{b}.body.3.conv_du.0, .2   its channel attention: squeeze and excite 1×1 convs
        body.{g}.body.{nb}               the group's last conv
        body.{ng}                        conv_after_body (the trunk conv before the long skip)
        tail.0.{0,2,…}, tail.1           upsampler convs, last conv

    Every tensor of that network must be present: the first one missing is named.
    """
    blocks = _indices(sd, r"body\.\d+\.body\.(\d+)\.body\..+")
    tails = _indices(sd, r"body\.\d+\.body\.(\d+)\.(?:weight|bias)")
    groups = _indices(sd, r"body\.(\d+)\.body\..+")
    trunks = _indices(sd, r"body\.(\d+)\.(?:weight|bias)")
    ups = _indices(sd, r"tail\.0\.(\d+)\.(?:weight|bias)")
    nb = max(blocks[-1] + 1 if blocks else 0, tails[-1] if tails else 0)  # a lost last block or tail conv
    ng = max(groups[-1] + 1 if groups else 0, trunks[-1] if trunks else 0)  # still leaves the count right
    block = ("body.0", "body.2", "body.3.conv_du.0", "body.3.conv_du.2")
    layers = ["head.0", *(f"body.{g}.body.{b}.{m}" for g in range(ng) for b in range(nb) for m in block),
              *(f"body.{g}.body.{nb}" for g in range(ng)), f"body.{ng}",
              *(f"tail.0.{k}" for k in range(0, (ups[-1] if ups else 0) + 1, 2)), "tail.1"]
    missing = next((f"{m}.{p}" for m in layers for p in ("weight", "bias") if f"{m}.{p}" not in sd), None)
    if missing is not None:
        raise FormatError(f"rcan-official layout without the tensor {missing!r} (its keys make {ng} residual "
                          f"groups of {nb} RCABs); the checkpoint is truncated or not a complete RCAN")
    return [
        (r"(sub_mean|add_mean)\.(weight|bias)", ""),
        (r"head\.0\.(weight|bias)", r"conv_first.\1"),
        (r"body\.(\d+)\.body\.(\d+)\.body\.([02])\.(weight|bias)", r"body.\1.residual_group.\2.rcab.\3.\4"),
        (r"body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.0\.(weight|bias)",
         r"body.\1.residual_group.\2.rcab.3.attention.1.\3"),
        (r"body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.2\.(weight|bias)",
         r"body.\1.residual_group.\2.rcab.3.attention.3.\3"),
        (rf"body\.(\d+)\.body\.{nb}\.(weight|bias)", r"body.\1.conv.\2"),
        (rf"body\.{ng}\.(weight|bias)", r"conv_after_body.\1"),
        (r"tail\.0\.(\d+)\.(weight|bias)", r"upsample.\1.\2"),
        (r"tail\.1\.(weight|bias)", r"conv_last.\1"),
    ]


def _edsr_mean_shift(sd: StateDict) -> dict[str, Any]:
    """EDSR-PyTorch's (and RCAN's) add_mean conv has bias = rgb_range · rgb_mean (std 1): its published models use
    rgb_range 255; a bias below 1 means a model trained with rgb_range 1."""
    if "add_mean.bias" not in sd:
        return {}
    bias = sd["add_mean.bias"].double().reshape(-1)
    img_range = 255.0 if float(bias.abs().max()) > 1 else 1.0
    return {"img_range": img_range, "rgb_mean": tuple(round(float(b) / img_range, 6) for b in bias)}


# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    description: str  # what a user sees in "accepted formats"
    required: tuple[str, ...]
    arch: str
    rules: Callable[[StateDict], list[Rule]]
    extra_hparams: Callable[[StateDict], dict[str, Any]] = lambda sd: {}

    def convert(self, sd: StateDict) -> Detected:
        try:
            ours = _rename(sd, self.rules(sd), self.name)
            hparams = {**HPARAMS[self.arch](ours), **self.extra_hparams(sd)}
        except KeyError as e:
            raise FormatError(f"{self.name} layout without the tensor {e.args[0]!r}") from None
        return Detected(self.name, self.arch, hparams, ours)


FORMATS: list[Format] = [
    Format("esrgan-2018", "ESRGAN 2018 (model.0, model.1.sub.N.RDBk.convj.0, …)",
           ("model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"), "rrdbnet", _esrgan_2018_rules),
    Format("esrgan-2019", "ESRGAN 2019 / KAIR / BSRGAN (conv_first, RRDB_trunk.N.RDBk.convj, trunk_conv, upconv1, "
           "HRconv, conv_last)",
           ("conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight"), "rrdbnet",
           lambda sd: ESRGAN_2019_RULES),
    Format("basicsr", "BasicSR / Real-ESRGAN RRDBNet (conv_first, body.N.rdbk.convj, conv_body, conv_up1, conv_hr, "
           "conv_last)",
           ("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight"), "rrdbnet", lambda sd: _SAME),
    Format("basicsr", "BasicSR MSRResNet (conv_first, body.N.conv1, upconv1, conv_hr, conv_last)",
           ("conv_first.weight", "body.0.conv1.weight", "upconv1.weight", "conv_hr.weight"), "msrresnet",
           lambda sd: _SAME),
    Format("basicsr", "BasicSR EDSR (conv_first, body.N.conv1, conv_after_body, upsample.0, conv_last)",
           ("conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight"), "edsr", lambda sd: _SAME),
    Format("edsr-official", "EDSR-PyTorch (head.0, body.N.body.0, tail.0.0, tail.1)",
           ("head.0.weight", "body.0.body.0.weight", "tail.1.weight"), "edsr", _edsr_official_rules,
           _edsr_mean_shift),
    Format("basicsr", "BasicSR RCAN (conv_first, body.G.residual_group.B.rcab.0, body.G.conv, conv_after_body, "
           "upsample.0, conv_last)",
           ("conv_first.weight", "body.0.residual_group.0.rcab.0.weight", "conv_after_body.weight"), "rcan",
           lambda sd: _SAME),
    # Told apart from EDSR-PyTorch by the nested body.G.body.B.body.0 (EDSR's blocks are body.N.body.0).
    Format("rcan-official", "RCAN (head.0, body.G.body.B.body.0, body.G.body.B.body.3.conv_du.0, tail.0.0, "
           "tail.1)",
           ("head.0.weight", "body.0.body.0.body.0.weight", "tail.1.weight"), "rcan", _rcan_official_rules,
           _edsr_mean_shift),
    Format("srresnet", "SRGAN SRResNet in this project's layout (conv_first 9×9, body.N.bn1, bn_body, "
           "upsample.N.conv)",
           ("conv_first.weight", "body.0.bn1.weight", "bn_body.weight"), "srresnet", lambda sd: _SAME),
]

ACCEPTED = [f.description for f in FORMATS] + [
    "a cascade of those (stages.N.…)",
    "this project's safetensors (engine.models.save)",
    "each bare or wrapped in params_ema / params / state_dict",
]


MAX_CASCADE_DEPTH = 4  # cascades of cascades, so deep; deeper keys are refused before any recursion


def detect(sd: StateDict, *, depth: int = 0) -> Detected | None:
    """Recognise the layout of `sd`; None when no layout's required keys are all present."""
    stages = _indices(sd, r"stages\.(\d+)\..+")
    if stages:
        if depth >= MAX_CASCADE_DEPTH:
            raise FormatError(f"cascades nested more than {MAX_CASCADE_DEPTH} deep (keys like {next(iter(sd))!r})")
        return _detect_cascade(sd, len(stages), depth)
    for fmt in FORMATS:
        if all(k in sd for k in fmt.required):
            return fmt.convert(sd)
    return None


def _detect_cascade(sd: StateDict, n: int, depth: int) -> Detected:
    stages: list[dict[str, Any]] = []
    ours: StateDict = {}
    for i in range(n):
        prefix = f"stages.{i}."
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        found = detect(sub, depth=depth + 1) if sub else None
        if found is None:
            raise FormatError(f"cascade stage {i} ({prefix}…) is not a known network")
        stages.append({"arch": found.arch, "hparams": found.hparams})
        ours |= {prefix + k: v for k, v in found.state_dict.items()}
    stray = [k for k in sd if not re.match(r"stages\.\d+\.", k)]
    if stray:
        raise FormatError(f"cascade checkpoint has tensors outside its stages, e.g. {stray[0]!r}")
    return Detected("cascade", "cascade", {"stages": stages}, ours)
