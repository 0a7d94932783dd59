"""`python -m train.sweep PSNR GAN --alphas 0,0.2,0.4,0.6,0.8,1 --val VAL_DIR -o OUT_DIR`

Network interpolation after training: one blended checkpoint per alpha (θ = (1 − α)·θ_PSNR + α·θ_GAN, as
`python -m engine.interp` writes one), and a validation table of Y-PSNR/SSIM per alpha (Markdown on stdout,
CSV in OUT_DIR/sweep.csv). PSNR falls and perceptual quality rises with alpha: the table shows the trade.
OUT_DIR may hold other files, but a file the sweep would write is replaced only if an earlier sweep wrote it.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import torch
from safetensors import safe_open

import engine.models as models
from engine.atomic import atomic_write
from engine.models.registry import same_network

from .data import ValDataset
from .evaluate import evaluate_model, mean

CSV_FIELDS = ("alpha", "checkpoint")


class SweepError(ValueError):
    """The sweep cannot run; the message says why and what to do."""


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas must be comma-separated numbers like 0,0.5,1, got {text!r}") from None
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise ValueError(f"--alphas must be numbers in [0, 1], got {text!r}")
    names = [f"{a:.2f}" for a in alphas]
    if len(set(names)) < len(names):
        raise ValueError(f"--alphas {text!r} gives two checkpoints one name (alpha_X.XX.safetensors): use distinct "
                         "alphas with at most two decimals")
    return alphas


def _ours(path: Path) -> bool:
    """Whether `path` is a file an earlier sweep wrote: a checkpoint with an interpolation's metadata, or the
    table."""
    if path.suffix == ".csv":
        try:
            with open(path, encoding="utf-8") as f:
                return f.readline().strip().split(",")[:2] == list(CSV_FIELDS)
        except (OSError, UnicodeDecodeError):
            return False
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - not a safetensors file at all: not ours
        return False
    return {"alpha", "interp_a", "interp_b"} <= set(meta)


def check_out(out: Path, alphas: list[float]) -> None:
    """Refuse an -o that is a file, or that holds a file of the sweep's names that an earlier sweep did not write.

    Raises:
        SweepError: naming the path and what to do.
    """
    if out.exists() and not out.is_dir():
        raise SweepError(f"-o {out} is a file, not a folder; choose a folder for the sweep")
    for path in [out / f"alpha_{a:.2f}.safetensors" for a in alphas] + [out / "sweep.csv"]:
        if (path.exists() or path.is_symlink()) and (path.is_symlink() or not path.is_file() or not _ours(path)):
            raise SweepError(f"{path} exists and was not written by train.sweep: nothing was changed. Choose another "
                             "folder for -o (or move that file away)")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SweepError(f"--device must be cpu or cuda (cuda:N), got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SweepError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise SweepError(f"--device must be cpu or cuda (cuda:N), got {name!r}")
    return device


def _write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue(), encoding="utf-8"))


def sweep(net_a: models.SRNet, net_b: models.SRNet, alphas: list[float], out: Path, samples: list[dict],
          device: torch.device, *, sources: tuple[str, str]) -> list[dict]:
    """Write out/alpha_{α:.2f}.safetensors for each alpha (net_a is overwritten) and score them on `samples`;
    returns the table's rows."""
    rows = []
    theta_psnr = {k: v.clone() for k, v in net_a.state_dict().items()}
    scale = net_a.scale
    for alpha in alphas:
        net_a.load_state_dict(models.interpolate(theta_psnr, net_b, alpha))
        path = out / f"alpha_{alpha:.2f}.safetensors"
        models.save(net_a, path, metadata={"alpha": repr(alpha), "interp_a": sources[0], "interp_b": sources[1]})
        row = {"alpha": alpha, "checkpoint": str(path)}
        if samples:
            psnr_y, ssim_y = mean(evaluate_model(net_a, samples, scale, device))
            row |= {"psnr_y": round(psnr_y, 4), "ssim_y": round(ssim_y, 5)}
        rows.append(row)
    return rows


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
    out = Path(args.out)
    try:
        alphas = parse_alphas(args.alphas)
        device = _device(args.device)
        check_out(out, alphas)
        net_a, info_a = models.load(args.psnr)
        net_b, info_b = models.load(args.gan)
        if not same_network(net_a, net_b):
            raise ValueError(f"{args.psnr} and {args.gan} are different networks ({info_a.arch} {info_a.hparams} vs "
                             f"{info_b.arch} {info_b.hparams}); only two versions of one network blend")
        val = ValDataset(args.val, scale=info_a.scale, lr_dir=args.val_lr) if args.val else None
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    samples = [val[i] for i in range(len(val))] if val is not None else []
    try:
        rows = sweep(net_a, net_b, alphas, out, samples, device, sources=(args.psnr, args.gan))
        _write_csv(out / "sweep.csv", rows)
    except OSError as e:
        print(f"error: writing the sweep in {out} failed: {e.strerror or e}", file=sys.stderr)
        return 2
    print("| alpha | Y-PSNR (dB) | Y-SSIM | checkpoint |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['alpha']:.2f} | {r.get('psnr_y', '–')} | {r.get('ssim_y', '–')} | {r['checkpoint']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
