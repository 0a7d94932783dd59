"""`python -m engine.build --model rrdb23 --fp16|--int8|--fp32 [--weights A] [--gan-weights B --alpha 0.8]
[--backend auto|tensorrt|onnxruntime|triton|native] [--tile 256] [--calib DIR] [-o engines/NAME] [--overwrite]`

Builds an engine directory (see `engine.manifest`): the ONNX graph of the network at `--alpha`, a TensorRT plan
where TensorRT is used, both endpoint weight sets when --gan-weights is given (so `Engine.set_alpha` refits
without a rebuild), and `manifest.json`. `--backend auto` picks TensorRT where it is installed and a GPU is
present, else ONNX Runtime, and says which and why; `--backend triton` runs our fused kernels (the engine holds the
checkpoints, packed when loaded); `--backend native` compiles those kernels for one GPU architecture (`--arch`, no
GPU needed) into our own plan, run by the C++ runtime of engine._C (`kernels.plan`). INT8 is explicit quantization
(Q/DQ; for triton and native an INT8 trunk) calibrated on the images of --calib, with weight scales and activation
ranges that hold for every alpha. The engine is built in a temporary folder beside -o, checked against PyTorch
(`verify`: a tolerance per precision) and only then renamed into place; an engine already at -o is replaced only
with --overwrite, and a folder that is not an engine never.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import models
from .backends import registry
from .backends.registry import PROBE_SIDE, EngineError
from .engines import build_lock, check_target, load, write_engine
from .machine import Unavailable
from .manifest import library_versions, sha256

log = logging.getLogger("engine")

DEFAULT_TILE = 256
DEFAULT_BATCH = 1
# A built shape holds at most 4096² input pixels (tile² · batch): the engines' int32 offsets and the plan's arena
# stay far from their limits (docs/engines.md gives the arena at this limit), and larger tiles gain nothing
# (docs/tiling.md).
MAX_TILE_PIXELS = 4096 * 4096
# GPU architectures the native backend compiles for (Triton's CUDA targets our kernels run on: Ampere and newer,
# for bf16 and int8 tl.dot)
SM_ARCHS = (80, 86, 87, 89, 90, 100, 101, 103, 110, 120, 121)

# The parity check of a built engine against the PyTorch fp32 network on one probe (images in [0, 1]):
# max |engine − PyTorch| / max(1, max |PyTorch|) for float engines; PSNR (peak 1) for INT8. Each limit is about ten
# times the worst difference measured (docs/engines.md, "The check's limits, measured"): a wrong engine (wrong
# weights, layout or precision) fails, and a sound one has room for other GPUs' kernels. A backend may hold a
# precision to another limit (`BackendInfo.tolerance`: TensorRT's fp32 runs TF32).
MAX_DIFFERENCE = {
    "fp32": 1e-4,  # accumulation order only
    "fp16": 2e-2,  # fp16 rounding
    "bf16": 1e-1,  # fp16's limit scaled for 3 fewer mantissa bits (not measurable on a CPU, triton-lang/triton#11584)
}
# INT8: the probe is a crop of a calibration image (the activation ranges hold for photos, not noise); below 30 dB
# (an RMS error of 8 levels of 255) an INT8 engine is visibly wrong (measurements: docs/engines.md).
INT8_MIN_PSNR = 30.0
BACKEND_OPTIONS = ("arch", "timing_cache")  # engine.build flags only some backends take (BackendInfo.options)


class BuildError(ValueError):
    """A build cannot start; the message names the option and the fix."""


class VerificationError(BuildError):
    """The built engine does not compute what the network computes (beyond the precision's tolerance)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.build", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"registered model ({', '.join(models.registry.VARIANTS)}); with --weights it "
                   "must match the checkpoint (default: the checkpoint's network)")
    p.add_argument("--weights", help="checkpoint of the network: any supported format, any registered architecture "
                   f"({', '.join(models.registry.ARCHS)}), or a published model's name (python -m engine.models list) "
                   "(default: none; --random-weights is then required)")
    p.add_argument("--random-weights", action="store_true",
                   help="build --model with random weights (for benchmarks only) (default: off)")
    p.add_argument("--gan-weights", help="the GAN fine-tune of the same network: enables alpha (default: none)")
    p.add_argument("--alpha", type=float, help="network interpolation weight in [0, 1] the engine starts at "
                   "(default: 0 with --gan-weights)")
    precision = p.add_mutually_exclusive_group()
    for name, text in (("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16"),
                       ("int8", "INT8 by explicit Q/DQ quantization; needs --calib")):
        takes = [b.name for b in _builders() if name in b.precisions]
        default = [b.name for b in _builders() if b.precisions[0] == name]
        precision.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                               help=f"{text}: {', '.join(takes)} (default with {', '.join(default) or 'none'})")
    p.add_argument("--backend", choices=["auto", *(b.name for b in _builders())], default="auto",
                   help="engine backend: " + "; ".join(f"{b.name}: {b.label} ({', '.join(b.precisions)}"
                                                        f"{', a GPU' if b.needs_gpu else ''})" for b in
                                                        _builders())
                   + " (default: auto: " + ", else ".join(_auto_order()) + ")")
    p.add_argument("--arch", type=int, help="native: the SM architecture to compile for, e.g. 90 for H100/H200 "
                   "(default: this machine's GPU, else 90)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"tile side in input pixels the engine is built for (TensorRT profile max) "
                   f"(default: {DEFAULT_TILE})")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"tiles per call the engine is built for (default: {DEFAULT_BATCH})")
    p.add_argument("--calib", help="folder of images for INT8 calibration (default: none)")
    p.add_argument("--calib-method", help="INT8 activation range method: max, percentile, mse or entropy "
                   "(default: the measured best, docs/int8.md)")
    p.add_argument("--calib-images", type=int, default=32, help="at most this many calibration images, at least 1 "
                   "(default: 32)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (default: timing.cache beside the engine)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check of the built engine against "
                   "PyTorch on a small probe (default: check)")
    p.add_argument("-o", "--output", help="engine directory (default: engines/MODEL-PRECISION-BACKEND)")
    p.add_argument("--overwrite", action="store_true", help="replace the engine already at -o (only a folder that "
                   "engine.build wrote: its manifest and files, nothing else) (default: off: an existing engine is "
                   "refused)")
    return p


def _builders() -> list[registry.BackendInfo]:
    """The registered backends that build engine folders (the --backend choices)."""
    return [b for b in registry.backends() if b.build is not None]


def _auto_order() -> list[str]:
    return [b.name for b in sorted((b for b in _builders() if b.auto is not None), key=lambda b: b.auto or 0)]


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend, why) for --backend: the one asked for, or for auto the first of `_auto_order()` that runs here."""
    if requested != "auto":
        return requested, f"asked for with --backend {requested}"
    skipped: list[str] = []
    for name in _auto_order():
        why_not = registry.get(name).unavailable()
        if why_not is None:
            return name, (f"{'; '.join(skipped)}; " if skipped else "") + f"{name} runs here"
        skipped.append(f"not {name}: {why_not}")
    raise BuildError("no engine backend runs on this machine: " + "; ".join(skipped))


def _options_of(name: str) -> list[str]:
    return [b.name for b in registry.backends() if name in b.options]


def check_args(args: argparse.Namespace, backend: str) -> str:
    """Every check that needs no file, before any work; returns the precision."""
    from export.quantize import METHODS

    info = registry.get(backend)
    precision = args.precision or info.precisions[0]
    for option in BACKEND_OPTIONS:
        if getattr(args, option) is not None and option not in info.options:
            flag = "--" + option.replace("_", "-")
            raise BuildError(f"{flag} is for --backend {' or '.join(_options_of(option))}")
    if args.arch is not None and args.arch not in SM_ARCHS:
        raise BuildError(f"--arch {args.arch} is not a GPU architecture the native backend compiles for "
                         f"({', '.join(map(str, SM_ARCHS))}): e.g. --arch 90 for H100/H200, 80 for A100")
    if precision not in info.precisions:
        takes = [b.name for b in _builders() if precision in b.precisions]
        raise BuildError(f"--{precision} is for --backend {' or '.join(takes)}; {info.label} engines take "
                         f"{', '.join('--' + p for p in info.precisions)}")
    if args.tile <= 0 or args.batch <= 0:
        raise BuildError(f"--tile and --batch must be positive, got {args.tile} and {args.batch}")
    if args.tile * args.tile * args.batch > MAX_TILE_PIXELS:
        raise BuildError(f"--tile {args.tile} × --batch {args.batch} is {args.tile ** 2 * args.batch:,} pixels per "
                         f"call, more than an engine takes ({MAX_TILE_PIXELS:,}, 4096²): engine.infer tiles any "
                         f"image, so use a smaller --tile (default {DEFAULT_TILE}) or --batch")
    if precision == "int8" and not args.calib:
        raise BuildError("--int8 needs --calib DIR: a folder of images like the ones the engine will upscale "
                         "(activation ranges are calibrated on them)")
    if args.calib and precision != "int8":
        raise BuildError("--calib is for --int8 only")
    if args.calib_images < 1:
        raise BuildError(f"--calib-images must be at least 1, got {args.calib_images}")
    if args.calib_method is not None and args.calib_method not in METHODS:
        raise BuildError(f"--calib-method must be one of {', '.join(METHODS)}, got {args.calib_method!r}")
    why = info.cannot_build()
    if why is not None:  # fail before any work, with what to install
        raise Unavailable(why)
    return precision


def check_network(net: models.SRNet, backend: str, precision: str, tile: int) -> None:
    """What the backend and the tile need from the network, before any work."""
    why = registry.get(backend).network(net, precision)
    if why is not None:
        others = [b.name for b in _builders() if b.network(net, precision) is None and precision in b.precisions]
        raise BuildError(f"--backend {backend}: {why}" + (f"; use --backend {' or '.join(others)}" if others else ""))
    if tile % net.input_multiple:
        raise BuildError(f"--tile {tile} must be a multiple of {net.input_multiple} for this ×{net.scale} network")


def _networks(args: argparse.Namespace) -> tuple[models.SRNet, models.SRNet | None, dict[str, Any]]:
    """(network, GAN network or None, the manifest's model and alpha entries)."""
    endpoints: dict[str, Any] = {}
    if args.weights:
        if args.random_weights:
            raise BuildError("--random-weights and --weights exclude each other")
        args.weights = models.pretrained.locate(args.weights)  # a file, or a published model's name
        net, info = models.load(args.weights)
        endpoints["psnr"] = {"file": Path(args.weights).name, "sha256": sha256(args.weights)}
        if args.model:
            wanted = models.create(args.model)
            if not models.registry.same_network(net, wanted):
                raise BuildError(f"--weights {args.weights} is a {net.arch} {net.hparams}, not --model {args.model}: "
                                 f"drop --model to build the checkpoint's network")
    else:
        if not args.model:
            raise BuildError("give --weights CHECKPOINT (or --model NAME --random-weights for benchmarks)")
        if not args.random_weights:
            raise BuildError(f"--model {args.model} without --weights would build random weights: give --weights "
                             f"CHECKPOINT, or --random-weights for a benchmark engine")
        torch.manual_seed(0)
        net = models.create(args.model)
        endpoints["psnr"] = {"file": None, "sha256": None, "random": True}
    if args.alpha is not None and not args.gan_weights:
        raise BuildError("--alpha needs --gan-weights (the GAN fine-tune blended in at alpha 1)")
    alpha = 0.0 if args.alpha is None else float(args.alpha)
    if not 0.0 <= alpha <= 1.0:
        raise BuildError(f"--alpha must be in [0, 1], got {alpha}")
    gan = None
    if args.gan_weights:
        args.gan_weights = models.pretrained.locate(args.gan_weights)
        gan, _ = models.load(args.gan_weights)
        if not models.registry.same_network(net, gan):
            raise BuildError(f"--gan-weights {args.gan_weights} is a {gan.arch} {gan.hparams}, not the same network "
                             f"as {net.arch} {net.hparams}: alpha blends two versions of one network")
        endpoints["gan"] = {"file": Path(args.gan_weights).name, "sha256": sha256(args.gan_weights)}
    name = args.model or models.registry.variant_name(net.arch, net.hparams)
    model_entry = {"name": name, "arch": net.arch, "hparams": json.loads(json.dumps(net.hparams))}
    return net.eval(), (gan.eval() if gan is not None else None), {"model": model_entry,
                                                                   "alpha": {"value": alpha, **endpoints}}


def build(args: argparse.Namespace) -> Path:
    backend, why = choose_backend(args.backend)
    print(f"backend: {backend} ({why})")
    precision = check_args(args, backend)
    net, gan, entries = _networks(args)
    check_network(net, backend, precision, args.tile)
    name = entries["model"]["name"] or net.arch
    out = Path(args.output or Path("engines") / f"{name}-{precision}-{backend}")
    info = registry.get(backend)
    assert info.build is not None
    request = registry.BuildRequest(
        net=net, gan=gan, entries=entries, precision=precision, tile=args.tile, batch=args.batch, out=out,
        calibration=(lambda: read_calibration_images(args.calib, limit=args.calib_images)) if args.calib else None,
        calib_method=args.calib_method, calib_source=str(args.calib),
        options={k: getattr(args, k) for k in info.options})
    with build_lock(out):  # a second build into -o fails here, at once
        check_target(out, overwrite=args.overwrite)  # before any work, and again before the rename
        start = time.perf_counter()
        built = info.build(request)
        manifest = {**entries, "scale": net.scale, "in_channels": net.in_channels, "out_channels": net.out_channels,
                    "multiple": net.input_multiple, "precision": precision, "backend": backend, "io_dtype": "fp32",
                    "tile": args.tile, "batch": args.batch, "versions": library_versions(), **built.manifest}
        check = None
        if not args.no_verify:
            reason = info.unverifiable(manifest)
            if reason is not None:
                print(f"not verified: {reason}")
            else:
                reference, probe = request.blended, built.probe
                check = lambda folder: verify(folder, reference, probe=probe)  # noqa: E731
        written = write_engine(out, manifest, built.write, overwrite=args.overwrite, check=check)
    print(f"wrote {written} ({precision}, {backend}) in {time.perf_counter() - start:.1f} s")
    return written


def read_calibration_images(folder: str, *, limit: int) -> list[np.ndarray]:
    from export.quantize import read_calibration_images

    return read_calibration_images(folder, limit=limit)


def verify(directory: str | os.PathLike[str], net: models.SRNet, *, probe: torch.Tensor | None = None,
           side: int = PROBE_SIDE) -> float:
    """Run the engine in `directory` and the reference network on one probe (`probe`, or uniform noise of `side`
    pixels); print the difference and the limit of the engine's precision (`MAX_DIFFERENCE`, `INT8_MIN_PSNR`) and
    return the difference (PSNR in dB for INT8). Raises VerificationError above the limit, or on NaN or Inf."""
    engine = load(directory)
    precision = engine.manifest["precision"]
    if probe is None:
        side = min(max(engine.multiple, side // engine.multiple * engine.multiple), engine.tile)
        probe = torch.from_numpy(np.random.default_rng(0).random((1, net.in_channels, side, side), dtype=np.float32))
    side = probe.shape[-1]
    with torch.no_grad():
        ref = net.to(engine.device).float()(probe.to(engine.device)).float()
    got = engine.run(probe.to(engine.device)).float()
    where = f"on a {side}×{side} probe"
    if not bool(torch.isfinite(ref).all()):
        raise VerificationError(f"the network's own output is not finite (NaN or Inf) {where}: its weights are broken; "
                                f"check the checkpoint (the engine was not written)")
    if got.shape != ref.shape or not bool(torch.isfinite(got).all()):
        what = f"has shape {tuple(got.shape)}, not {tuple(ref.shape)}" if got.shape != ref.shape else \
            "holds NaN or Inf"
        raise VerificationError(f"the built engine's output {what} {where}: the engine is broken (it was not written)")
    if precision == "int8":
        mse = float((got - ref).double().pow(2).mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
        text = f"PSNR {psnr:.1f} dB from PyTorch fp32 {where} (limit: at least {INT8_MIN_PSNR:.0f} dB for int8)"
        if psnr < INT8_MIN_PSNR:
            raise VerificationError(f"verification failed: {text}: the engine is not written; calibrate on images "
                                    f"like the ones you upscale (--calib), try another --calib-method, or build "
                                    f"--fp16")
        print(f"verified: {text}")
        return psnr
    scale = max(1.0, float(ref.abs().max()))
    err = float((got - ref).abs().max())
    limit = registry.get(engine.manifest["backend"]).tolerance.get(precision, MAX_DIFFERENCE[precision]) * scale
    text = f"max abs difference from PyTorch fp32 {where}: {err:.2e} (limit {limit:.1e} for {precision})"
    if err > limit:
        raise VerificationError(f"verification failed: {text}: the engine is not written; report this with the "
                                f"command line (--no-verify skips the check)")
    print(f"verified: {text}")
    return err


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build(args)
    except KeyboardInterrupt:
        print("interrupted: -o holds what it held before, or the whole new engine if the build had just finished; "
              "never a part of one", file=sys.stderr)
        return 130
    except VerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (BuildError, EngineError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
