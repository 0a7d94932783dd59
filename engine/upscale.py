"""`python -m engine.upscale -i FILE_OR_DIR -o OUT_DIR [-n MODEL_OR_CHECKPOINT] [-s 4] [-t 0] ...`

Upscales images and videos (.mp4, .mkv, .mov, .webm, .avi: every frame, with timestamps, audio and subtitles kept;
needs PyAV) with seam-free blended tiles. With no -n it uses the shipped default model (weights/). Every output
is written to a temporary file and renamed; existing outputs are kept unless --overwrite, and --skip-existing
resumes an interrupted folder run. An input is never written over. A file that fails is reported by name with the
reason and the others are still written. Real-ESRGAN's spellings --model_path and --tile_pad are accepted.

Exit status: 0 every image written (or skipped); 1 the run went through but some files failed (each is named);
2 the run could not start (bad arguments, model, output folder; nothing written); 130 interrupted (Ctrl-C: the
current file is cleaned up, the summary printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import models
from .atomic import remove_stale_temps, temp_path
from .backends import registry
from .backends.registry import Backend
from .engines import load as load_engine
from .imageio import (
    DEFAULT_MAX_PIXELS,
    VIDEO_FORMATS,
    ImageError,
    image_size,
    is_video,
    list_inputs,
    output_extension,
    read_image,
    write_image,
)
from .inference import (
    DEFAULT_BATCH,
    DEFAULT_TILE_OVERLAP,
    auto_tile,
    backend_batch,
    check_tiling,
    infer,
    output_size,
    tiles_in_flight,
)
from .machine import available_memory, usable_cpus
from .video import SEGMENT_FRAMES

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_MODEL = "tiny_x4"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_OUTSCALE = 64.0
_SUFFIX = re.compile(r"[\w.+=@,-]{0,64}")  # letters, digits, _ . + = @ , - (no path separators)

log = logging.getLogger("engine")


class UsageError(ValueError):
    """The run cannot start: an argument, the model or the output folder; the message names it and the fix."""


def shipped_models() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def resolve_model(name_or_path: str | None) -> Path:
    """A checkpoint path, an engine directory, or the name of a shipped model in weights/ (default: the shipped
    default model)."""
    name = name_or_path or DEFAULT_MODEL
    path = Path(name)
    if path.is_file() or (path / "manifest.json").is_file():
        return path
    if path.exists() and not path.is_dir():
        raise UsageError(f"-n {name}: not a regular file (a pipe, socket or device); give a checkpoint file, an "
                         "engine directory or a shipped model name")
    shipped = WEIGHTS_DIR / f"{name}.safetensors"
    if re.fullmatch(r"[\w.-]+", name) and shipped.is_file():
        return shipped
    if models.pretrained.is_published(name):
        try:
            return models.pretrained.resolve(name)
        except models.PretrainedError as e:
            raise UsageError(f"-n {name}: {e}") from None
    raise UsageError(f"-n {name}: neither a checkpoint file, an engine directory, a shipped model (shipped: "
                     f"{', '.join(shipped_models()) or 'none found in ' + str(WEIGHTS_DIR)}) nor a published model "
                     f"(python -m engine.models list)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.upscale", description=__doc__.split("\n\n")[1],
                                epilog=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="an image or video file, or a folder of them")
    p.add_argument("-o", "--output", default="results", help="output folder (default: results)")
    p.add_argument("-n", "--model", "--model_path", "--model-path", dest="model",
                   help=f"checkpoint file (any supported format, ncnn .param too), engine directory (python -m "
                   f"engine.build), shipped model name or published model name (python -m engine.models list) "
                   f"(default: {DEFAULT_MODEL})")
    runners = registry.backends()
    p.add_argument("--backend", choices=["auto", *(b.name for b in runners if b.from_network)], default="auto",
                   help="how a checkpoint runs: auto = PyTorch on CUDA; on the CPU at fp32, the fastest installed "
                   "backend for the network's architecture (docs/onnxruntime.md), else PyTorch (bf16: PyTorch); "
                   + "; ".join(f"{b.name} = {b.label} ({', '.join(b.precisions)})" for b in runners if b.from_network)
                   + " (default: auto)")
    p.add_argument("-s", "--outscale", type=float, help="final scale, resized after the network (default: the "
                   "model's scale)")
    p.add_argument("-t", "--tile", type=int, help="tile side in input pixels, at least twice --tile-overlap; 0 = no "
                   "tiling (default: chosen from the memory budget)")
    p.add_argument("--tile-overlap", "--tile_pad", dest="tile_overlap", type=int, default=DEFAULT_TILE_OVERLAP,
                   help=f"overlap of neighbouring tiles in input pixels (default: {DEFAULT_TILE_OVERLAP})")
    p.add_argument("--batch", type=int, help=f"tiles per network call, at least 1 (default: an engine's own, else "
                   f"{DEFAULT_BATCH})")
    precision = p.add_mutually_exclusive_group()
    for flag, help_text in (("--fp32", "float32 (default on the CPU)"), ("--fp16", "float16 (default on CUDA)"),
                            ("--bf16", "bfloat16")):
        precision.add_argument(flag, dest="precision", action="store_const", const=flag[2:], help=help_text)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto = cuda when available)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format on CUDA (default: off)")
    p.add_argument("--suffix", default="out", help="output name suffix: NAME_SUFFIX.EXT; letters, digits and "
                   "_ . + = @ , - only; empty: the input's name (default: out)")
    p.add_argument("--ext", default="auto", help="auto (the input's), png, jpg, webp or tif (default: auto)")
    p.add_argument("--alpha", type=float, help="network interpolation weight of --gan-weights, in [0, 1] "
                   "(default: none, the model as it is)")
    p.add_argument("--gan-weights", help="the GAN checkpoint of the same network, blended in by --alpha "
                   "(default: none)")
    p.add_argument("--alpha-upsampler", choices=["model", "bicubic"], default="model",
                   help="how the alpha channel of RGBA images is upscaled (default: model)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input) "
                   "(default: keep them)")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose complete output exists (resume a "
                   "run) (default: off)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger input images, from their header (decompression bombs) (default: "
                   f"{DEFAULT_MAX_PIXELS})")
    p.add_argument("--codec", help="video encoder: libx264, libx265, ffv1 (lossless), libvpx-vp9, … (default: "
                   "libx264; libvpx-vp9 for .webm)")
    p.add_argument("--crf", type=int, help="video quality, the encoder's constant rate factor (lower is better; "
                   "default: the encoder's own)")
    p.add_argument("--preset", help="video encoder's speed preset, e.g. libx264/libx265: ultrafast, veryfast, fast, "
                   "medium, slow (default: the encoder's own, medium for libx264)")
    p.add_argument("--codec-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the video encoder, by FFmpeg's name (ffmpeg -h encoder=NAME), e.g. "
                   "tune=animation or x265-params=aq-mode=3; repeat for more")
    p.add_argument("--pix-fmt", help="video pixel format, e.g. yuv420p, yuv420p10le (default: per encoder, 10-bit "
                   "for 10-bit sources)")
    p.add_argument("--segment-frames", type=int, default=SEGMENT_FRAMES,
                   help="frames per resumable video segment: an interrupted video resumes after its last finished "
                   f"segment (default: {SEGMENT_FRAMES})")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run on a Ray cluster: auto (the cluster this machine belongs to, else a local one) or the "
                   "head's ADDRESS; one worker per GPU (docs/distributed.md) (default: off, this process)")
    p.add_argument("--workers", type=int, help="Ray workers (default: one per GPU of the cluster, else one per 2 "
                   "CPUs)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs each Ray worker takes, e.g. 0.5 for two per GPU "
                   "(default: 1)")
    p.add_argument("--threads", type=int, default=0, help="host threads for conversion and blending, and ONNX "
                   "Runtime's intra-op threads, at most the CPU count (default: 0 = all cores)")
    return p


# ---------------------------------------------------------------------------------------------------------
# Checks before any work


def video_options(args: argparse.Namespace) -> dict[str, str]:
    """The video encoder's options from --codec-opt KEY=VALUE, --crf and --preset; UsageError naming a malformed
    or repeated one."""
    from .video import encoder_options

    given: dict[str, str] = {}
    for item in args.codec_opt:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value:
            raise UsageError(f"--codec-opt {item}: give KEY=VALUE, an option of the encoder by FFmpeg's name "
                             "(e.g. tune=animation)")
        if key.strip() in given:
            raise UsageError(f"--codec-opt {item}: {key.strip()} is given twice")
        given[key.strip()] = value
    if args.preset is not None and not args.preset.strip():
        raise UsageError("--preset: give a preset name, e.g. veryfast or slow")
    try:
        return encoder_options(args.crf, args.preset, given)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument that can be checked without the model or the images; UsageError naming it."""
    if args.overwrite and args.skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    cpus = usable_cpus()
    if args.crf is not None and not 0 <= args.crf <= 63:
        raise UsageError(f"--crf {args.crf}: give the encoder's quality in 0..63 (lower is better; x264's default 23)")
    video_options(args)
    if not 0 <= args.threads <= cpus:
        raise UsageError(f"--threads {args.threads}: this machine has {cpus} CPU(s); give 0 (all of them) or 1..{cpus}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: give at least 1")
    if args.gpus_per_worker is not None and not 0 < args.gpus_per_worker <= 64:
        raise UsageError(f"--gpus-per-worker {args.gpus_per_worker}: give a share of a GPU (e.g. 0.5) or a count")
    if (args.workers is not None or args.gpus_per_worker is not None) and args.ray is None:
        raise UsageError("--workers and --gpus-per-worker go with --ray")
    if args.segment_frames < 1:
        raise UsageError(f"--segment-frames {args.segment_frames}: give a number of frames, at least 1")
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels {args.max_pixels}: give the largest input image to accept, in pixels "
                         f"(default {DEFAULT_MAX_PIXELS}, about {DEFAULT_MAX_PIXELS / 1e6:.0f} MP)")
    try:
        check_tiling(args.tile, args.tile_overlap, DEFAULT_BATCH if args.batch is None else args.batch)
    except ValueError as e:
        flags = {"batch": "--batch", "tile_overlap": "--tile-overlap", "tile": "-t/--tile"}
        first = str(e).split()[0]
        raise UsageError(f"{flags.get(first, first)}: {e}") from None
    if args.outscale is not None and not (math.isfinite(args.outscale) and 0 < args.outscale <= MAX_OUTSCALE):
        raise UsageError(f"-s/--outscale {args.outscale}: give a final scale above 0 and at most {MAX_OUTSCALE:g}")
    if args.alpha is not None and not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise UsageError(f"--alpha {args.alpha}: give a weight in [0, 1] (0: the model, 1: --gan-weights)")
    if not _SUFFIX.fullmatch(args.suffix) or args.suffix.startswith(".") or ".." in args.suffix:
        raise UsageError(f"--suffix {args.suffix!r}: use up to 64 letters, digits and _ . + = @ , - (no path "
                         "separators, not starting with a dot)")
    try:
        output_extension("x.png", args.ext)
    except ValueError as e:
        raise UsageError(f"--ext: {e}") from None
    device_of(args)


def device_of(args: argparse.Namespace) -> str:
    """--device resolved: "cpu" or "cuda[:N]"; UsageError for one that is not there."""
    device = args.device.strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise UsageError(f"--device {args.device}: give auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device on this machine (torch {torch.__version__}); use "
                         "--device cpu")
    if m[1] is not None and int(m[1]) >= torch.cuda.device_count():
        raise UsageError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def plan_outputs(inputs: list[Path], out_dir: Path, suffix: str, ext: str) -> tuple[list[tuple[Path, Path]],
                                                                                       list[Path]]:
    """(input, output) pairs, and the inputs left out because they are outputs of other inputs (a rerun into the
    input folder). UsageError when two inputs map to one output name or an output would replace an input."""
    def target(path: Path) -> Path:
        name = f"{path.stem}_{suffix}" if suffix else path.stem
        return out_dir / f"{name}{output_extension(path, ext)}"

    targets = {p: target(p) for p in inputs}
    produced = {t.resolve() for t in targets.values()}
    ours = [p for p in inputs if p.resolve() in produced and suffix]
    pairs = [(p, targets[p]) for p in inputs if p not in ours]
    by_name: dict[str, Path] = {}
    for src, dst in pairs:
        key = str(dst.resolve())
        if key in by_name:
            raise UsageError(f"{by_name[key].name} and {src.name} would both be written to {dst}; give --ext auto "
                             "(each keeps its own extension), or rename one of them")
        by_name[key] = src
    by_path = {p.resolve(): p for p, _ in pairs}  # inputs by path and by file (links, other spellings)
    by_inode = {(st.st_dev, st.st_ino): p for p, _ in pairs if (st := _stat(p)) is not None}
    for src, dst in pairs:
        st = _stat(dst)
        clash = by_path.get(dst.resolve()) or (by_inode.get((st.st_dev, st.st_ino)) if st is not None else None)
        if clash is not None:
            raise UsageError(f"the output {dst} of {src.name} would replace the input {clash}: inputs are never "
                             "written over; choose another -o or a --suffix")
    return pairs, ours


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except (OSError, ValueError):
        return None


def check_output_folder(out_dir: Path) -> None:
    """Create the output folder and prove it writable, before the model is loaded."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: a file, not a folder; give a folder for the outputs")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = temp_path(out_dir / "write-test")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise UsageError(f"-o {out_dir}: cannot write there ({e.strerror or e}); choose a folder you can write to") \
            from None


# ---------------------------------------------------------------------------------------------------------
# The model


def make_backend(args: argparse.Namespace) -> Backend:
    source = resolve_model(args.model)
    if source.is_dir():  # a built engine: its precision, backend and endpoints are fixed by the build
        if args.gan_weights or args.precision or args.backend != "auto":
            raise UsageError(f"-n {source} is a built engine: --gan-weights, --fp32/--fp16/--bf16 and --backend "
                             f"were chosen when it was built (python -m engine.build)")
        eng = load_engine(source, threads=args.threads)
        if args.alpha is not None:
            seconds = eng.set_alpha(args.alpha)
            print(f"alpha {args.alpha}: weights refitted in {seconds * 1e3:.0f} ms")
        return eng
    device = device_of(args)
    precision = args.precision or ("fp16" if device.startswith("cuda") else "fp32")
    if precision == "fp16" and device == "cpu":
        raise UsageError("--fp16 needs a CUDA device; on the CPU use --bf16 or --fp32")
    if (args.alpha is None) != (args.gan_weights is None):
        raise UsageError("--alpha and --gan-weights go together: the blend of the model (alpha 0) and its GAN "
                         "fine-tune (alpha 1)")
    net, _ = models.load(source)
    kind = args.backend
    fallbacks: list[str] = []
    if kind == "auto":
        ranked = [b.name for b in registry.cpu_defaults(net, precision)] if device == "cpu" and precision == "fp32" \
            else []
        kind, fallbacks = (ranked or ["torch"])[0], ranked[1:]
    info = registry.get(kind)
    if torch.device(device).type not in info.devices:
        raise UsageError(f"--backend {kind} runs on {' or '.join(info.devices)}, and this run is on {device}; use "
                         f"--backend auto, or build an engine (python -m engine.build)")
    if precision not in info.precisions:
        takes = [f"--{p}" for p in info.precisions if p in ("fp32", "fp16", "bf16")]  # the flags upscale has
        raise UsageError(f"--backend {kind} runs {', '.join(takes)}, not --{precision}; "
                         f"for other precisions build an engine (python -m engine.build) or use --backend torch")
    why = info.unavailable()
    if why is not None:
        raise UsageError(f"--backend {kind}: {why}")
    gan = models.load(args.gan_weights)[0] if args.gan_weights else None
    why = info.network(net, precision)
    if why is not None:
        raise UsageError(f"--backend {kind}: {why}; use --backend torch")
    options = {"channels_last": True} if args.channels_last and kind == "torch" else {}
    assert info.from_network is not None
    try:
        backend: Any = info.from_network(net, gan_net=gan, precision=precision, device=device, threads=args.threads,
                                         **options)
    except OSError as e:  # e.g. no room for the model files ncnn loads: the next-fastest default needs none
        if not fallbacks:
            raise
        print(f"warning: {info.label} could not start ({e}); running {fallbacks[0]} instead", file=sys.stderr)
        nxt = registry.get(fallbacks[0]).from_network
        assert nxt is not None  # cpu_defaults lists only backends that run networks
        backend = nxt(net, gan_net=gan, precision=precision, device=device, threads=args.threads)
    if args.alpha is not None:
        backend.set_alpha(args.alpha)
    return backend


# ---------------------------------------------------------------------------------------------------------
# Memory


def memory_needed(backend: Backend, image: np.ndarray, out_h: int, out_w: int, tile: int | None,
                  batch: int) -> dict[str, int]:
    """The large allocations of upscaling a decoded `image` (bytes, by what they are): its float32 planes, the
    tiles in flight with the network's activations, the band of blended rows, the output, the resized output and
    the encoded file."""
    h, w = image.shape[:2]
    c = 1 if image.ndim == 2 else image.shape[2]
    s = backend.scale
    item = image.itemsize if image.dtype in (np.uint8, np.uint16) else 4
    side = min(tile or auto_tile(backend, h, w, batch), max(h, w))
    n = tiles_in_flight(h, w, side, batch)
    tiles = n * side * side * (backend.in_channels + backend.out_channels * s * s) * 4
    need = {"input planes": 4 * h * w * (c + 2 * (c in (1, 2))),
            "tiles and activations": tiles + int(n * side * side * backend.bytes_per_pixel()),
            "blend band": backend.out_channels * min(side, h) * s * w * s * 4,
            "output": h * s * w * s * c * item}
    if (out_h, out_w) != (h * s, w * s):
        need["resized output"] = out_h * out_w * c * item
    need["encoded file"] = out_h * out_w * c * item
    return need


def _gib(n: float) -> str:
    """Bytes in the unit that reads best: GiB, MiB or KiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def check_memory(backend: Backend, image: np.ndarray, out_h: int, out_w: int, tile: int | None, batch: int,
                 extra: dict[str, int] | None = None) -> None:
    """ImageError, with the numbers, for an image whose upscaling cannot fit in the memory left (`extra`: more
    allocations by what they are, e.g. a video's frames in flight)."""
    available = available_memory()
    if available is None or backend.device.type != "cpu":
        return
    need = memory_needed(backend, image, out_h, out_w, tile, batch) | (extra or {})
    total = sum(need.values())
    if total > available:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in need.items())
        h, w = image.shape[:2]
        raise ImageError(f"upscaling this {w}×{h} image to {out_w}×{out_h} needs about {_gib(total)} of memory "
                         f"({parts}), and {_gib(available)} is available: use a smaller image or -s, or a machine "
                         "with more memory")


# ---------------------------------------------------------------------------------------------------------
# The run


def resume_key(args: argparse.Namespace, backend: Any) -> str:
    """What decides a video's pixels besides its own settings: the model as named, the files behind it (size and
    modification time), the backend and its precision (for a Ray run, the backend its workers are asked for).
    Segments of an earlier run are kept only for the same key."""
    def file(name: str | None) -> list[Any] | None:
        if not name or not os.path.exists(name):
            return None
        st = os.stat(name)
        return [str(Path(name).resolve()), st.st_size, st.st_mtime_ns]

    return json.dumps({"model": args.model, "model_file": file(args.model), "gan_weights": file(args.gan_weights),
                       "alpha": args.alpha,
                       "backend": "ray workers" if args.ray is not None else type(backend).__name__,
                       "requested": args.backend, "precision": args.precision,
                       "device": args.device if args.ray is not None else str(backend.device),
                       "channels_last": args.channels_last}, sort_keys=True)


def decide(src: Path, dst: Path, args: argparse.Namespace, scale: int) -> tuple[str, str | None, bool]:
    """What a run does with one input whose output is `dst`: ("go", None, replace), ("skip", None, False) for a
    complete output kept by --skip-existing, or ("fail", why, False) for an output that exists without
    --overwrite or --skip-existing."""
    if dst.exists() and not args.overwrite:
        if not args.skip_existing:
            return "fail", f"{dst} exists; pass --overwrite to replace it or --skip-existing to keep it", False
        if _complete(dst, src, scale, args.outscale):
            return "skip", None, False
        return "go", None, True  # --skip-existing: an incomplete output (empty, damaged, wrong size) is redone
    return "go", None, args.overwrite


def _complete(target: Path, source: Path, scale: int, outscale: float | None) -> bool:
    """Whether `target` is a whole output of `source`: its header gives the expected size (transposed too, for
    EXIF-rotated JPEGs). A 0-byte or damaged file is not. A video output is whole once it exists and has a video
    stream (it is written to a temporary file and renamed when complete)."""
    if is_video(source):
        from .video import VideoError, probe

        try:
            probe(target)
        except VideoError:
            return False
        return True
    got, size = image_size(target), image_size(source)
    if got is None or size is None:
        return False
    try:
        want = output_size(size[0], size[1], scale, outscale)
    except ValueError:
        return False
    return got in (want, want[::-1])


def _reason(path: Path, e: BaseException) -> str:
    """An error's message without the file name it may start with (the caller prints it once)."""
    text = str(e) or e.__class__.__name__
    for prefix in (f"{path}: ", f"{path.name}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} ({e.filename or path})" if e.filename and Path(e.filename) != path else e.strerror
    if isinstance(e, (ImageError, ValueError)):
        return text
    return f"{e.__class__.__name__}: {text}"


def upscale_file(backend: Backend, src: Path, dst: Path, args: argparse.Namespace, batch: int, replace: bool) -> None:
    """Upscale one file into `dst` (atomically; exclusively unless `replace`; a video is always written whole or
    not at all, and the caller has checked that `dst` may be replaced)."""
    if is_video(src):
        from .video import QUEUE, RING_SLOTS, probe, upscale_video

        info = probe(src)
        if info.width * info.height <= args.max_pixels:  # else upscale_video names the limit
            frame = np.empty((info.height, info.width, 3), np.uint16 if info.bits > 8 else np.uint8)  # not touched
            out_h, out_w = output_size(info.height, info.width, backend.scale, args.outscale)
            in_flight = (2 * (QUEUE + batch) + batch + 2) * frame.nbytes * (1 + backend.scale ** 2)
            ring = RING_SLOTS * out_h * out_w * 3 * frame.itemsize  # shared with the encoder process
            check_memory(backend, frame, out_h, out_w, args.tile, batch,
                         {"frames in flight": in_flight, "the encoder's ring": ring})
        with tqdm(total=info.frames or None, unit="frame", leave=False, dynamic_ncols=True, desc=src.name,
                  disable=None) as bar:
            stats = upscale_video(backend, src, dst, codec=args.codec, codec_options=video_options(args),
                                  pix_fmt=args.pix_fmt,
                                  outscale=args.outscale, tile=args.tile,
                                  tile_overlap=args.tile_overlap, batch=args.batch, threads=args.threads,
                                  progress=lambda done: bar.update(done - bar.n),
                                  segment_frames=args.segment_frames, max_pixels=args.max_pixels,
                                  resume_key=None if args.overwrite else resume_key(args, backend))
        busy = ", ".join(f"{stage} {share:.0%}" for stage, share in stats["busy"].items())
        kept = f" ({stats['resumed_frames']} kept from an earlier run)" if stats["resumed_frames"] else ""
        waits = stats["engine_waits"]
        print(f"{src.name}: {stats['frames']} frames{kept} in {stats['seconds']:.1f} s, {stats['fps']:.2f} "
              f"frames/s; busy: {busy}; the engine waited {waits['for_frames']:.0%} for frames, "
              f"{waits['for_encoder']:.0%} for the encoder, {waits['setup']:.0%} before its first frame (setup) and "
              f"{waits['finish']:.0%} after its last (the encoder's last frames and the join)")
        return
    image = read_image(src, max_pixels=args.max_pixels)
    out_h, out_w = output_size(image.shape[0], image.shape[1], backend.scale, args.outscale)
    check_memory(backend, image, out_h, out_w, args.tile, batch)
    with tqdm(unit="tile", leave=False, dynamic_ncols=True, desc=src.name, disable=None) as bar:
        result = infer(backend, image, tile=args.tile, tile_overlap=args.tile_overlap, batch=args.batch,
                       outscale=args.outscale, alpha_upsampler=args.alpha_upsampler, threads=args.threads,
                       progress=bar.update)
    del image
    assert isinstance(result, np.ndarray)  # numpy in, numpy out
    write_image(dst, result, overwrite=replace, reuse=True)


def run(args: argparse.Namespace) -> int:
    try:
        check_arguments(args)
        inputs = list_inputs(args.input)
        out_dir = Path(args.output)
        pairs, ours = plan_outputs(inputs, out_dir, args.suffix, args.ext)
        if not pairs:
            raise UsageError(f"-i {args.input}: every image there is an output of this tool ({len(ours)} named "
                             f"*_{args.suffix}.*); nothing to upscale")
        options = video_options(args)
        if (args.codec is not None or options) and any(is_video(src) for src, _ in pairs):
            from .video import DEFAULT_CODEC, check_encoder

            # a bad --codec, --pix-fmt or encoder option stops the run before any work
            for codec in {args.codec or DEFAULT_CODEC.get(VIDEO_FORMATS.get(dst.suffix.lower(), ""), "libx264")
                          for src, dst in pairs if is_video(src)}:
                check_encoder(codec, args.pix_fmt, options)
        check_output_folder(out_dir)
        for folder in {dst.parent for _, dst in pairs}:
            remove_stale_temps(folder, {dst.name for _, dst in pairs})
        if args.ray is not None:
            from .distributed import Ops, run_ray

            if ours:
                print(f"note: {len(ours)} image(s) in {args.input} are outputs of the others (named "
                      f"*_{args.suffix}.*) and are not upscaled again")
            ops = Ops(make_backend=make_backend, upscale_file=upscale_file, decide=decide, resume_key=resume_key,
                      reason=_reason, resolve_model=resolve_model, video_options=video_options,
                      usage_error=UsageError,
                      exit_codes={"ok": EXIT_OK, "failed": EXIT_FAILED, "usage": EXIT_USAGE,
                                  "interrupted": EXIT_INTERRUPTED})
            return run_ray(args, pairs, ops)
        backend = make_backend(args)
        if args.tile and args.tile % backend.multiple:
            fit = max(backend.multiple, args.tile // backend.multiple * backend.multiple)
            raise UsageError(f"-t/--tile {args.tile}: this ×{backend.scale} network needs tiles whose side is a "
                             f"multiple of {backend.multiple}; use -t {fit}")
    except KeyboardInterrupt:
        print("interrupted before any image was upscaled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ImageError, ValueError, RuntimeError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if ours:
        print(f"note: {len(ours)} image(s) in {args.input} are outputs of the others (named *_{args.suffix}.*) and "
              "are not upscaled again")

    batch = backend_batch(backend, args.batch)
    written, skipped, failed = 0, 0, []
    interrupted = False
    start = time.perf_counter()
    files = tqdm(pairs, unit="image", disable=len(pairs) < 2, dynamic_ncols=True)
    try:
        for src, dst in files:
            files.set_postfix_str(src.name)
            verdict, reason, replace = decide(src, dst, args, backend.scale)
            if verdict == "fail":
                failed.append((src, reason or "?"))
                continue
            if verdict == "skip":
                skipped += 1
                continue
            try:
                upscale_file(backend, src, dst, args, batch, replace)
                written += 1
            except FileExistsError:
                failed.append((src, f"{dst} was created meanwhile (another run?); kept it"))
            except (MemoryError, torch.OutOfMemoryError) as e:
                failed.append((src, f"out of memory ({e.__class__.__name__}) with tiles of {args.tile or 'auto'} "
                                    f"and batch {batch}; use a smaller -t/--tile or --batch"))
            except Exception as e:  # one bad file never stops the run: it is named, the others go on
                failed.append((src, _reason(src, e)))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        files.close()

    elapsed = time.perf_counter() - start
    print(f"{written} written to {args.output}, {skipped} skipped, {len(failed)} failed, in {elapsed:.1f} s"
          + (" (interrupted)" if interrupted else ""))
    for path, reason in failed:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failed else EXIT_OK


def upscale_on_ray(input: str | os.PathLike[str], output: str | os.PathLike[str], *, address: str = "auto",
                   **flags: Any) -> int:
    """The Ray run from Python, as `python -m engine.upscale -i INPUT -o OUTPUT --ray ADDRESS`: `flags` are that
    command's options by their long names (`model="realesr-animevideov3-x4"`, `workers=4`, `codec="ffv1"`,
    `skip_existing=True`; True for a switch, None or False to leave one out, a list for a repeated option:
    `codec_opt=["tune=animation", "x264-params=keyint=48"]`). Returns the command's exit status (0 all written,
    1 some failed, each named on stderr, 2 could not start)."""
    argv = ["-i", os.fspath(input), "-o", os.fspath(output), "--ray", address]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return run(parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import cv2

    # (Over a file-size limit a write fails with EFBIG, one failed file: CPython ignores SIGXFSZ from the start.)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our messages name the file and the reason
    try:
        return run(args)
    finally:
        cv2.utils.logging.setLogLevel(level)


if __name__ == "__main__":
    sys.exit(main())
