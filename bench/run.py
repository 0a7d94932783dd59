"""`python bench/run.py`: every backend side by side, on the workloads users run, in one run.

    python bench/run.py [--quick] [--workloads 1080p,4k] [--backends torch-fp16,triton-fp16] [--repeat 10]
                        [--warmup 3] [--out bench/results] [--no-chart]

Workloads (`WORKLOADS`): video frames 480×270 → 1080p and 960×540 → 4K, 1920×1080 → 8K in tiles, batches of
eight 256×256 tiles (rrdb23, random weights: no rrdb23 weights ship), and the shipped default model on the shipped
example photo on the CPU. `--quick` runs a CPU-sized set (the default model on a small frame and on a batch) in
under two minutes; CI runs it.

Backends (`backend_specs()`: the bench rows every registered backend declares, `engine.backends`): PyTorch eager
fp32, fp16, bf16 and channels_last, `torch.compile`, ONNX Runtime, TensorRT fp16 and INT8, our Triton kernels fp16
and INT8, and our native plan run by engine._C. One that cannot run on this
machine or workload is listed with the reason, never dropped silently.

Method. Each backend is built and run once (the build time is construction plus that first call: export,
compilation, autotuning, graph capture), warmed up, timed for `set_alpha` (every backend gets a GAN endpoint), then
all backends of a workload are timed in alternation, one call each per round, the order rotating every round, so
drift in clocks or load falls on all of them alike. A frame is `engine.infer(backend, uint8 frame)`, the user's
path (tiling, conversion, transfers included); a batch is `backend.run(tensor on the device)`. The output of the
last timed call is compared with PyTorch fp32 (TF32 off) on the same input: PSNR, so a fast wrong backend shows.

Figures per row: median, p20 and p80 latency; frames/s; output megapixels/s; effective TFLOP/s, i.e. the
multiply-adds counted from the model (`engine.models.flops`, ×2) over the time, and their share of the device's
peak for the row's dtype (datasheet for known GPUs; a measured GEMM otherwise, which says so); peak memory (CUDA:
allocator peak plus memory held outside it; CPU: the process's resident peak above its level before the build);
build and `set_alpha` time; PSNR and largest difference against the reference. Conditions (device, driver,
library versions, threads, commit) go with them.

Writes a Markdown table to stdout, `<out>/<device>/<date>[-quick].json` (schema: bench/schema.json) and a PNG
chart beside it (needs matplotlib: `pip install 'esrgan-engine[bench]'`). `python bench/report.py` puts the latest
full run of each device into README (one summary table) and docs/benchmarks.md (every table).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engine  # noqa: E402
import engine.models as M  # noqa: E402
from bench.measure import (  # noqa: E402
    Memory,
    conditions,
    device_peaks,
    device_slug,
    host,
    percentiles,
    psnr,
    sync,
    timed,
)
from engine.atomic import atomic_write  # noqa: E402
from engine.backends import registry  # noqa: E402
from engine.backends.registry import BackendInfo, BenchRow  # noqa: E402
from engine.models import pretrained  # noqa: E402
from engine.models.flops import macs_per_pixel  # noqa: E402

SCHEMA_VERSION = 1
EXAMPLE = REPO / "examples" / "rocket.jpg"
DEFAULT_MODEL = REPO / "weights" / "tiny_x4.safetensors"


# ---------------------------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Workload:
    """One thing users do. `tile` 0 runs a frame in one piece; > 0 cuts it into tiles of that side, `tile_batch`
    per call. `batch` > 1 is a batch of tiles given to `backend.run` directly."""

    name: str
    what: str
    model: str  # a published model (engine.models.PRETRAINED; random weights of `fallback` where it is not on this
    #             machine), a registered variant (random weights), or "default": the shipped default model
    width: int
    height: int
    device: str = "cuda"
    batch: int = 1
    tile: int = 0
    tile_batch: int = 4
    fallback: str = "rrdb23"  # the variant a published model's workload runs with random weights when it is absent
    video: int = 0  # > 0: a generated clip of this many frames, end to end through engine.video (H.264 in and out)

    @property
    def frames(self) -> int:
        return self.video or self.batch


X4PLUS = "RealESRGAN_x4plus"  # the ESRGAN network of Real-ESRGAN (rrdb23's shape): the GPU workloads' weights
WORKLOADS = [
    Workload("1080p", "480×270 → 1920×1080 video frame", X4PLUS, 480, 270),
    Workload("4k", "960×540 → 3840×2160 video frame", X4PLUS, 960, 540),
    Workload("8k-tiled", "1920×1080 → 7680×4320 frame, tiles of 560, 4 per call", X4PLUS, 1920, 1080, tile=560),
    Workload("256-batch8", "8 tiles of 256×256 → 1024×1024 per call", X4PLUS, 256, 256, batch=8),
    Workload("default-cpu", "the shipped example photo, 640×427 → 2560×1708, with the shipped default model",
             "default", 640, 427, device="cpu"),
    Workload("x4plus-cpu", "the example photo at 256×171 → 1024×684, RealESRGAN_x4plus", X4PLUS, 256, 171,
             device="cpu"),
    Workload("animevideov3-cpu", "the example photo at 640×427 → 2560×1708, realesr-animevideov3",
             "realesr-animevideov3", 640, 427, device="cpu", fallback="realesr-animevideov3"),
    Workload("video-1080p", "a 144-frame 480×270 H.264 clip → 1920×1080 H.264: decode, engine, encode", X4PLUS,
             480, 270, video=144),
    Workload("video-cpu", "a 24-frame 320×180 H.264 clip → 1280×720 H.264 with the shipped default model: decode, "
             "engine, encode", "default", 320, 180, device="cpu", video=24),
]
QUICK = [
    Workload("quick-frame", "160×120 → 640×480 frame, shipped default model", "default", 160, 120, device="cpu"),
    Workload("quick-batch4", "4 tiles of 64×64 → 256×256 per call, shipped default model", "default", 64, 64,
             device="cpu", batch=4),
    Workload("quick-video", "an 8-frame 96×64 H.264 clip → 384×256 H.264, shipped default model: decode, engine, "
             "encode", "default", 96, 64, device="cpu", video=8),
]


# ---------------------------------------------------------------------------------------------------------------
# Backends


@dataclass
class Context:
    """What a backend is built from: the workload, both endpoints, and files some builds need."""

    workload: Workload
    device: torch.device
    net: M.SRNet
    gan: M.SRNet
    tmp: Path
    images: list[np.ndarray]  # RGB uint8 photos for INT8 calibration
    _files: dict[str, Path] = field(default_factory=dict)

    def weights(self) -> tuple[Path, Path]:
        """Both endpoints as checkpoint files (engine builds read files)."""
        if not self._files:
            for key, net in (("psnr", self.net), ("gan", self.gan)):
                self._files[key] = self.tmp / f"{key}.safetensors"
                M.save(net, self._files[key])
        return self._files["psnr"], self._files["gan"]

    def calib_dir(self) -> Path:
        d = self.tmp / "calib"
        if not d.is_dir():
            d.mkdir()
            for i, image in enumerate(self.images):
                cv2.imwrite(str(d / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return d


@dataclass(frozen=True)
class BackendSpec:
    key: str
    label: str
    dtype: Callable[[str], str]  # device type → the row's compute dtype
    build: Callable[[Context], Any]
    unavailable: Callable[[Context], str | None]
    tile: Callable[[Workload], tuple[int, int]] | None = None  # (tile, batch) of a fixed-shape engine


def _half(device: str) -> str:
    return "fp16" if device == "cuda" else "fp32"


def _engine_build(backend: str, precision: str, shape: Callable[[Workload], tuple[int, int]]
                  ) -> Callable[[Context], Any]:
    def build(ctx: Context) -> Any:
        from engine.build import main as build_main

        psnr, gan = ctx.weights()
        w = ctx.workload
        tile, batch = shape(w)
        out = ctx.tmp / f"{backend}-{precision}-{w.name}"
        argv = ["--backend", backend, f"--{precision}", "--weights", str(psnr), "--gan-weights", str(gan),
                "--tile", str(tile), "--batch", str(batch), "--no-verify", "-o", str(out)]
        if precision == "int8":
            argv += ["--calib", str(ctx.calib_dir())]
        with contextlib.redirect_stdout(sys.stderr):
            if build_main(argv) != 0:
                raise RuntimeError(f"python -m engine.build {' '.join(argv)} failed (its error is above)")
        return engine.load(out)
    return build


def _fixed_shape(one_shape: bool) -> Callable[[Workload], tuple[int, int]]:
    def shape(w: Workload) -> tuple[int, int]:
        if w.batch > 1:
            return w.width, w.batch
        if w.tile:
            return w.tile, w.tile_batch
        if one_shape:  # an engine of one shape (a native plan): two tiles of the shorter side, not the longer squared;
            # no larger than the frame, whose edge rows would otherwise be padded (docs/native-plans.md#on-a-gpu)
            return min(w.width, w.height), 2
        return max(w.width, w.height), 1  # TensorRT's profile takes the whole frame: any shape up to tile × tile
    return shape


def _from_network(info: BackendInfo, row: BenchRow) -> Callable[[Context], Any]:
    def build(ctx: Context) -> Any:  # its own copy: backends may move, reformat and refit the network in place
        assert info.from_network is not None
        return info.from_network(copy.deepcopy(ctx.net), gan_net=ctx.gan, device=ctx.device,
                                 precision=row.precision or _half(ctx.device.type), calibration=ctx.images,
                                 **row.options)
    return build


def _unavailable(info: BackendInfo, row: BenchRow) -> Callable[[Context], str | None]:
    def why(ctx: Context) -> str | None:
        if row.unavailable is not None and (reason := row.unavailable(ctx.device)) is not None:
            return reason
        if ctx.device.type not in info.devices:
            return ("a GPU backend; this workload runs on the CPU" if info.needs_gpu else
                    f"{info.label} runs on {' or '.join(info.devices)}; this workload runs on {ctx.device.type}")
        if (reason := info.unavailable()) is not None:
            return reason
        return info.network(ctx.net, row.precision or _half(ctx.device.type))
    return why


def backend_specs() -> list[BackendSpec]:
    """One spec per bench row of every registered backend (`BackendInfo.bench`): a backend that runs a network
    directly is built from it; one that only runs engine folders is built by `python -m engine.build`."""
    specs = []
    for info in registry.backends():
        for row in info.bench:
            dtype = (lambda d, p=row.precision: p) if row.precision else _half
            if info.from_network is not None:
                specs.append(BackendSpec(row.key, row.label, dtype, _from_network(info, row), _unavailable(info, row)))
            else:
                assert info.build is not None and row.precision is not None, f"{info.name}: nothing builds its rows"
                shape = _fixed_shape(info.one_shape)
                specs.append(BackendSpec(row.key, row.label, dtype, _engine_build(info.name, row.precision, shape),
                                         _unavailable(info, row), shape))
    return specs


BASELINE = "torch-fp32"


# ---------------------------------------------------------------------------------------------------------------
# Running a workload


def load_network(w: Workload) -> tuple[M.SRNet, M.SRNet, str]:
    """(network, its GAN endpoint, where the weights came from)."""
    if w.model == "default":
        net, _ = M.load(DEFAULT_MODEL)  # no GAN fine-tune ships: a perturbed copy stands in as the alpha endpoint
        return net.eval(), _perturbed(net), f"{DEFAULT_MODEL.relative_to(REPO)} (GAN endpoint: it plus 1% noise)"
    if pretrained.is_published(w.model):
        try:
            path = pretrained.resolve(w.model, download=False)
        except pretrained.PretrainedError as e:
            print(f"{w.model} is not on this machine ({e}): random {w.fallback} weights instead", file=sys.stderr)
            return _random(w.fallback, f"random {w.fallback} weights (seeds 0 and 1): {w.model} is not on this "
                                       f"machine (python -m engine.models fetch {w.model})")
        net, _ = M.load(path)
        return net.eval(), _perturbed(net), f"{w.model} ({path.name}; GAN endpoint: it plus 1% noise)"
    return _random(w.model, "random weights (seeds 0 and 1)")


def _random(variant: str, what: str) -> tuple[M.SRNet, M.SRNet, str]:
    torch.manual_seed(0)
    net = M.create(variant).eval()
    torch.manual_seed(1)
    return net, M.create(variant).eval(), what


def _perturbed(net: M.SRNet) -> M.SRNet:
    """A copy of `net` with 1% noise on every weight: the GAN endpoint set_alpha blends where none ships."""
    gan = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in gan.parameters():
            p.add_(0.01 * p.abs().mean() * torch.randn(p.shape, generator=g))
    return gan.eval()


def inputs(w: Workload) -> tuple[list[np.ndarray], np.ndarray | None, torch.Tensor | None]:
    """(calibration photos; the frame (H, W, 3) uint8 or None; the batch (N, 3, H, W) float or None), all from the
    shipped example photo."""
    bgr = cv2.imread(str(EXAMPLE), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{EXAMPLE}: the shipped example photo is missing or unreadable (git checkout it)")
    photo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    ph, pw = photo.shape[:2]
    if w.batch == 1:
        interp = cv2.INTER_AREA if w.width <= pw else cv2.INTER_CUBIC
        return [photo], cv2.resize(photo, (w.width, w.height), interpolation=interp), None
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(w.batch):
        y, x = rng.integers(0, ph - w.height + 1), rng.integers(0, pw - w.width + 1)
        crops.append(photo[y:y + w.height, x:x + w.width])
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)
    return [photo], None, batch


def make_clip(w: Workload, photo: np.ndarray, path: Path) -> list[np.ndarray]:
    """A clip of `w.video` frames panning across the example photo (scaled to 1.5× the frame's size), H.264 (crf 18)
    with an AAC tone, as a user's source would be; returns its frames as decoded (RGB uint8)."""
    import av

    big = cv2.resize(photo, (w.width * 3 // 2, w.height * 3 // 2), interpolation=cv2.INTER_AREA)
    span_y, span_x = big.shape[0] - w.height, big.shape[1] - w.width
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt, v.options = w.width, w.height, "yuv420p", {"crf": "18"}
        a = c.add_stream("aac", rate=48000)
        a.layout = "stereo"
        for i in range(w.video):
            t = i / max(1, w.video - 1)
            y, x = round(t * span_y), round(t * span_x)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[y:y + w.height, x:x + w.width]),
                                               format="rgb24")
            frame.pts = i
            c.mux(v.encode(frame))
        c.mux(v.encode())
        seconds = w.video / 24
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(int(48000 * seconds)) / 48000)).astype(np.float32)
        for start in range(0, tone.size, 1024):
            chunk = np.repeat(tone[None, start:start + 1024], 2, axis=0)
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            af.sample_rate, af.pts = 48000, start
            c.mux(a.encode(af))
        c.mux(a.encode())
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def make_call(w: Workload, spec: BackendSpec | None, backend: Any, frame: np.ndarray | None,
              batch: torch.Tensor | None) -> Callable[[], Any]:
    """One timed unit of the workload, returning its output: a uint8 frame (numpy), or a batch where the backend
    leaves it (a tensor on the device; `host` fetches it after the timing)."""
    if batch is not None:
        x = batch.to(backend.device)
        return lambda: backend.run(x)
    fixed = spec is not None and spec.tile is not None
    tile = None if fixed else w.tile  # a fixed-shape engine runs the tile it was built for
    tile_batch = None if fixed else w.tile_batch
    return lambda: engine.infer(backend, frame, tile=tile, batch=tile_batch)


class video_calls:  # noqa: N801 - used as a call, like make_call's lambdas
    """A video workload's timed unit: `engine.video.upscale_video` of the whole clip into an H.264 file (returns its
    stats); `engine_only()` runs `engine.infer_frames` on the clip's decoded frames, the same frames through the same
    backend without decoding or encoding."""

    def __init__(self, w: Workload, spec: BackendSpec, backend: Any, clip: Path, frames: list[np.ndarray],
                 tmp: Path) -> None:
        self.backend, self.clip, self.frames = backend, clip, frames
        self.out = tmp / f"{spec.key}.mp4"
        fixed = spec.tile is not None
        self.tile = None if fixed else (w.tile or None)

    def __call__(self) -> dict[str, Any]:
        from engine.video import upscale_video

        self.out.unlink(missing_ok=True)
        return upscale_video(self.backend, self.clip, self.out, codec="libx264", tile=self.tile)

    def engine_only(self) -> list[np.ndarray]:
        return engine.infer_frames(self.backend, self.frames, tile=self.tile)


@contextlib.contextmanager
def _fp32_reference() -> Iterator[None]:
    """True fp32 on CUDA (no TF32), as the reference and the fp32 rows compute."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def run_workload(w: Workload, specs: list[BackendSpec], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    device = torch.device(w.device)
    net, gan, weights = load_network(w)
    images, frame, batch = inputs(w)
    ctx = Context(w, device, net, gan, tmp, images)
    scale = net.scale
    macs = macs_per_pixel(net)
    clip, clip_frames = None, None
    if w.video:  # the reference and PSNR use the clip's first decoded frame
        clip = tmp / "clip.mp4"
        clip_frames = make_clip(w, images[0], clip)
        frame = clip_frames[0]
    mode = "engine.infer on a uint8 frame" if batch is None else "backend.run on a batch on the device"
    if w.video:
        mode = ("engine.video.upscale_video of the whole clip (H.264 in, H.264 out; a call is the clip), beside "
                "engine.infer_frames on its decoded frames (engine only)")
    result: dict[str, Any] = {
        "name": w.name, "what": w.what, "model": w.model if w.model != "default" else "default (tiny_x4)",
        "arch": net.arch, "hparams": json.loads(json.dumps(net.hparams)), "weights": weights, "device": w.device,
        "input": [w.frames, net.in_channels, w.height, w.width],
        "output": [w.frames, net.out_channels, w.height * scale, w.width * scale],
        "tile": w.tile or None, "tile_batch": w.tile_batch if w.tile else None,
        "mode": mode, "macs_per_pixel": macs, "flops_per_call": 2 * macs * w.width * w.height * w.frames,
        "rows": [], "unavailable": [],
    }
    print(f"\n## {w.name}: {w.what}", file=sys.stderr)
    with _fp32_reference():
        reference = engine.TorchBackend(copy.deepcopy(net), device=device, dtype="fp32")
        if clip_frames is not None:  # frames in batches, as the video rows run them
            ref = engine.infer_frames(reference, clip_frames, tile=w.tile or None)[0]
        else:
            ref = host(make_call(w, None, reference, frame, batch)())
    peak_value = 255.0 if batch is None else 1.0

    live: list[tuple[BackendSpec, Any, Callable[[], np.ndarray], dict[str, Any]]] = []
    for spec in specs:
        why = spec.unavailable(ctx)
        if why is not None:
            result["unavailable"].append({"backend": spec.key, "label": spec.label, "reason": why})
            continue
        print(f"building {spec.key}", file=sys.stderr)
        try:
            with _fp32_reference() if spec.dtype(w.device) == "fp32" else contextlib.nullcontext():
                with Memory(device) as mem:
                    start = time.perf_counter()
                    backend = spec.build(ctx)
                    call = make_call(w, spec, backend, frame, batch)
                    if clip is not None:
                        call = video_calls(w, spec, backend, clip, clip_frames, tmp)
                    call()
                    sync(device)
                    build_s = time.perf_counter() - start
                print(f"  {spec.key}: built and ran once in {build_s:.1f} s", file=sys.stderr)
                for _ in range(args.warmup):
                    call()
                alpha = [timed(partial(backend.set_alpha, a), device)[0]
                         for a in (0.3, 0.7, 0.0)]  # ends at alpha 0, the network the reference runs
        except Exception as e:  # a backend that fails to build is reported as such, and the others still run
            result["unavailable"].append({"backend": spec.key, "label": spec.label,
                                          "reason": f"failed: {type(e).__name__}: {e}"})
            print(f"  {spec.key} failed: {e}", file=sys.stderr)
            continue
        tile = spec.tile(w) if spec.tile else None
        row: dict[str, Any] = {
            "backend": spec.key, "label": spec.label, "dtype": spec.dtype(w.device),
            "engine_tile": list(tile) if tile else None, "build_s": build_s,
            "set_alpha_ms": float(np.median(alpha)) * 1e3,
            "peak_memory_mib": None if mem.peak is None else mem.peak / 2**20, "times": []}
        live.append((spec, backend, call, row))

    outputs: dict[str, Any] = {}
    for r in range(args.repeat):  # alternating: every backend once per round, the order rotating
        k = r % max(1, len(live))
        for entry in live[k:] + live[:k]:
            spec, _backend, call, row = entry
            try:
                with _fp32_reference() if row["dtype"] == "fp32" else contextlib.nullcontext():
                    seconds, out = timed(call, device)
            except Exception as e:  # e.g. out of memory on a large frame: reported, and the others go on
                result["unavailable"].append({"backend": spec.key, "label": spec.label,
                                              "reason": f"failed while timing: {type(e).__name__}: {e}"})
                live.remove(entry)
                continue
            row["times"].append(seconds)
            if clip is not None:  # the pipeline's stats, then the engine alone on the same frames
                row.setdefault("busy", []).append(out["busy"])
                row.setdefault("engine_waits", []).append(out["engine_waits"])
                with _fp32_reference() if row["dtype"] == "fp32" else contextlib.nullcontext():
                    engine_s, frames_out = timed(call.engine_only, device)
                row.setdefault("engine_times", []).append(engine_s)
                out = frames_out[0]
            outputs[spec.key] = out

    base = next((percentiles(row["times"])["median"] for s, _, _, row in live if s.key == BASELINE), None)
    for spec, _backend, _call, row in live:
        lat = percentiles(row["times"])
        seconds = lat["median"] / 1e3
        p, largest = psnr(host(outputs[spec.key]), ref, peak_value)
        peak = args.peaks.get(w.device, {}).get(row["dtype"])
        tflops = result["flops_per_call"] / seconds / 1e12
        row.update(
            latency_ms=lat, fps=w.frames / seconds,
            output_mpix_s=w.frames * w.width * w.height * scale**2 / seconds / 1e6,
            tflops=tflops, peak_tflops=peak["tflops"] if peak else None,
            peak_fraction=tflops / peak["tflops"] if peak else None,
            vs_baseline=base / lat["median"] if base else None,
            psnr_db=p, max_abs_diff=largest)
        row["times_ms"] = [t * 1e3 for t in row.pop("times")]
        if clip is not None:
            engine_ms = percentiles(row.pop("engine_times"))["median"]
            busy, waits = row.pop("busy"), row.pop("engine_waits")
            row["video"] = {
                "frames": w.video, "codec": "libx264", "pipeline_fps": row["fps"],
                "engine_fps": w.frames / (engine_ms / 1e3),
                "pipeline_vs_engine": engine_ms / lat["median"],
                "busy": {stage: float(np.median([b[stage] for b in busy])) for stage in busy[0]},
                "engine_waits": {why: float(np.median([x[why] for x in waits])) for why in waits[0]}}
        result["rows"].append(row)
    result["baseline"] = BASELINE if base is not None else None
    result["psnr_units"] = "8-bit output, peak 255" if batch is None else "float output in [0, 1], peak 1"
    return result


# ---------------------------------------------------------------------------------------------------------------
# Output


def _num(v: float | None, digits: int = 2) -> str:
    """`v` to `digits` significant digits (all of its integer digits kept); — for None."""
    if v is None:
        return "—"
    if v == 0:
        return "0"
    return f"{v:.{max(0, digits - 1 - math.floor(math.log10(abs(v))))}f}"


def markdown(doc: dict[str, Any], level: int = 1) -> str:
    """The run as Markdown: one table per workload, the backends that did not run with their reasons, the ratios.
    `level` is the heading level of the title (docs/benchmarks.md embeds it deeper)."""
    c = doc["conditions"]
    v = c["versions"]
    h = "#" * level
    sha = (c["commit"]["sha"] or "unknown")[:10] + (" (uncommitted changes)" if c["commit"]["dirty"] else "")
    lines = [f"{h} {c['device']}", "",
             f"{c['created']}, commit {sha}, `{c['command']}` ({c['seconds']:.0f} s). torch {v['torch']}, "
             f"onnxruntime {v['onnxruntime']}, triton {v['triton']}, TensorRT {v['tensorrt'] or 'not installed'}, "
             f"CUDA {v['cuda'] or '—'}, driver {c['driver'] or '—'}; CPU {c['cpu']} ({c['cpu_cores']} cores, "
             f"{c['torch_threads']} torch threads). {c['repeat']} timed calls per backend, alternating, after "
             f"{c['warmup']} warm-up call{'' if c['warmup'] == 1 else 's'}."]
    for name, peak in doc["peaks"].items():
        lines += ["", f"Peak, {name}: " + "; ".join(f"{d} {p['tflops']:.4g} TFLOP/s ({p['source']})"
                                                    for d, p in peak.items()) + "."]
    for w in doc["workloads"]:
        lines += ["", f"{h}# {w['name']}: {w['what']}", ""]
        if w.get("skipped"):
            lines.append(f"Not run: {w['skipped']}.")
            continue
        lines += [f"{w['model']} ({w['arch']}, {w['weights']}) on {w['device']}; {w['mode']}; "
                  f"{w['macs_per_pixel']:,.0f} multiply-adds per input pixel (counted from the model). PSNR against "
                  f"PyTorch fp32 on the {w['psnr_units']}.", ""]
        lines += ["| backend | dtype | median ms (p20–p80) | frames/s | out MP/s | TFLOP/s | % of peak | "
                  "vs PyTorch fp32 | peak MiB | build s | set_alpha ms | PSNR dB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in w["rows"]:
            lat = r["latency_ms"]
            pct = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
            p = "∞ (identical)" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
            vs = "—" if r["vs_baseline"] is None else f"{r['vs_baseline']:.2f}×"
            lines.append(f"| {r['label']} | {r['dtype']} | {_num(lat['median'], 3)} ({_num(lat['p20'], 3)}–"
                         f"{_num(lat['p80'], 3)}) | {_num(r['fps'])} | {_num(r['output_mpix_s'])} | "
                         f"{_num(r['tflops'], 3)} | {_num(pct)} | {vs} | {_num(r['peak_memory_mib'], 3)} | "
                         f"{_num(r['build_s'])} | {_num(r['set_alpha_ms'])} | {p} |")
        videos = [r for r in w["rows"] if r.get("video")]
        if videos:
            lines += ["", "The clip end to end against the engine alone on its decoded frames (engine.infer_frames), "
                      "the share of the clip's wall time each stage was busy, and the engine's idle share: waiting "
                      "for frames, for the encoder, before its first frame (setup) and after its last (the "
                      "encoder's last frames and the join):", "",
                      "| backend | clip frames/s (decode + engine + encode) | engine-only frames/s | "
                      "clip ÷ engine-only | busy: decode / engine / encode | engine idle: frames / encoder / setup "
                      "/ finish |", "|---|---|---|---|---|---|"]
            for r in videos:
                v, b = r["video"], r["video"]["busy"]
                i = v.get("engine_waits") or {}
                idle = " / ".join(f"{i[k]:.0%}" if k in i else "—" for k in ("for_frames", "for_encoder", "setup",
                                                                               "finish"))
                lines.append(f"| {r['label']} | {_num(v['pipeline_fps'], 3)} | {_num(v['engine_fps'], 3)} | "
                             f"{v['pipeline_vs_engine']:.2f} | {b['decode']:.0%} / {b['engine']:.0%} / "
                             f"{b['encode']:.0%} | {idle} |")
        reasons: dict[str, list[str]] = {}
        for u in w["unavailable"]:
            reasons.setdefault(u["reason"], []).append(u["label"])
        if reasons:
            lines += ["", "Not run here:"] + [f"- {', '.join(labels)}: {why}" for why, labels in reasons.items()]
        others = [r for r in w["rows"] if r["backend"] != BASELINE]
        if w["baseline"] and others:
            lines += ["", "PyTorch eager fp32's median time ÷ each backend's: " + ", ".join(
                f"{r['label']} {r['vs_baseline']:.2f}×" for r in others) + "."]
    return "\n".join(lines) + "\n"


def chart(doc: dict[str, Any], path: Path) -> str | None:
    """Output megapixels/s per backend, one panel per workload, as a PNG; the reason when it cannot be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'esrgan-engine[bench]')"
    shown = [w for w in doc["workloads"] if w.get("rows")]
    if not shown:
        return "no workload ran"
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 1.2 + 0.45 * sum(len(w["rows"]) + 2 for w in shown)),
                             squeeze=False)
    for ax, w in zip(axes[:, 0], shown, strict=True):
        rows = sorted(w["rows"], key=lambda r: r["output_mpix_s"])
        ax.barh([f"{r['label']}" for r in rows], [r["output_mpix_s"] for r in rows], color="#4c72b0")
        for i, r in enumerate(rows):
            ax.text(r["output_mpix_s"], i, f" {r['output_mpix_s']:.3g}", va="center", fontsize=8)
        ax.set_title(f"{w['name']}: {w['what']}", fontsize=9, loc="left")
        ax.set_xlabel("output megapixels / s (higher is better)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.margins(x=0.15)
    c = doc["conditions"]
    fig.suptitle(f"{c['device']} — torch {c['versions']['torch']}, commit {(c['commit']['sha'] or '?')[:10]}",
                 fontsize=9)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    atomic_write(path, write)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="workloads: " + ", ".join(w.name for w in WORKLOADS + QUICK)
                                + "; backends: " + ", ".join(b.key for b in backend_specs()))
    p.add_argument("--quick", action="store_true", help="the CPU-sized set, under two minutes (default: the full set)")
    p.add_argument("--workloads", help="comma-separated workload names (default: all of the set)")
    p.add_argument("--backends", help="comma-separated backend keys (default: all)")
    p.add_argument("--repeat", type=int, help="timed calls per backend (default: 10; 5 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed calls after the first (default: 3; 1 with --quick)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"),
                   help="results folder; the JSON and PNG go to OUT/<device>/ (default: bench/results)")
    p.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart (default: draw it)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.repeat = args.repeat if args.repeat is not None else (5 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be at least 1 and --warmup at least 0")
    pool = QUICK if args.quick else WORKLOADS
    known = {w.name: w for w in WORKLOADS + QUICK}
    if args.workloads:
        names = args.workloads.split(",")
        if bad := [n for n in names if n not in known]:
            p.error(f"--workloads: unknown {', '.join(bad)} (known: {', '.join(known)})")
        pool = [known[n] for n in names]
    args.pool = pool
    keys = {b.key: b for b in backend_specs()}
    if args.backends:
        names = args.backends.split(",")
        if bad := [n for n in names if n not in keys]:
            p.error(f"--backends: unknown {', '.join(bad)} (known: {', '.join(keys)})")
        args.specs = [keys[n] for n in names]
    else:
        args.specs = list(keys.values())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    cond = conditions(args)
    cond["created"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    has_cuda = torch.cuda.is_available()
    runnable = [w for w in args.pool if w.device == "cpu" or has_cuda]
    dtypes = {dev: {s.dtype(dev) for s in args.specs} for dev in {w.device for w in runnable}}
    args.peaks = {dev: device_peaks(torch.device(dev), ds) for dev, ds in dtypes.items()}
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "conditions": cond, "peaks": args.peaks,
                           "workloads": []}
    with tempfile.TemporaryDirectory(prefix="esrgan-bench-") as tmp:
        for w in args.pool:
            if w not in runnable:
                doc["workloads"].append({"name": w.name, "what": w.what, "model": w.model, "device": w.device,
                                         "skipped": "no CUDA device on this machine", "rows": [], "unavailable": []})
                continue
            d = Path(tmp) / w.name
            d.mkdir()
            doc["workloads"].append(run_workload(w, args.specs, args, d))
    cond["seconds"] = round(time.perf_counter() - start, 1)
    print(markdown(doc))
    out = Path(args.out) / device_slug(cond["device"])
    stem = cond["created"].replace(":", "").replace("-", "").replace("T", "-").rstrip("Z") + ("-quick" if args.quick
                                                                                            else "")
    json_path = out / f"{stem}.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1) + "\n"))
    print(f"wrote {json_path}")
    if not args.no_chart:
        why = chart(doc, out / f"{stem}.png")
        print(f"chart not drawn: {why}" if why else f"wrote {out / f'{stem}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
