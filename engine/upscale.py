"""`python -m engine.upscale -i FILE_OR_DIR -o OUT_DIR [-n MODEL_OR_CHECKPOINT] [-s 4] [-t 0] ...`

Upscales images with seam-free blended tiles. With no -n it uses the shipped default model (weights/). Outputs
are written to a temporary file and renamed; existing outputs are kept unless --overwrite; --skip-existing
resumes an interrupted folder run. A file that fails is reported by name with the reason, the others are still
written, and the exit code is 1 at the end. Real-ESRGAN's spellings --model_path and --tile_pad are accepted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import models
from .engines import load as load_engine
from .imageio import DEFAULT_MAX_PIXELS, ImageError, list_inputs, output_extension, read_image, write_image
from .inference import DEFAULT_BATCH, DEFAULT_TILE_OVERLAP, Backend, TorchBackend, infer
from .ort import from_network as ort_backend

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_MODEL = "tiny_x4"


def shipped_models() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def resolve_model(name_or_path: str | None) -> Path:
    """A checkpoint path, an engine directory, or the name of a shipped model in weights/ (default: the shipped
    default model)."""
    name = name_or_path or DEFAULT_MODEL
    path = Path(name)
    if path.is_file() or (path / "manifest.json").is_file():
        return path
    shipped = WEIGHTS_DIR / f"{name}.safetensors"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"-n {name}: neither a checkpoint file, an engine directory nor a shipped model (shipped: "
                            f"{', '.join(shipped_models()) or 'none found in ' + str(WEIGHTS_DIR)})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.upscale", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="an image file or a folder of images")
    p.add_argument("-o", "--output", default="results", help="output folder (default: results)")
    p.add_argument("-n", "--model", "--model_path", "--model-path", dest="model",
                   help=f"checkpoint file (any supported format), engine directory (python -m engine.build) or "
                   f"shipped model name (default: {DEFAULT_MODEL})")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "triton"], default="auto",
                   help="how a checkpoint runs: auto = PyTorch on CUDA, ONNX Runtime on the CPU (bf16: PyTorch); "
                   "triton = our fused kernels on a GPU (RRDBNet, SRResNet) (default: auto)")
    p.add_argument("-s", "--outscale", type=float, help="final scale, resized after the network (default: the "
                   "model's scale)")
    p.add_argument("-t", "--tile", type=int, help="tile side in input pixels; 0 = no tiling (default: chosen "
                   "from the memory budget)")
    p.add_argument("--tile-overlap", "--tile_pad", dest="tile_overlap", type=int, default=DEFAULT_TILE_OVERLAP,
                   help=f"overlap of neighbouring tiles in input pixels (default: {DEFAULT_TILE_OVERLAP})")
    p.add_argument("--batch", type=int, help=f"tiles per network call (default: an engine's own, else "
                   f"{DEFAULT_BATCH})")
    precision = p.add_mutually_exclusive_group()
    for flag, help_text in (("--fp32", "float32 (default on the CPU)"), ("--fp16", "float16 (default on CUDA)"),
                            ("--bf16", "bfloat16")):
        precision.add_argument(flag, dest="precision", action="store_const", const=flag[2:], help=help_text)
    p.add_argument("--device", default="auto", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format on CUDA (default: off)")
    p.add_argument("--suffix", default="out", help="output name suffix: NAME_SUFFIX.EXT (default: out)")
    p.add_argument("--ext", default="auto", help="auto (the input's), png, jpg, webp or tif (default: auto)")
    p.add_argument("--alpha", type=float, help="network interpolation weight of --gan-weights, in [0, 1] "
                   "(default: none, the model as it is)")
    p.add_argument("--gan-weights", help="the GAN checkpoint of the same network, blended in by --alpha "
                   "(default: none)")
    p.add_argument("--alpha-upsampler", choices=["model", "bicubic"], default="model",
                   help="how the alpha channel of RGBA images is upscaled (default: model)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output exists (resume a run)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression bombs) (default: {DEFAULT_MAX_PIXELS})")
    p.add_argument("--threads", type=int, default=0, help="host threads for conversion and blending, and ONNX "
                   "Runtime's intra-op threads (default: 0 = all cores)")
    return p


def _backend(args: argparse.Namespace) -> Backend:
    source = resolve_model(args.model)
    if source.is_dir():  # a built engine: its precision, backend and endpoints are fixed by the build
        if args.gan_weights or args.precision or args.backend != "auto":
            raise ValueError(f"-n {source} is a built engine: --gan-weights, --fp32/--fp16/--bf16 and --backend "
                             f"were chosen when it was built (python -m engine.build)")
        eng = load_engine(source, threads=args.threads)
        if args.alpha is not None:
            seconds = eng.set_alpha(args.alpha)
            print(f"alpha {args.alpha}: weights refitted in {seconds * 1e3:.0f} ms")
        return eng
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision or ("fp16" if device.startswith("cuda") else "fp32")
    net, info = models.load(source)
    gan = None
    if args.alpha is not None or args.gan_weights:
        if args.alpha is None or not args.gan_weights:
            raise ValueError("--alpha and --gan-weights go together: the blend of the model (alpha 0) and its GAN "
                             "fine-tune (alpha 1)")
        gan, _ = models.load(args.gan_weights)
    kind = args.backend
    if kind == "auto":
        kind = "onnxruntime" if device == "cpu" and precision == "fp32" else "torch"
    if kind == "triton":
        from .fused import TritonBackend

        backend: Backend = TritonBackend(net, device=device, dtype=precision, gan_net=gan)
    elif kind == "onnxruntime":
        if device != "cpu" or precision != "fp32":
            raise ValueError("--backend onnxruntime runs fp32 on the CPU here; for GPUs or other precisions build "
                             "an engine (python -m engine.build) or use --backend torch")
        backend = ort_backend(net, threads=args.threads, gan_net=gan)
    else:
        backend = TorchBackend(net, device=device, dtype=precision, channels_last=args.channels_last, gan_net=gan)
    if args.alpha is not None:
        backend.set_alpha(args.alpha)  # type: ignore[attr-defined]
    return backend


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.overwrite and args.skip_existing:
        print("error: --overwrite and --skip-existing exclude each other", file=sys.stderr)
        return 2
    try:
        inputs = list_inputs(args.input)
        backend = _backend(args)
        output_extension(inputs[0], args.ext)  # validate --ext once, before any work
    except (ImageError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    out_dir = Path(args.output)
    written, skipped, failed = 0, 0, []
    start = time.perf_counter()
    files = tqdm(inputs, unit="image", disable=len(inputs) < 2, dynamic_ncols=True)
    for path in files:
        files.set_postfix_str(path.name)
        name = f"{path.stem}_{args.suffix}" if args.suffix else path.stem
        target = out_dir / f"{name}{output_extension(path, args.ext)}"
        if target.exists() and not args.overwrite:
            if args.skip_existing:
                skipped += 1
                continue
            failed.append((path, f"{target} exists; pass --overwrite to replace it or --skip-existing to keep it"))
            continue
        try:
            image = read_image(path, max_pixels=args.max_pixels)
            with tqdm(unit="tile", leave=False, dynamic_ncols=True, desc=path.name, disable=None) as bar:
                result = infer(backend, image, tile=args.tile, tile_overlap=args.tile_overlap, batch=args.batch,
                               outscale=args.outscale, alpha_upsampler=args.alpha_upsampler, threads=args.threads,
                               progress=bar.update)
            assert isinstance(result, np.ndarray)  # numpy in, numpy out
            write_image(target, result)
            written += 1
        except (ImageError, ValueError) as e:
            failed.append((path, str(e)))
        except (MemoryError, torch.OutOfMemoryError) as e:
            failed.append((path, f"out of memory ({e.__class__.__name__}); use a smaller --tile"))
    files.close()

    elapsed = time.perf_counter() - start
    print(f"{written} written to {out_dir}, {skipped} skipped, {len(failed)} failed, in {elapsed:.1f} s")
    for path, reason in failed:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
