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
    multiple = int(getattr(model, "input_multiple", 1))
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


def report(checkpoint: str, val_dir: str, val_lr: str | None = None, device: str = "cpu") -> dict:
    """Y-PSNR/SSIM of a checkpoint and of bicubic on a validation folder, per image and on average."""
    import engine.models as models

    from .data import ValDataset

    net, info = models.load(checkpoint, device=device)
    val = ValDataset(val_dir, scale=info.scale, lr_dir=val_lr)
    samples = [val[i] for i in range(len(val))]
    ours, bicubic = evaluate_model(net, samples, info.scale, device), evaluate_bicubic(samples, info.scale)
    (p, s), (bp, bs) = mean(ours), mean(bicubic)
    return {
        "checkpoint": checkpoint, "scale": info.scale, "images": [o.name for o in ours],
        "model": {"psnr_y": round(p, 4), "ssim_y": round(s, 5)},
        "bicubic": {"psnr_y": round(bp, 4), "ssim_y": round(bs, 5)},
        "per_image": [{"name": o.name, "psnr_y": round(o.psnr_y, 4), "ssim_y": round(o.ssim_y, 5),
                       "bicubic_psnr_y": round(b.psnr_y, 4), "bicubic_ssim_y": round(b.ssim_y, 5)}
                      for o, b in zip(ours, bicubic, strict=True)],
    }


def markdown(rep: dict) -> str:
    lines = ["| image | bicubic Y-PSNR / SSIM | model Y-PSNR / SSIM |", "|---|---|---|"]
    for r in rep["per_image"]:
        lines.append(f"| {r['name']} | {r['bicubic_psnr_y']:.2f} dB / {r['bicubic_ssim_y']:.4f} | "
                     f"{r['psnr_y']:.2f} dB / {r['ssim_y']:.4f} |")
    b, m = rep["bicubic"], rep["model"]
    lines.append(f"| **mean** | **{b['psnr_y']:.2f} dB / {b['ssim_y']:.4f}** | "
                 f"**{m['psnr_y']:.2f} dB / {m['ssim_y']:.4f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m train.evaluate CHECKPOINT --val VAL_DIR [--json OUT]`: model vs bicubic, Y channel, crop = scale."""
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=main.__doc__)
    p.add_argument("checkpoint", help="generator checkpoint, any format engine.models.load accepts")
    p.add_argument("--val", required=True, help="folder of HR images (LR made with MATLAB imresize)")
    p.add_argument("--val-lr", help="paired LR folder (default: none)")
    p.add_argument("--json", help="also write the report as JSON to this file (default: none)")
    p.add_argument("--device", default="cpu", help="default: cpu")
    args = p.parse_args(argv)
    try:
        rep = report(args.checkpoint, args.val, args.val_lr, args.device)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(rep))
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(rep, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
