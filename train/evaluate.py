"""Validation as SR papers report it: whole images upscaled, rounded to 8 bits, then Y-channel PSNR/SSIM with
`scale` pixels cropped from every border (engine.metrics). Shared by the trainer, the alpha sweep and the tests
of the shipped model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.metrics import psnr, ssim

from .degradations import imresize


@dataclass(frozen=True)
class Score:
    name: str
    psnr_y: float
    ssim_y: float


def to_uint8(planes: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] → (H, W, 3) uint8, clamped and rounded half to even."""
    return planes.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def upscale(model: nn.Module, lr: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Run `model` on one whole (C, h, w) image; returns (C, h·scale, w·scale) on the CPU, float32.

    Inputs whose sides the model cannot take (a pixel-unshuffle ×1/×2 RRDBNet needs multiples of 4/2) are
    padded by reflection and the output is cropped back.
    """
    multiple = int(getattr(model, "unshuffle", 1))
    h, w = lr.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    x = lr.unsqueeze(0).to(device, torch.float32)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    y = model(x)[0]
    s = y.shape[-1] // x.shape[-1]
    return y[:, : h * s, : w * s].float().cpu()


def score(name: str, out: torch.Tensor, hr: torch.Tensor, scale: int) -> Score:
    a, b = to_uint8(out), to_uint8(hr)
    return Score(name, psnr(a, b, crop_border=scale, y_channel=True), ssim(a, b, crop_border=scale, y_channel=True))


def evaluate(upscaler: Callable[[torch.Tensor], torch.Tensor], samples: Iterable[dict], scale: int) -> list[Score]:
    """Scores of `upscaler` ((3, h, w) → (3, h·scale, w·scale)) on ValDataset-style samples."""
    return [score(s["name"], upscaler(s["lr"]), s["hr"], scale) for s in samples]


def evaluate_model(model: nn.Module, samples: Iterable[dict], scale: int,
                   device: torch.device | str = "cpu") -> list[Score]:
    was_training = model.training
    model.eval()
    try:
        return evaluate(lambda lr: upscale(model, lr, device), samples, scale)
    finally:
        model.train(was_training)


def evaluate_bicubic(samples: Iterable[dict], scale: int) -> list[Score]:
    """The papers' baseline: MATLAB bicubic upscaling of the LR image."""
    return evaluate(lambda lr: imresize(lr, scale), samples, scale)


def mean(scores: list[Score]) -> tuple[float, float]:
    """Mean Y-PSNR (dB) and Y-SSIM over images."""
    return float(np.mean([s.psnr_y for s in scores])), float(np.mean([s.ssim_y for s in scores]))


def sample_grid(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """One row per image: LR (nearest-upscaled to the HR size) | output | HR, as an (H, W, 3) uint8 RGB image."""
    strips = []
    for lr, out, hr in rows:
        h, w = hr.shape[-2:]
        lr_big = F.interpolate(lr[None].float(), size=(h, w), mode="nearest")[0]
        strips.append(np.concatenate([to_uint8(lr_big), to_uint8(out), to_uint8(hr)], axis=1))
    width = max(s.shape[1] for s in strips)
    return np.concatenate([np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0))) for s in strips], axis=0)
