"""Training configuration and the presets of the published recipes.

A preset is one row of `PRESETS`: the fields of `TrainConfig` it sets. The command line can override any field
(`--set ema_decay=0.99`), and the whole configuration is saved as `config.json` beside the checkpoints, so a run
can be resumed or repeated from it alone.

Sources: ESRGAN (Wang et al. 2018) and BasicSR's `train_ESRGAN_x4.yml` / `train_RRDBNet_PSNR_x4.yml`
(PSNR stage: L1, Adam 2e-4, betas (0.9, 0.99), cosine restarts every 250k for 1M iterations, EMA 0.999; GAN
stage: 1.0·perceptual(conv5_4, L1) + 5e-3·RaGAN + 1e-2·L1, Adam 1e-4 for both nets, halved at 50k/100k/200k/
300k of 400k); SRGAN (Ledig et al. 2017: SRResNet trained with MSE, Adam 1e-4, betas (0.9, 0.999); then VGG54
(after activation, rescaled) + 1e-3·adversarial, 1e-4 for 100k then 1e-5 for 100k); the ×16 perceptual-extreme
system (Jo, Yang and Kim, "Investigating Loss Functions for Extreme Super-Resolution", NTIRE 2020 workshop, and
its public training script: two ×4 RRDBNets in a cascade, 384² HR crops in batches of 4, 75k iterations of
pixel loss (Huber) then 75k more adding 1e-3·LPIPS (AlexNet) + 1e-3·U-Net GAN + 1·feature matching, Adam 1e-5
for both nets, gradient norms clipped at 0.1, CutMix on half of the discriminator steps).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

# The tag in config.json that marks a folder as a run of ours (train/rundir.py): a folder whose config.json lacks
# it is somebody else's, and train.run never writes into it.
RUN_FORMAT = "esrgan-engine train run"


class TrainError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


class ConfigError(TrainError):
    """A configuration field has a value the trainer cannot use. `field` names it (train.run names its flag)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}")


@dataclass
class TrainConfig:
    preset: str = ""
    stage: str = "psnr"  # "psnr": pixel loss only; "gan": + perceptual + adversarial, needs a discriminator
    # network: a registered variant of engine.models, with hyper-parameter overrides
    model: str = "rrdb23"
    model_args: dict[str, Any] = field(default_factory=dict)
    scale: int = 4
    # data
    data: str = ""  # HR folder
    data_lr: str = ""  # optional paired LR folder (otherwise LR is made on the fly with MATLAB imresize)
    val: str = ""  # validation HR folder (optional)
    val_lr: str = ""
    gt_size: int = 128  # HR crop side
    batch_size: int = 16  # per process (as BasicSR's batch_size_per_gpu)
    num_workers: int = 4
    use_flip: bool = True
    use_rot: bool = True
    # optimisation
    iters: int = 1_000_000
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    scheduler: str = "cosine_restart"  # "cosine_restart" | "multistep" | "constant"
    milestones: list[int] = field(default_factory=list)  # multistep: lr × gamma at each
    gamma: float = 0.5
    periods: list[int] = field(default_factory=lambda: [250_000] * 4)  # cosine_restart
    restart_weights: list[float] = field(default_factory=lambda: [1.0] * 4)
    eta_min: float = 1e-7
    ema_decay: float = 0.999  # 0 disables the EMA generator
    # losses
    pixel_loss: str = "l1"  # "l1" | "mse" | "huber" (smooth L1, δ = 1)
    pixel_weight: float = 1.0
    perceptual_weight: float = 0.0
    perceptual_layers: dict[str, float] = field(default_factory=lambda: {"conv5_4": 1.0})
    perceptual_criterion: str = "l1"
    gan_type: str = "ragan"  # "ragan" | "vanilla" | "unet-hinge" (discriminator "unet-gan": encoder + decoder)
    gan_weight: float = 0.0
    gan_start: int = 0  # GAN stage: iterations of pixel loss only (PSNR pre-training) before the rest starts
    discriminator: str = ""  # "vgg128" | "unet" | "unet-gan" | "srgan" (train.discriminators)
    discriminator_args: dict[str, Any] = field(default_factory=dict)
    feature_matching_weight: float = 0.0  # Huber between the discriminator's features of G(z) and x ("unet-gan")
    feature_matching_layers: list[float] = field(default_factory=list)  # a weight per layer; empty: their mean
    cutmix_prob: float = 0.0  # "unet-gan": share of discriminator steps that add a CutMix image and consistency
    consistency_weight: float = 1.0  # weight of the CutMix consistency term in the discriminator's loss
    lpips_weight: float = 0.0
    lpips_net: str = "alex"  # "alex" | "vgg" (train.lpips)
    lpips_backbone_weights: str = ""  # torchvision's alexnet-owt-7be5be79.pth / vgg16-397923af.pth
    lpips_lin_weights: str = ""  # the LPIPS release's weights/v0.1/alex.pth / vgg.pth
    lpips_random_init: bool = False  # tests only: random LPIPS networks
    grad_clip: float = 0.0  # clip each network's gradient norm to this (0: off)
    pretrained: str = ""  # generator checkpoint to start from (the PSNR net for a GAN stage)
    vgg19_weights: str = ""
    perceptual_random_init: bool = False  # tests only: a randomly initialised VGG19
    # runtime
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "none"  # "none" | "bf16" | "fp16" (fp16 needs a GPU and uses a gradient scaler)
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    log_every: int = 100
    val_every: int = 5_000
    save_every: int = 5_000
    keep_states: int = 2  # training states kept for --resume (model files are all kept)
    sample_count: int = 4  # validation images in the LR / output / HR grid

    def to_json(self) -> str:
        """config.json: the fields, tagged with RUN_FORMAT."""
        return json.dumps({"format": RUN_FORMAT, **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A configuration from field values; every value is checked (`check`)."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                raise ConfigError(key, "is not a configuration field" + (
                    f"; did you mean {', '.join(close)}?" if close else f"; the fields: {', '.join(names)}"))
        cfg = cls(**d)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Check the type and range of every field (normalising ints given for floats, lists for betas).

        Raises:
            ConfigError: naming the field, the accepted values and the value given.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _typed(f.name, getattr(self, f.name), hints[f.name]))
        for name in ("scale", "gt_size", "batch_size", "iters", "log_every", "val_every", "save_every", "keep_states"):
            _at_least(name, getattr(self, name), 1)
        for name in ("num_workers", "gan_start", "sample_count"):
            _at_least(name, getattr(self, name), 0)
        for name, high in _AT_MOST.items():  # a typo here would allocate without bound before any message
            if getattr(self, name) > high:
                raise ConfigError(name, f"must be at most {high}, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError("seed", f"must be an integer in [0, 2^32), got {self.seed}")
        for name in ("pixel_weight", "perceptual_weight", "gan_weight", "feature_matching_weight",
                     "consistency_weight", "lpips_weight", "grad_clip", "eta_min"):
            _at_least(name, getattr(self, name), 0)
        for name in ("lr_g", "lr_d", "gamma"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be a number > 0, got {getattr(self, name)}")
        for name, value in (("ema_decay", self.ema_decay), ("betas", self.betas[0]), ("betas", self.betas[1])):
            if not 0 <= value < 1:
                raise ConfigError(name, f"must be in [0, 1), got {value}")
        if not 0 <= self.cutmix_prob <= 1:
            raise ConfigError("cutmix_prob", f"must be in [0, 1], got {self.cutmix_prob}")
        if self.gt_size % self.scale:
            raise ConfigError("gt_size", f"must be a multiple of scale {self.scale} (the LR crop is gt_size/scale "
                                         f"pixels), got {self.gt_size}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(name, f"must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        for name in ("milestones", "periods"):
            for v in getattr(self, name):
                _at_least(name, v, 0 if name == "milestones" else 1)
        for name in ("restart_weights", "feature_matching_layers"):
            for v in getattr(self, name):
                _at_least(name, v, 0)
        for key, v in self.perceptual_layers.items():
            _at_least(f"perceptual_layers[{key!r}]", v, 0)
        if self.scheduler == "cosine_restart" and (not self.periods or len(self.periods) != len(self.restart_weights)):
            raise ConfigError("periods", f"and restart_weights must be two lists of one length ≥ 1 (one weight per "
                                         f"cosine period), got {self.periods} and {self.restart_weights}")


_ESRGAN_PSNR = dict(
    stage="psnr", model="rrdb23", gt_size=128, batch_size=16, iters=1_000_000, lr_g=2e-4, betas=(0.9, 0.99),
    scheduler="cosine_restart", periods=[250_000] * 4, restart_weights=[1.0] * 4, eta_min=1e-7,
    pixel_loss="l1", pixel_weight=1.0, ema_decay=0.999, val_every=5_000, save_every=5_000,
)
_ESRGAN_GAN = dict(
    stage="gan", model="rrdb23", gt_size=128, batch_size=16, iters=400_000, lr_g=1e-4, lr_d=1e-4,
    betas=(0.9, 0.99), scheduler="multistep", milestones=[50_000, 100_000, 200_000, 300_000], gamma=0.5,
    pixel_loss="l1", pixel_weight=1e-2, perceptual_weight=1.0, perceptual_layers={"conv5_4": 1.0},
    perceptual_criterion="l1", gan_type="ragan", gan_weight=5e-3, discriminator="vgg128", ema_decay=0.999,
    val_every=5_000, save_every=5_000,
)
_SRGAN_MSE = dict(
    stage="psnr", model="srgan", gt_size=96, batch_size=16, iters=1_000_000, lr_g=1e-4, betas=(0.9, 0.999),
    scheduler="constant", pixel_loss="mse", pixel_weight=1.0, ema_decay=0.0,
)
_SRGAN_GAN = dict(
    # VGG54 after activation with SRGAN's 1/12.75 feature rescaling: (1/12.75)² ≈ 6e-3 on the squared error.
    stage="gan", model="srgan", gt_size=96, batch_size=16, iters=200_000, lr_g=1e-4, lr_d=1e-4,
    betas=(0.9, 0.999), scheduler="multistep", milestones=[100_000], gamma=0.1, pixel_weight=0.0,
    perceptual_weight=6e-3, perceptual_layers={"relu5_4": 1.0}, perceptual_criterion="mse",
    gan_type="vanilla", gan_weight=1e-3, discriminator="srgan", ema_decay=0.0,
)
# A small RRDBNet that trains on a CPU in minutes: the shipped default model is this preset.
_TINY_NET = dict(model="rrdb6", model_args={"num_block": 2, "num_feat": 32, "num_grow_ch": 16})
_TINY = dict(
    stage="psnr", **_TINY_NET, gt_size=64, batch_size=8, num_workers=2, iters=12_000, lr_g=5e-4,
    betas=(0.9, 0.99), scheduler="cosine_restart", periods=[12_000], restart_weights=[1.0], eta_min=1e-6,
    pixel_loss="l1", ema_decay=0.999, log_every=50, val_every=500, save_every=500,
)
_TINY_GAN = dict(
    stage="gan", **_TINY_NET, gt_size=64, batch_size=4, num_workers=2, iters=2_000, lr_g=1e-4, lr_d=1e-4,
    betas=(0.9, 0.99), scheduler="multistep", milestones=[1_000], gamma=0.5, pixel_weight=1e-2,
    perceptual_weight=1.0, perceptual_layers={"conv5_4": 1.0}, gan_type="ragan", gan_weight=5e-3,
    discriminator="unet", discriminator_args={"num_feat": 16}, ema_decay=0.999, log_every=50, val_every=500,
    save_every=500,
)

_X16_PERCEPTUAL = dict(
    stage="gan", model="rrdb23x16", scale=16, gt_size=384, batch_size=4, iters=150_000, gan_start=75_000,
    lr_g=1e-5, lr_d=1e-5, betas=(0.9, 0.999), scheduler="constant", pixel_loss="huber", pixel_weight=1.0,
    lpips_weight=1e-3, lpips_net="alex", gan_type="unet-hinge", gan_weight=1e-3, discriminator="unet-gan",
    feature_matching_weight=1.0, cutmix_prob=0.5, consistency_weight=1.0, grad_clip=0.1, ema_decay=0.999,
    val_every=1_000, save_every=1_000,
)

_CHOICES: dict[str, tuple[str, ...]] = {
    "stage": ("psnr", "gan"),
    "scheduler": ("constant", "multistep", "cosine_restart"),
    "pixel_loss": ("l1", "mse", "huber"),
    "perceptual_criterion": ("l1", "mse", "fro"),
    "gan_type": ("ragan", "vanilla", "unet-hinge"),
    "lpips_net": ("alex", "vgg"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("none", "bf16", "fp16"),
}


_AT_MOST = {"gt_size": 4096, "batch_size": 4096, "num_workers": 256}


def _at_least(name: str, value: float, low: float) -> None:
    if not value >= low:
        kind = "an integer" if isinstance(value, int) else "a number"
        raise ConfigError(name, f"must be {kind} ≥ {low}, got {value}")


def _typed(name: str, value: Any, hint: Any) -> Any:
    """`value` as the field's type `hint` (int for float, list for tuple), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(name, f"must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, f"must be a string, got {value!r}")
    if hint is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            size = f"{len(args)} " if origin is tuple else ""
            raise ConfigError(name, f"must be a list of {size}{args[0].__name__} values, got {value!r}")
        types = [args[0]] * len(value) if origin is list else list(args)
        return origin(_typed(name, v, t) for v, t in zip(value, types, strict=True))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(name, f"must be a JSON object (name: value), got {value!r}")
        return {k: _typed(f"{name}[{k!r}]", v, args[1]) for k, v in value.items()}
    raise TypeError(f"no check for the type {hint} of field {name}")


PRESETS: dict[str, dict[str, Any]] = {
    "esrgan-psnr": _ESRGAN_PSNR,
    "esrgan-gan": _ESRGAN_GAN,
    "srgan": _SRGAN_MSE,  # SRResNet with MSE; continue with srgan-gan
    "srgan-gan": _SRGAN_GAN,
    "tiny": _TINY,
    "tiny-gan": _TINY_GAN,
    "x16-perceptual": _X16_PERCEPTUAL,  # PSNR pre-training (gan_start) then the ×16 perceptual-extreme losses
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The configuration of preset `name` with `overrides` applied."""
    if name not in PRESETS:
        raise ConfigError("preset", f"must be one of {', '.join(PRESETS)}; got {name!r}")
    return TrainConfig.from_dict({**PRESETS[name], "preset": name, **overrides})


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a JSON value (`lr_g=1e-4`, `milestones=[10,20]`); a bare word is a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise TrainError(f"--set expects KEY=VALUE (e.g. --set ema_decay=0.99), got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def learning_rate(cfg: TrainConfig, base_lr: float, it: int) -> float:
    """Learning rate at iteration `it` (0-based), a pure function of `it`, so resuming restores the schedule.

    multistep: base·gamma^(milestones ≤ it). cosine_restart (BasicSR's CosineAnnealingRestartLR): in period k of
    length T_k with restart weight w_k, eta_min + w_k·(base − eta_min)·(1 + cos(π·t/T_k))/2, t counted from the
    period's start; after the last period, eta_min.
    """
    if cfg.scheduler == "constant":
        return base_lr
    if cfg.scheduler == "multistep":
        return base_lr * cfg.gamma ** sum(1 for m in cfg.milestones if it >= m)
    if cfg.scheduler == "cosine_restart":
        start = 0
        for period, weight in zip(cfg.periods, cfg.restart_weights, strict=True):
            if it < start + period:
                cos = 0.5 * (1 + math.cos(math.pi * (it - start) / period))
                return cfg.eta_min + weight * (base_lr - cfg.eta_min) * cos
            start += period
        return cfg.eta_min
    raise ValueError(f"scheduler must be constant, multistep or cosine_restart, got {cfg.scheduler!r}")
