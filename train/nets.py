"""The networks of a run, built from its configuration: the generator (from pretrained weights if given), the
discriminator, the perceptual and LPIPS networks, and the check that the generator and the discriminator take
gt_size crops. A setting that does not build is a TrainError (or a ConfigError naming the field).
"""

from __future__ import annotations

import torch
from torch import nn

import engine.models as models
from engine.models.registry import same_network

from .config import ConfigError, TrainConfig, TrainError
from .discriminators import UNetDiscriminatorSN, build_discriminator
from .logs import log
from .losses import PerceptualLoss
from .lpips import LPIPS


def build_generator(cfg: TrainConfig) -> models.SRNet:
    """The generator `cfg.model` with `cfg.model_args` at `cfg.scale`, randomly initialised."""
    try:
        net = models.create(cfg.model, **{**cfg.model_args, "scale": cfg.scale})
    except (TypeError, ValueError) as e:
        raise TrainError(f"model {cfg.model!r} with model_args {cfg.model_args}: {e}") from None
    if net.scale != cfg.scale:  # a cascade's scale is its stages' product, not an argument
        raise TrainError(f"model {cfg.model} upscales ×{net.scale}, but the run is set to scale {cfg.scale}: set "
                         f"scale={net.scale} or choose a ×{cfg.scale} model")
    return net


def load_pretrained(net: models.SRNet, path: str) -> None:
    """Start from a checkpoint in any format engine.models.load accepts (EMA weights preferred)."""
    try:
        loaded, info = models.load(path)
    except (OSError, ValueError) as e:
        raise TrainError(f"--pretrained {path}: {e}") from None
    if not same_network(loaded, net):
        raise TrainError(f"--pretrained {path} is a {info.arch} {info.hparams}, but this run trains a {net.arch} "
                         f"{net.hparams}; pass a checkpoint of the same network or change the model settings")
    net.load_state_dict(loaded.state_dict())
    log.info("initialised the generator from %s (%s%s)", path, info.format,
             f", {info.wrapper}" if info.wrapper else "")


def discriminator(cfg: TrainConfig) -> nn.Module:
    """The discriminator `cfg.discriminator` with `cfg.discriminator_args`, randomly initialised."""
    try:
        return build_discriminator(cfg.discriminator, **cfg.discriminator_args)
    except (TypeError, ValueError) as e:
        raise TrainError(f"discriminator {cfg.discriminator} with discriminator_args "
                         f"{cfg.discriminator_args}: {e}") from None


def perceptual_loss(cfg: TrainConfig, device: torch.device) -> PerceptualLoss | None:
    """The VGG19 perceptual loss on `device`, or None when `cfg.perceptual_weight` is 0."""
    if cfg.perceptual_weight <= 0:
        return None
    try:
        return PerceptualLoss(cfg.perceptual_layers, criterion=cfg.perceptual_criterion,
                              weights=cfg.vgg19_weights or None, random_init=cfg.perceptual_random_init).to(device)
    except (OSError, ValueError) as e:
        raise TrainError(f"the perceptual loss (perceptual_layers {cfg.perceptual_layers}, --vgg19-weights "
                         f"{cfg.vgg19_weights or 'none'}): {e}") from None


def lpips_model(cfg: TrainConfig, device: torch.device) -> LPIPS | None:
    """LPIPS on `device` (a loss with `cfg.lpips_weight`, and a validation metric when its weights are given), or
    None when neither is asked for."""
    if not (cfg.lpips_weight > 0 or cfg.lpips_backbone_weights):
        return None
    try:
        return LPIPS(cfg.lpips_net, backbone_weights=cfg.lpips_backbone_weights or None,
                     lin_weights=cfg.lpips_lin_weights or None, random_init=cfg.lpips_random_init).to(device)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"the LPIPS loss/metric (lpips_weight={cfg.lpips_weight}): {e}\nPass them with "
                         "--set lpips_backbone_weights=PATH --set lpips_lin_weights=PATH") from None


def check_shapes(cfg: TrainConfig) -> None:
    """The networks take gt_size crops: checked on the meta device (no memory, no random draws).

    Raises:
        ConfigError: on gt_size, saying which multiple the generator needs or why the discriminator refuses it.
    """
    lr_size = cfg.gt_size // cfg.scale
    with torch.device("meta"), torch.no_grad():
        net_g = build_generator(cfg)
        if lr_size % net_g.input_multiple:
            raise ConfigError("gt_size", f"must be a multiple of {cfg.scale * net_g.input_multiple} for model "
                                         f"{cfg.model} (its LR input, gt_size/scale, a multiple of "
                                         f"{net_g.input_multiple}), got {cfg.gt_size}")
        if cfg.stage != "gan":
            return
        net_d = discriminator(cfg).eval()
        x = torch.zeros(1, 3, cfg.gt_size, cfg.gt_size)
        try:
            if isinstance(net_d, UNetDiscriminatorSN) and net_d.linear_enc is not None:
                net_d.forward_all(x)
            else:
                net_d(x)
        except (RuntimeError, ValueError) as e:
            raise ConfigError("gt_size", f"{cfg.gt_size} does not fit discriminator {cfg.discriminator}: "
                                         f"{str(e).splitlines()[0]}") from None
