"""`python -m engine.build --model rrdb23 --fp16|--int8|--fp32 [--weights A] [--gan-weights B --alpha 0.8]
[--backend auto|tensorrt|onnxruntime|triton|native] [--tile 256] [--calib DIR] [-o engines/NAME]`

Builds an engine directory (see `engine.engines`): the ONNX graph of the network at `--alpha`, a TensorRT plan
where TensorRT is used, both endpoint weight sets when --gan-weights is given (so `Engine.set_alpha` refits
without a rebuild), and `manifest.json`. `--backend auto` picks TensorRT where it is installed and a GPU is
present, else ONNX Runtime, and says which and why; `--backend triton` runs our fused kernels (the engine holds the
checkpoints, packed when loaded); `--backend native` compiles those kernels for one GPU architecture (`--arch`, no
GPU needed) into our own plan, run by the C++ runtime of engine._C (`engine.plan`). INT8 is explicit quantization
(Q/DQ; for triton and native an INT8 trunk) calibrated on the images of --calib, with weight scales and activation
ranges that hold for every alpha.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import models
from .engines import EngineError, library_versions, load, write_engine

log = logging.getLogger("engine")

DEFAULT_TILE = 256
DEFAULT_BATCH = 1


class BuildError(ValueError):
    """A build cannot start; the message names the option and the fix."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.build", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"registered model ({', '.join(models.registry.VARIANTS)}); with --weights it "
                   "must match the checkpoint (default: the checkpoint's network)")
    p.add_argument("--weights", help="checkpoint of the network (any supported format) (default: none; "
                   "--random-weights is then required)")
    p.add_argument("--random-weights", action="store_true",
                   help="build --model with random weights (for benchmarks only) (default: off)")
    p.add_argument("--gan-weights", help="the GAN fine-tune of the same network: enables alpha (default: none)")
    p.add_argument("--alpha", type=float, help="network interpolation weight in [0, 1] the engine starts at "
                   "(default: 0 with --gan-weights)")
    precision = p.add_mutually_exclusive_group()
    for flag, text in (("--fp32", "float32 (default with onnxruntime)"), ("--fp16", "float16 (default with "
                       "tensorrt and triton)"), ("--bf16", "bfloat16 (triton only)"),
                       ("--int8", "INT8 by explicit Q/DQ quantization; needs --calib")):
        precision.add_argument(flag, dest="precision", action="store_const", const=flag[2:], help=text)
    p.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime", "triton", "native"], default="auto",
                   help="engine backend: triton runs our fused kernels (RRDBNet, SRResNet; a GPU); native compiles "
                   "them into a plan for engine._C's C++ runtime (default: auto: tensorrt with a GPU and TensorRT, "
                   "else onnxruntime)")
    p.add_argument("--arch", type=int, help="native: the SM architecture to compile for, e.g. 90 for H100/H200 "
                   "(default: this machine's GPU, else 90)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"tile side in input pixels the engine is built for (TensorRT profile max) "
                   f"(default: {DEFAULT_TILE})")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"tiles per call the engine is built for (default: {DEFAULT_BATCH})")
    p.add_argument("--calib", help="folder of images for INT8 calibration (default: none)")
    p.add_argument("--calib-method", help="INT8 activation range method: max, percentile, mse or entropy "
                   "(default: the measured best, see README)")
    p.add_argument("--calib-images", type=int, default=32, help="at most this many calibration images "
                   "(default: 32)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (default: timing.cache beside the engine)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check of the built engine against "
                   "PyTorch on a small probe (default: check)")
    p.add_argument("-o", "--output", help="engine directory (default: engines/MODEL-PRECISION-BACKEND)")
    return p


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend, why) for --backend."""
    from export.tensorrt import tensorrt_available

    has_trt, has_gpu = tensorrt_available(), torch.cuda.is_available()
    if requested == "onnxruntime":
        return "onnxruntime", "asked for with --backend onnxruntime"
    if requested in ("tensorrt", "triton", "native"):
        return requested, f"asked for with --backend {requested}"
    if has_trt and has_gpu:
        return "tensorrt", f"TensorRT is installed and a GPU is present ({torch.cuda.get_device_name()})"
    reasons = [r for r, missing in (("TensorRT is not installed", not has_trt), ("no CUDA GPU", not has_gpu))
               if missing]
    return "onnxruntime", " and ".join(reasons)


def _networks(args: argparse.Namespace) -> tuple[models.SRNet, models.SRNet | None, dict[str, Any]]:
    """(network, GAN network or None, the manifest's model and alpha entries)."""
    from .engines import sha256

    endpoints: dict[str, Any] = {}
    if args.weights:
        net, info = models.load(args.weights)
        endpoints["psnr"] = {"file": Path(args.weights).name, "sha256": sha256(args.weights)}
        if args.model:
            wanted = models.create(args.model)
            if not models.registry.same_network(net, wanted):
                raise BuildError(f"--weights {args.weights} is a {net.arch} {net.hparams}, not --model {args.model}: "
                                 f"drop --model to build the checkpoint's network")
        if args.random_weights:
            raise BuildError("--random-weights and --weights exclude each other")
    else:
        if not args.model:
            raise BuildError("give --weights CHECKPOINT (or --model NAME --random-weights for benchmarks)")
        if not args.random_weights:
            raise BuildError(f"--model {args.model} without --weights would build random weights: give --weights "
                             f"CHECKPOINT, or --random-weights for a benchmark engine")
        torch.manual_seed(0)
        net = models.create(args.model)
        endpoints["psnr"] = {"file": None, "sha256": None, "random": True}
    gan = None
    if args.gan_weights:
        gan, _ = models.load(args.gan_weights)
        if not models.registry.same_network(net, gan):
            raise BuildError(f"--gan-weights {args.gan_weights} is a {gan.arch} {gan.hparams}, not the same network "
                             f"as {net.arch} {net.hparams}: alpha blends two versions of one network")
        endpoints["gan"] = {"file": Path(args.gan_weights).name, "sha256": sha256(args.gan_weights)}
    elif args.alpha is not None:
        raise BuildError("--alpha needs --gan-weights (the GAN fine-tune blended in at alpha 1)")
    alpha = 0.0 if args.alpha is None else float(args.alpha)
    if not 0.0 <= alpha <= 1.0:
        raise BuildError(f"--alpha must be in [0, 1], got {alpha}")
    name = args.model or models.registry.variant_name(net.arch, net.hparams)
    model_entry = {"name": name, "arch": net.arch, "hparams": json.loads(json.dumps(net.hparams))}
    return net.eval(), (gan.eval() if gan is not None else None), {"model": model_entry,
                                                                   "alpha": {"value": alpha, **endpoints}}


def _blended(net: models.SRNet, gan: models.SRNet | None, alpha: float) -> models.SRNet:
    """The network the engine starts as: `net` itself without GAN weights or at alpha 0, else the blend."""
    return net if gan is None or alpha == 0.0 else models.interpolated(net, gan, alpha)


def build(args: argparse.Namespace) -> Path:
    from export.onnx import export_onnx, initializer_arrays, input_multiple, save, set_initializers

    backend, why = choose_backend(args.backend)
    print(f"backend: {backend} ({why})")
    precision = args.precision or ("fp16" if backend in ("tensorrt", "triton", "native") else "fp32")
    if args.arch is not None and backend != "native":
        raise BuildError("--arch is for --backend native (TensorRT plans are built for the GPU they are built on)")
    if backend in ("triton", "native"):
        return build_fused(args, precision, backend)
    if precision == "bf16":
        raise BuildError("--bf16 is for --backend triton or native; ONNX Runtime and TensorRT engines take --fp16 "
                         "or --fp32")
    if args.tile <= 0 or args.batch <= 0:
        raise BuildError(f"--tile and --batch must be positive, got {args.tile} and {args.batch}")
    if precision == "int8" and not args.calib:
        raise BuildError("--int8 needs --calib DIR: a folder of images like the ones the engine will upscale "
                         "(activation ranges are calibrated on them)")
    if args.calib and precision != "int8":
        raise BuildError("--calib is for --int8 only")
    if backend == "onnxruntime" and precision == "fp16":  # our ONNX Runtime backend runs the CPU provider
        print("note: ONNX Runtime's CPU provider casts most fp16 ops to fp32 and back: on the CPU an fp16 engine is "
              "slower than --fp32 and less exact (README \"Engines\", bench/ort_cpu.py)")
    if backend == "tensorrt":
        from export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before any work, with what to install
    net, gan, entries = _networks(args)
    alpha = entries["alpha"]["value"]
    multiple = input_multiple(net)
    if args.tile % multiple:
        raise BuildError(f"--tile {args.tile} must be a multiple of {multiple} for this ×{net.scale} network")
    name = entries["model"]["name"] or net.arch
    out = Path(args.output or Path("engines") / f"{name}-{precision}-{backend}")
    start = time.perf_counter()

    quant: dict[str, Any] = {}
    if precision == "int8":
        from export.quantize import DEFAULT_METHOD, quantize, read_calibration_images

        method = args.calib_method or DEFAULT_METHOD
        images = read_calibration_images(args.calib, limit=args.calib_images)
        print(f"calibrating INT8 ({method}) on {len(images)} images of {args.calib}"
              + (" at alpha 0, 0.5 and 1" if gan is not None else ""))
        # TensorRT networks are strongly typed: what is not INT8 runs in the graph's float type, so fp16 there
        compute = "fp16" if backend == "tensorrt" else "fp32"
        graph = quantize(net, images, gan_net=gan, method=method, precision=compute)
        quant = {"method": method, "calibration_images": len(images), "alpha_safe": gan is not None,
                 "float_compute": compute}
    else:
        graph = export_onnx(net, precision=precision)
    start_net = _blended(net, gan, alpha)
    set_initializers(graph, initializer_arrays(graph, start_net.state_dict()))

    from safetensors.numpy import save_file

    from .inference import TorchBackend

    write: dict[str, Any] = {"model.onnx": lambda path: save(graph, path)}
    if gan is not None:
        # a TensorRT refit may also ask for constants the builder folded into weights (export.tensorrt.refit_arrays)
        if backend == "tensorrt":
            from export.tensorrt import refit_arrays as endpoint_arrays
        else:
            endpoint_arrays = initializer_arrays
        psnr_arrays, gan_arrays = endpoint_arrays(graph, net.state_dict()), endpoint_arrays(graph, gan.state_dict())
        write["weights_psnr.safetensors"] = lambda path: save_file(psnr_arrays, path)
        write["weights_gan.safetensors"] = lambda path: save_file(gan_arrays, path)
    bpp = TorchBackend(net).bytes_per_pixel() * (0.5 if backend == "tensorrt" and precision != "fp32" else 1.0)
    manifest: dict[str, Any] = {
        **entries, "scale": net.scale, "in_channels": net.in_channels, "out_channels": net.out_channels,
        "multiple": multiple, "precision": precision, "backend": backend, "io_dtype": "fp32", "tile": args.tile,
        "batch": args.batch, "bytes_per_pixel": bpp, "versions": library_versions(),
    }
    if quant:
        manifest["int8"] = quant
    if backend == "tensorrt":
        from export.tensorrt import build_engine, profile_shapes

        shapes = profile_shapes(args.tile, args.batch, net.in_channels, multiple)
        cache = Path(args.timing_cache) if args.timing_cache else out.parent / "timing.cache"

        def plan(path: str) -> None:
            info = build_engine(Path(path).with_name("model.onnx"), path, min_shape=shapes[0], opt_shape=shapes[1],
                                max_shape=shapes[2], timing_cache=cache, refit=True)
            manifest["gpu_arch"] = info["gpu_arch"]
            manifest["tensorrt"] = {k: v for k, v in info.items() if k != "gpu_arch"}

        write["model.plan"] = plan
        manifest["profile"] = {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}
    written = write_engine(out, manifest, write)
    print(f"wrote {written} ({precision}, {backend}) in {time.perf_counter() - start:.1f} s")
    if not args.no_verify:
        verify(written, start_net)
    return written


def build_fused(args: argparse.Namespace, precision: str, backend: str) -> Path:
    """A Triton engine (the checkpoints, packed for the kernels when loaded) or a native one (the plan: the kernels
    compiled for --arch, the launch list, the packed weights), and the manifest."""
    if precision == "int8" and not args.calib:
        raise BuildError("--int8 needs --calib DIR: a folder of images like the ones the engine will upscale "
                         "(activation ranges are calibrated on them)")
    if args.calib and precision != "int8":
        raise BuildError("--calib is for --int8 only")
    if args.tile <= 0 or args.batch <= 0:
        raise BuildError(f"--tile and --batch must be positive, got {args.tile} and {args.batch}")
    net, gan, entries = _networks(args)
    if not isinstance(net, (models.RRDBNet, models.SRResNet)):
        raise BuildError(f"--backend {backend} runs RRDBNet and SRResNet, not {net.arch}: use onnxruntime or tensorrt")
    multiple = net.input_multiple
    if args.tile % multiple:
        raise BuildError(f"--tile {args.tile} must be a multiple of {multiple} for this ×{net.scale} network")
    quant: dict[str, Any] = {}
    if precision == "int8":
        if not isinstance(net, models.RRDBNet):
            raise BuildError("INT8 fused kernels run RRDBNet; build SRResNet with --fp16/--bf16/--fp32")
        from export.quantize import DEFAULT_METHOD, rdb_slice_ranges, read_calibration_images

        method = args.calib_method or DEFAULT_METHOD
        images = read_calibration_images(args.calib, limit=args.calib_images)
        print(f"calibrating the INT8 trunk ({method}, one range per RDB slice) on {len(images)} images of "
              f"{args.calib}" + (" at alpha 0, 0.5 and 1" if gan is not None else ""))
        quant = {"method": method, "calibration_images": len(images), "alpha_safe": gan is not None,
                 "slice_ranges": rdb_slice_ranges(net, images, gan_net=gan, method=method)}
    name = entries["model"]["name"] or net.arch
    out = Path(args.output or Path("engines") / f"{name}-{precision}-{backend}")
    start = time.perf_counter()
    manifest = {**entries, "scale": net.scale, "in_channels": net.in_channels, "out_channels": net.out_channels,
                "multiple": multiple, "precision": precision, "backend": backend, "io_dtype": "fp32",
                "tile": args.tile, "batch": args.batch, "versions": library_versions()}
    if quant:
        manifest["int8"] = quant
    write: dict[str, Any] = {}
    if backend == "triton":
        write["model.safetensors"] = lambda path: models.save(net, path)
        if gan is not None:
            write["gan.safetensors"] = lambda path: models.save(gan, path)
    else:
        from .plan import PLAN_VERSION, build_plan, fused_network, write_plan

        arch = args.arch or _local_arch() or 90
        print(f"compiling the fused kernels for sm_{arch}" + ("" if torch.cuda.is_available() else
                                                               " (no GPU here: triton.compile with a GPUTarget)"))
        fused = fused_network(net, precision, gan_net=gan, int8_ranges=quant.get("slice_ranges"), device="cpu")
        plan = build_plan(fused, [(args.batch, net.in_channels, args.tile, args.tile)], arch=arch,
                          meta={"model": entries["model"], "precision": precision, "alpha": entries["alpha"]})
        manifest["gpu_arch"] = f"sm_{arch}"
        manifest["plan"] = {"format_version": PLAN_VERSION, "kernels": len(plan.kernels),
                            "launches": len(plan.launches), "arena_bytes": max(s["arena_bytes"] for s in plan.shapes),
                            "weights_bytes": len(plan.weights), "triton": plan.meta["triton"]}
        write["model.plan"] = lambda path: write_plan(path, plan)
    written = write_engine(out, manifest, write)
    print(f"wrote {written} ({precision}, {backend}) in {time.perf_counter() - start:.1f} s")
    if args.no_verify:
        return written
    if backend == "native" and not (torch.cuda.is_available() and _local_arch() == arch):
        print(f"not verified: the plan runs on an sm_{arch} GPU and this machine has none (engine.plan."
              f"ReferenceExecutor interprets a plan on the CPU; tests do that)")
        return written
    if backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        print("not verified: the Triton kernels need a CUDA GPU to run, and this machine has none")
        return written
    verify(written, _blended(net, gan, entries["alpha"]["value"]))
    return written


def _local_arch() -> int | None:
    """This machine's GPU architecture (e.g. 90), or None without one."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def verify(directory: Path, net: models.SRNet, side: int = 64) -> float:
    """Run the built engine and the reference network on one probe tile; print and return the max abs error."""
    engine = load(directory)
    side = max(engine.multiple, side // engine.multiple * engine.multiple)
    side = min(side, engine.tile)
    x = torch.from_numpy(np.random.default_rng(0).random((1, net.in_channels, side, side), dtype=np.float32))
    with torch.no_grad():
        ref = net.to(engine.device).float()(x.to(engine.device))
    err = float((engine.run(x.to(engine.device)).float() - ref).abs().max())
    print(f"verified: max abs difference from PyTorch fp32 on a {side}×{side} probe: {err:.2e}")
    return err


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build(args)
    except (BuildError, EngineError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
