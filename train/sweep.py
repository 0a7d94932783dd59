"""`python -m train.sweep PSNR GAN --alphas 0,0.2,0.4,0.6,0.8,1 --val VAL_DIR -o OUT_DIR`

Network interpolation after training: one blended checkpoint per alpha (θ = (1 − α)·θ_PSNR + α·θ_GAN, as
`python -m engine.interp` writes one), and a validation table of Y-PSNR/SSIM per alpha (Markdown on stdout,
CSV in OUT_DIR/sweep.csv). PSNR falls and perceptual quality rises with alpha: the table shows the trade.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

import engine.models as models
from engine.models.registry import same_network

from .data import ValDataset
from .evaluate import evaluate_model, mean


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas must be comma-separated numbers like 0,0.5,1, got {text!r}") from None
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise ValueError(f"--alphas must be numbers in [0, 1], got {text!r}")
    return alphas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.sweep", description=__doc__.split("\n\n")[1])
    p.add_argument("psnr", help="PSNR-oriented checkpoint (alpha 0), any supported format")
    p.add_argument("gan", help="GAN checkpoint (alpha 1)")
    p.add_argument("--alphas", default="0,0.2,0.4,0.6,0.8,1", help="comma-separated (default: 0,0.2,0.4,0.6,0.8,1)")
    p.add_argument("--val", help="HR validation folder for the table (default: none, checkpoints only)")
    p.add_argument("--val-lr", help="paired LR validation folder (default: LR by MATLAB imresize)")
    p.add_argument("-o", "--out", required=True, help="output folder for alpha_*.safetensors and sweep.csv")
    p.add_argument("--device", default="cpu", help="device for validation (default: cpu)")
    args = p.parse_args(argv)
    try:
        alphas = parse_alphas(args.alphas)
        net_a, info_a = models.load(args.psnr)
        net_b, info_b = models.load(args.gan)
        if not same_network(net_a, net_b):
            raise ValueError(f"{args.psnr} and {args.gan} are different networks ({info_a.arch} {info_a.hparams} vs "
                             f"{info_b.arch} {info_b.hparams}); only two versions of one network blend")
        val = ValDataset(args.val, scale=info_a.scale, lr_dir=args.val_lr) if args.val else None
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    samples = [val[i] for i in range(len(val))] if val is not None else []
    out = Path(args.out)
    rows = []
    theta_psnr = {k: v.clone() for k, v in net_a.state_dict().items()}
    for alpha in alphas:
        net_a.load_state_dict(models.interpolate(theta_psnr, net_b, alpha))
        path = out / f"alpha_{alpha:.2f}.safetensors"
        models.save(net_a, path, metadata={"alpha": repr(alpha), "interp_a": args.psnr, "interp_b": args.gan})
        row = {"alpha": alpha, "checkpoint": str(path)}
        if samples:
            psnr_y, ssim_y = mean(evaluate_model(net_a, samples, info_a.scale, torch.device(args.device)))
            row |= {"psnr_y": round(psnr_y, 4), "ssim_y": round(ssim_y, 5)}
        rows.append(row)
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("| alpha | Y-PSNR (dB) | Y-SSIM | checkpoint |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['alpha']:.2f} | {r.get('psnr_y', '–')} | {r.get('ssim_y', '–')} | {r['checkpoint']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
