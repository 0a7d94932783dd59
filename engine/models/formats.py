"""Checkpoint layouts found in the wild: each is recognised by the keys it must have and renamed to our key names
(BasicSR's); the architecture it names then reads its hyper-parameters from the renamed tensors' shapes (each
architecture's `detect`, beside its class), never assumed.

Adding a layout = one `Format` row in `FORMATS`: required keys, a rename table, and the registered architecture
whose detection runs on the renamed tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .registry import ARCHS
from .shapes import FormatError, StateDict, count, indices


@dataclass(frozen=True)
class Detected:
    format: str
    arch: str
    hparams: dict[str, Any]
    state_dict: StateDict  # our key names


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


SRVGG_RULES: list[Rule] = [(r"(body\.\d+\.(?:weight|bias))", r"\1")]  # any other key has no place in it


def _esrgan_2018_rules(sd: StateDict) -> list[Rule]:
    """ESRGAN's 2018 `nn.Sequential` layout, with n nearest-neighbour upsampling stages:

        model.0            conv_first
        model.1.sub.{i}    RRDB i (RDB{1,2,3}.conv{1..5}.0 = conv, the .1 LeakyReLU has no weights)
        model.1.sub.{nb}   trunk conv (model.1 is the long-skip ShortcutBlock)
        model.{3k−1,3k,3k+1}  stage k = Upsample, conv, LeakyReLU  → conv at model.{3k}
        model.{3n+2}       HR conv (then LeakyReLU at 3n+3)
        model.{3n+4}       last conv                                (×4: 3, 6, 8, 10)
    """
    nb = count(sd, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight")
    top = [i for i in indices(sd, r"model\.(\d+)\.weight") if i != 1]
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
    nb = count(sd, r"body\.(\d+)\.body\.0\.weight")
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
    blocks = indices(sd, r"body\.\d+\.body\.(\d+)\.body\..+")
    tails = indices(sd, r"body\.\d+\.body\.(\d+)\.(?:weight|bias)")
    groups = indices(sd, r"body\.(\d+)\.body\..+")
    trunks = indices(sd, r"body\.(\d+)\.(?:weight|bias)")
    ups = indices(sd, r"tail\.0\.(\d+)\.(?:weight|bias)")
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
            hparams = {**_arch_hparams(self.arch, ours, self.name), **self.extra_hparams(sd)}
        except KeyError as e:
            raise FormatError(f"{self.name} layout without the tensor {e.args[0]!r}") from None
        return Detected(self.name, self.arch, hparams, ours)


def _arch_hparams(arch: str, sd: StateDict, layout: str) -> dict[str, Any]:
    """The hyper-parameters that registered architecture `arch` reads from the shapes of `sd` (our key names)."""
    detect = ARCHS[arch].detect
    if detect is None:
        raise FormatError(f"the {layout} layout names architecture {arch!r}, which reads nothing from shapes")
    try:
        return detect(sd)
    except KeyError as e:
        raise FormatError(f"{layout} layout without the tensor {e.args[0]!r}") from None


def detect_arch(sd: StateDict, arch: str) -> Detected:
    """`sd` in our key names as a network of the registered architecture `arch` (not a cascade): what our
    safetensors hold when their metadata names an architecture that no layout row recognises by its keys. The
    hyper-parameters are those its `detect` reads from the shapes ({} when it reads none)."""
    entry = ARCHS[arch]
    return Detected(arch, arch, {} if entry.detect is None else _arch_hparams(arch, sd, arch), sd)


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
    # Only SRVGGNetCompact has bare body.N.weight: the other layouts nest their blocks (body.N.conv1, body.N.rdb1,
    # body.N.bn1, body.N.body.0, body.N.residual_group).
    Format("basicsr", "Real-ESRGAN SRVGGNetCompact (body.N: convs at even N, PReLUs at odd N)",
           ("body.0.weight", "body.0.bias"), "srvgg", lambda sd: SRVGG_RULES),
    Format("srresnet", "SRGAN SRResNet in this project's layout (conv_first 9×9, body.N.bn1, bn_body, "
           "upsample.N.conv)",
           ("conv_first.weight", "body.0.bn1.weight", "bn_body.weight"), "srresnet", lambda sd: _SAME),
]

ACCEPTED = [f.description for f in FORMATS] + [
    "a cascade of those (stages.N.…)",
    "this project's safetensors (engine.models.save)",
    "ncnn models (.param + .bin) of RRDBNet and SRVGGNetCompact",
    "each bare or wrapped in params_ema / params / state_dict",
]


MAX_CASCADE_DEPTH = 4  # cascades of cascades, so deep; deeper keys are refused before any recursion


def detect(sd: StateDict, *, depth: int = 0) -> Detected | None:
    """Recognise the layout of `sd`; None when no layout's required keys are all present."""
    stages = indices(sd, r"stages\.(\d+)\..+")
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
