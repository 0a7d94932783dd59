"""`python -m train.run --preset esrgan-psnr --data HR_DIR --val VAL_DIR --out runs/NAME [overrides]`

Trains one stage of a preset (see train/config.py: esrgan-psnr, esrgan-gan, srgan, srgan-gan, tiny, tiny-gan).
`--resume` continues the run in --out from its last saved state, with its saved config.json (flags given
with --resume override it, e.g. more --iters). The same command under `torchrun --nproc_per_node=N` trains
with DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import PRESETS, ConfigError, TrainConfig, TrainError, parse_override, preset
from .rundir import check_out, read_config, state_files
from .trainer import Trainer

# flag → config field, for the flags that are plain overrides
_FIELDS = {
    "data": "data", "data_lr": "data_lr", "val": "val", "val_lr": "val_lr", "pretrained": "pretrained",
    "vgg19_weights": "vgg19_weights", "perceptual_random_init": "perceptual_random_init", "iters": "iters",
    "batch_size": "batch_size", "gt_size": "gt_size", "scale": "scale", "lr": "lr_g", "workers": "num_workers",
    "seed": "seed", "amp": "amp", "channels_last": "channels_last", "compile": "compile", "device": "device",
    "val_every": "val_every", "save_every": "save_every", "log_every": "log_every",
}
_FLAGS = {field: "--" + flag.replace("_", "-") for flag, field in _FIELDS.items()}
# the fields that make the networks a training state holds: fixed once a run has started
_NETWORK = ("model", "model_args", "scale", "stage", "discriminator", "discriminator_args")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.run", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), help="recipe to train (required unless --resume)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, config.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last state")
    p.add_argument("--data", help="folder of HR training images (required unless --resume)")
    p.add_argument("--data-lr", help="paired LR folder (default: none, LR made with MATLAB imresize)")
    p.add_argument("--val", help="folder of HR validation images (default: none, no validation)")
    p.add_argument("--val-lr", help="paired LR validation folder (default: none)")
    p.add_argument("--pretrained", help="generator checkpoint to start from, any supported format "
                   "(default: none; the GAN stage starts from the PSNR net)")
    p.add_argument("--vgg19-weights", help="VGG19 ImageNet weights in torchvision's layout (vgg19-dcbb9e9d.pth), "
                   "needed by the perceptual loss (default: none)")
    p.add_argument("--perceptual-random-init", action="store_true", default=None,
                   help="FOR TESTS ONLY: a randomly initialised VGG19 instead of --vgg19-weights (default: off)")
    p.add_argument("--iters", type=int, help="total iterations (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="batch per process (default: the preset's)")
    p.add_argument("--gt-size", type=int, help="HR crop side in pixels (default: the preset's)")
    p.add_argument("--scale", type=int, help="upscaling factor (default: 4)")
    p.add_argument("--lr", type=float, help="generator learning rate (default: the preset's)")
    p.add_argument("--workers", type=int, help="DataLoader workers per process (default: the preset's)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision (default: none; fp16 on GPU "
                   "only, with a gradient scaler)")
    p.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format (default: off)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the generator (default: off)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto (cuda when available)")
    p.add_argument("--val-every", type=int, help="validate every N iterations (default: the preset's)")
    p.add_argument("--save-every", type=int, help="checkpoint every N iterations (default: the preset's)")
    p.add_argument("--log-every", type=int, help="log losses every N iterations (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, JSON value (e.g. --set ema_decay=0.99); repeatable")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides: dict[str, Any] = {field: getattr(args, flag) for flag, field in _FIELDS.items()
                                 if getattr(args, flag) is not None}
    for text in args.set:
        key, value = parse_override(text)
        overrides[key] = value
    if args.resume:
        check_out(Path(args.out), resume=True)  # a run of ours with a state, or a message saying what it is
        base = read_config(Path(args.out))
        assert base is not None
        changed = [key for key in _NETWORK if key in overrides and overrides[key] != base.get(key)]
        if changed:
            has = ", ".join(f"{k}={base.get(k)!r}" for k in changed)
            raise TrainError(f"--resume: {', '.join(changed)} cannot change when a run resumes (its training state "
                             f"holds those networks; the run has {has}). "
                             f"Drop those options, or start a new run from its weights with --pretrained "
                             f"{Path(args.out) / 'models' / 'net_g_latest.pth'}")
        if args.preset and args.preset != base.get("preset"):
            raise TrainError(f"--resume: {args.out} was trained with preset {base.get('preset')!r}, not "
                             f"{args.preset!r}; drop --preset")
        try:
            return TrainConfig.from_dict({**base, **overrides})
        except ConfigError as e:
            if e.field in overrides:
                raise
            raise TrainError(f"--resume: {Path(args.out) / 'config.json'}: {e}; the file was changed since the run "
                             "started, restore it") from None
    if not args.preset:
        raise TrainError("--preset is required (or --resume to continue a run)")
    return preset(args.preset, **overrides)


def message(e: TrainError) -> str:
    """The error for the user; a configuration field is named by its flag where it has one."""
    if isinstance(e, ConfigError) and e.field in _FLAGS:
        return f"{_FLAGS[e.field]} ({e.field}) {e.problem}"
    if isinstance(e, ConfigError):
        return f"--set {e.field}: {e.field} {e.problem}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        Trainer(cfg, args.out, resume=args.resume).run()
    except (TrainError, ValueError, OSError) as e:  # ValueError, OSError: a file the checks did not foresee
        print(f"error: {message(e) if isinstance(e, TrainError) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        states = state_files(Path(args.out))
        then = (f"python -m train.run --resume --out {args.out} continues from {states[-1][1]}" if states else
                "the run had no checkpoint yet")
        print(f"\ninterrupted: {then}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
