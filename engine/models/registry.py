"""Architectures and named variants, as data: one `Arch` row per architecture in `ARCHS`, one row per named model
in `VARIANTS` (a variant is a row, not a subclass).

Adding an architecture = its module (the `SRNet` subclass and, beside it, the function that reads its
hyper-parameters from tensor shapes) + one `register_arch(...)` call below (+ an ONNX emitter in export/onnx.py
if it has one; without one, export traces it). A registered architecture builds, saves and loads back by name.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import SRNet
from .cascade import Cascade
from .edsr import EDSR, edsr_hparams
from .rcan import RCAN, rcan_hparams
from .rrdbnet import RRDBNet, rrdbnet_hparams
from .shapes import StateDict
from .srresnet import MSRResNet, SRResNet, msrresnet_hparams, srresnet_hparams
from .srvgg import SRVGGNetCompact, srvgg_hparams


@dataclass(frozen=True)
class Arch:
    """One architecture.

    name: its name in checkpoint metadata, manifests and `build(arch, hparams)`; equal to `cls.arch`.
    cls: the network class; its keyword arguments with defaults are the hyper-parameters.
    detect: the hyper-parameters read from the tensor shapes of a state dict in our key names (None: not read from
        shapes; a cascade is recognised by its structure, see formats.detect).
    fused: the name of the fused Triton program that runs it ("rrdbnet", "srresnet"), or None.
    """

    name: str
    cls: type[SRNet]
    detect: Callable[[StateDict], dict[str, Any]] | None
    fused: str | None = None


ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    """Add `arch` to `ARCHS` and return it; a name registers once (ValueError for a second one)."""
    if arch.name in ARCHS:
        raise ValueError(f"architecture {arch.name!r} is already registered (as {ARCHS[arch.name].cls.__name__}); "
                         "choose another name")
    if getattr(arch.cls, "arch", None) != arch.name:
        raise ValueError(f"{arch.cls.__name__}.arch is {getattr(arch.cls, 'arch', None)!r}: it must be the name it "
                         f"registers as, {arch.name!r} (saved checkpoints name the architecture by it)")
    ARCHS[arch.name] = arch
    return arch


def arch_of(net: SRNet) -> Arch:
    """The registered row of `type(net)`; ValueError naming the class when it is not registered."""
    for arch in ARCHS.values():
        if arch.cls is type(net):
            return arch
    raise ValueError(f"{type(net).__name__} is not a registered architecture; register it with "
                     "engine.models.registry.register_arch(Arch(name, cls, detect))")


register_arch(Arch("rrdbnet", RRDBNet, rrdbnet_hparams, fused="rrdbnet"))
register_arch(Arch("srresnet", SRResNet, srresnet_hparams, fused="srresnet"))
register_arch(Arch("msrresnet", MSRResNet, msrresnet_hparams))
register_arch(Arch("edsr", EDSR, edsr_hparams))
register_arch(Arch("rcan", RCAN, rcan_hparams))
register_arch(Arch("srvgg", SRVGGNetCompact, srvgg_hparams, fused="srvgg"))
register_arch(Arch("cascade", Cascade, None))

# name → (arch, hyper-parameters). Hyper-parameters not given take the constructor's defaults.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "rrdb23": ("rrdbnet", dict(num_block=23, num_feat=64, num_grow_ch=32, scale=4)),  # ESRGAN
    "rrdb6": ("rrdbnet", dict(num_block=6, num_feat=64, num_grow_ch=32, scale=4)),  # Real-ESRGAN anime 6B
    "srgan": ("srresnet", dict(num_block=16, num_feat=64, scale=4)),
    "msrresnet": ("msrresnet", dict(num_block=16, num_feat=64, scale=4)),
    "edsr": ("edsr", dict(num_block=16, num_feat=64, res_scale=1.0, scale=4)),  # EDSR-baseline
    # RCAN as published (10 groups × 20 RCABs, reduction 16): 15,592,355 parameters (the authors' count,
    # 15,592,379, adds the two fixed 24-parameter mean-shift convs that we keep as a buffer).
    "rcan": ("rcan", dict(num_group=10, num_block=20, num_feat=64, reduction=16, scale=4)),
    # Real-ESRGAN's compact models (SRVGGNetCompact), published as .pth and as ncnn .param/.bin.
    "realesr-general-x4v3": ("srvgg", dict(num_feat=64, num_conv=32, scale=4, act_type="prelu")),
    "realesr-animevideov3": ("srvgg", dict(num_feat=64, num_conv=16, scale=4, act_type="prelu")),
    # The ×16 perceptual-extreme setting: two ×4 ESRGAN generators in a row.
    "rrdb23x16": ("cascade", dict(stages=["rrdb23", "rrdb23"])),
}


MAX_SIZE = 1 << 16  # no channel count, width or depth of a real generator comes near


def build(arch: str, hparams: dict[str, Any]) -> SRNet:
    """Construct architecture `arch` with keyword hyper-parameters (a cascade's stages as nested dicts).
    Raises ValueError naming the hyper-parameter that is unknown or out of range (see `check_hparams`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    if arch == "cascade":
        return Cascade(*(create(s) if isinstance(s, str) else build(s["arch"], s["hparams"])
                         for s in cascade_stages(hparams)))
    check_hparams(arch, hparams)
    return ARCHS[arch].cls(**hparams)


def cascade_stages(hparams: Any) -> list[str | dict[str, Any]]:
    """A cascade's `stages`, each a registered name or an {"arch", "hparams"} dict; ValueError otherwise."""
    stages = hparams.get("stages") if isinstance(hparams, dict) else None
    if not isinstance(stages, list):
        raise ValueError(f"a cascade's hyper-parameters are {{'stages': [...]}}, got {_short(hparams)}")
    for i, s in enumerate(stages):
        if not (isinstance(s, str) or (isinstance(s, dict) and isinstance(s.get("arch"), str)
                                       and isinstance(s.get("hparams"), dict))):
            raise ValueError(f"cascade stage {i} must be a registered model name or {{'arch': ..., 'hparams': {{...}}}}"
                             f", got {_short(s)}")
    return stages


def check_hparams(arch: str, hparams: Any) -> None:
    """Raise ValueError naming the first hyper-parameter of `arch` (not a cascade) that its constructor does not
    take or that is of the wrong kind: whole numbers (never bools) from 1 to MAX_SIZE, finite numbers, bools, strings
    (the constructor checks their choices) and sequences of finite numbers, as the constructor's defaults are."""
    if not isinstance(hparams, dict):
        raise ValueError(f"the hyper-parameters of {arch} are a dict of keyword arguments, got {_short(hparams)}")
    defaults = _defaults(arch)
    for name, value in hparams.items():
        if name not in defaults:
            raise ValueError(f"{arch} has no hyper-parameter {name!r}; it takes {', '.join(defaults)}")
        default = defaults[name]
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = _whole(value) and 1 <= value <= MAX_SIZE, f"a whole number from 1 to {MAX_SIZE}"
        elif isinstance(default, float):
            ok, kind = _finite(value), "a finite number"
        elif isinstance(default, str):  # a choice, e.g. act_type
            ok, kind = isinstance(value, str) and len(value) <= 64, "a short string"
        else:  # a tuple, e.g. rgb_mean
            ok = isinstance(value, (list, tuple)) and len(value) <= MAX_SIZE and all(_finite(v) for v in value)
            kind = "a list of finite numbers"
        if not ok:
            raise ValueError(f"{arch} hyper-parameter {name}={_short(value)} must be {kind}")


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _defaults(arch: str) -> dict[str, Any]:
    """The constructor's keyword arguments of `arch` with their defaults (its hyper-parameters)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    params = inspect.signature(ARCHS[arch].cls).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def create(name: str, **overrides: Any) -> SRNet:
    """Build the registered variant `name` (see `VARIANTS`), e.g. `create("rrdb23")` or
    `create("rrdb23", scale=2)`; overrides replace the table's hyper-parameters."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(VARIANTS)}")
    arch, hparams = VARIANTS[name]
    return build(arch, {**hparams, **overrides})


def variant_name(arch: str, hparams: dict[str, Any]) -> str | None:
    """The registered name whose hyper-parameters (defaults filled in) equal `hparams`, if any."""
    wanted = _normalized(full_hparams(arch, hparams))
    for name, (v_arch, v_hparams) in VARIANTS.items():
        if v_arch == arch and _normalized(full_hparams(v_arch, v_hparams)) == wanted:
            return name
    return None


def same_network(a: SRNet, b: SRNet) -> bool:
    """Whether `a` and `b` have one architecture and equal hyper-parameters (defaults filled in), so that their
    weights are interchangeable."""
    return a.arch == b.arch and _normalized(full_hparams(a.arch, a.hparams)) == _normalized(
        full_hparams(b.arch, b.hparams))


def require_same_network(net: SRNet, gan_net: SRNet) -> None:
    """Raise ValueError unless `gan_net` is the same network as `net` (so alpha can blend their weights)."""
    if not same_network(net, gan_net):
        raise ValueError(f"the GAN weights are a {gan_net.arch} {gan_net.hparams}, not the same network as "
                         f"{net.arch} {net.hparams}: alpha blends two versions of one network")


def full_hparams(arch: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """`hparams` with the constructor's defaults filled in; a cascade's stages as {"arch", "hparams"} dicts."""
    if arch == "cascade":
        stages = [VARIANTS[s] if isinstance(s, str) else (s["arch"], s["hparams"]) for s in hparams["stages"]]
        return {"stages": [{"arch": a, "hparams": full_hparams(a, hp)} for a, hp in stages]}
    return {**_defaults(arch), **hparams}


def _normalized(value: Any) -> Any:
    """Hyper-parameters compared as JSON stores them: tuples as lists, numbers as floats."""
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value
