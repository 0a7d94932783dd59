"""The Triton backend: a network run by the fused program of `kernels/` its architecture names (`kernels.fused`).

    backend = TritonBackend(net, dtype="fp16", gan_net=gan)     # packs the weights once
    out = engine.infer(backend, image, alpha=0.8)                # set_alpha: one lerp kernel, in place

On a GPU the forward of each tile shape is captured in a CUDA graph after one warm-up run and replayed; `set_alpha`
rewrites the packed weights at their addresses, so the captured graphs stay valid and are not captured again. Each
graph is kept with the arena whose addresses it baked in (`kernels.packing.ShapeState`): the plan keeps at most
`max_shapes` tile shapes (8 by default), and dropping the least recently used shape drops its graph with it. On a
machine without a GPU the kernels run only under the Triton interpreter (TRITON_INTERPRET=1, for tests: slow).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from .. import models
from .registry import REBUILD, BackendInfo, BenchRow, BuildRequest, Built, EngineError, LoadRequest, reading, register


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonBackend:
    """A `Backend` over the fused program of `net`'s architecture (`kernels.fused`): fp16, bf16, fp32, or an INT8
    trunk with calibrated `int8_ranges` (`export.quantize.rdb_slice_ranges`).

    Args:
        max_shapes: tile shapes (N, h, w) that keep their arena and CUDA graph (default 8); the least recently used
            one is dropped first (`plan.max_shapes`, which can be changed later).
    """

    def __init__(self, net: models.SRNet, *, device: str | torch.device | None = None, dtype: str = "fp16",
                 gan_net: models.SRNet | None = None, cuda_graph: bool = True,
                 int8_ranges: Mapping[str, float] | None = None, max_shapes: int = 8) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type != "cuda" and not _interpreting():
            raise RuntimeError("the triton backend runs its kernels on a CUDA GPU; this machine has none (set "
                               "TRITON_INTERPRET=1 before anything imports triton to run them, slowly, on the CPU)")
        if (why := triton_missing()) is not None:
            raise RuntimeError(f"the triton backend needs Triton: {why}")
        from kernels.fused import fused_network

        self.dtype = dtype
        self.plan: Any = fused_network(net, dtype, gan_net=gan_net, int8_ranges=int8_ranges, device=self.device)
        self.plan.max_shapes = max_shapes
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.multiple = self.plan.multiple
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.last_refit_seconds: float | None = None

    @property
    def alpha(self) -> float | None:
        return self.plan.alpha

    def set_alpha(self, alpha: float) -> float:
        """Blend the packed weights in place (one kernel); captured graphs keep working. Returns seconds."""
        start = time.perf_counter()
        self.plan.set_alpha(alpha)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_refit_seconds = time.perf_counter() - start
        return self.last_refit_seconds

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 (N, in_channels, h, w) → float32 (N, out_channels, h·scale, w·scale) on `device`."""
        if batch.ndim != 4 or batch.shape[1] != self.in_channels:
            raise ValueError(f"batch must have shape (N, {self.in_channels}, h, w), got {tuple(batch.shape)}")
        n, _, h, w = batch.shape
        state = self.plan.state(n, h, w)  # the plan's static buffers for this shape, and its graph once captured
        buf = state.buffers
        buf["input"][0].copy_(batch)
        if not self.cuda_graph:
            self.plan.forward(n, h, w)
            return buf["output"][0].clone()
        if state.graph is None:
            self.plan.forward(n, h, w)  # warm-up: compiles the kernels
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.plan.forward(n, h, w)
            state.graph = graph  # dropped with the arena it reads and writes
        state.graph.replay()
        return buf["output"][0].clone()

    def bytes_per_pixel(self) -> float:
        """Device bytes per input pixel: the plan's arena (NHWC buffers, float32 input and output) for a probe shape
        (computed, not allocated), plus the returned float32 copy of the output."""
        side = 8 * self.multiple
        arena = self.plan.arena_bytes(1, side, side)
        return arena / side**2 + 4 * self.out_channels * self.scale**2


# ---------------------------------------------------------------------------------------------------------
# engine folders: the checkpoints (packed for the kernels when loaded)


def fused_files(req: BuildRequest) -> Built:
    """What the Triton and native engines share: the INT8 slice ranges when calibrating (one per RDB slice)."""
    built = Built(manifest={}, write={})
    if req.precision == "int8":
        from export.quantize import rdb_slice_ranges

        method, images, entry = req.calibrate("the INT8 trunk, one range per RDB slice")
        built.manifest["int8"] = {**entry, "slice_ranges": rdb_slice_ranges(req.net, images, gan_net=req.gan,
                                                                            method=method)}
        built.probe = req.image_probe(images[0])
    return built


def build(req: BuildRequest) -> Built:
    built = fused_files(req)
    net, gan = req.net, req.gan
    built.write["model.safetensors"] = lambda path: models.save(net, path)
    if gan is not None:
        built.write["gan.safetensors"] = lambda path: models.save(gan, path)
    return built


def load(req: LoadRequest) -> TritonBackend:
    folder, manifest = req.folder, req.manifest
    if req.device.type == "cpu" and not _interpreting():
        raise EngineError(f"{folder} is a triton engine: its kernels run on a CUDA GPU, and " + (
            "device='cpu' was asked for" if torch.cuda.is_available() else "this machine has none") +
            " (TRITON_INTERPRET=1 before anything imports triton runs them, slowly, on the CPU); or build "
            "--backend onnxruntime for the CPU")
    with reading(folder, "model.safetensors"):
        net, _ = models.load(folder / "model.safetensors")
    gan = None
    if "gan.safetensors" in manifest["files"]:
        with reading(folder, "gan.safetensors"):
            gan = models.load(folder / "gan.safetensors")[0]
            models.registry.require_same_network(net, gan)
    try:
        backend = TritonBackend(net, device=req.device, dtype=manifest["precision"], gan_net=gan,
                                int8_ranges=manifest.get("int8", {}).get("slice_ranges"))
    except ValueError as e:  # the manifest's precision or INT8 ranges do not fit the network
        raise EngineError(f"{folder}: {e}: {REBUILD}") from e
    if gan is not None and req.alpha:
        backend.set_alpha(req.alpha)
    return backend


def from_network(net: models.SRNet, *, gan_net: models.SRNet | None = None, precision: str = "fp16",
                 device: str | torch.device | None = None, threads: int = 0,
                 calibration: list[Any] | None = None) -> TritonBackend:
    """The registry's constructor; INT8 calibrates its slice ranges on `calibration` (images)."""
    ranges = None
    if precision == "int8":
        from export.quantize import rdb_slice_ranges

        if not calibration:
            raise ValueError("an INT8 triton backend needs calibration images")
        ranges = rdb_slice_ranges(net, calibration, gan_net=gan_net)
    return TritonBackend(net, device=device, dtype=precision, gan_net=gan_net, int8_ranges=ranges)


def network_problem(net: models.SRNet, precision: str) -> str | None:
    """Why no fused program runs `net` at `precision` (the Triton and native backends)."""
    from kernels.fused import unsupported

    return unsupported(net, precision)


def triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install 'esrgan-engine[triton]')"
    return None


def _unavailable() -> str | None:
    if (why := triton_missing()) is not None:
        return why
    if not torch.cuda.is_available() and not _interpreting():
        return ("the Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1, slowly, on the CPU), and this machine has "
                "none")
    return None


def _unverifiable(manifest: Mapping[str, Any]) -> str | None:
    if torch.cuda.is_available():
        return None
    if not _interpreting():
        return "the Triton kernels need a CUDA GPU to run, and this machine has none"
    if manifest["precision"] == "bf16":
        return "the Triton interpreter cannot run bf16 dots (triton-lang/triton#11584); verify on a GPU"
    return None


def timed_on_gpu(device: torch.device) -> str | None:
    """Why a benchmark row of the fused kernels cannot be timed on `device` (bench rows of triton and native)."""
    if device.type != "cuda":
        return "a GPU backend; this workload runs on the CPU"
    if _interpreting():
        return "TRITON_INTERPRET=1 is set: the interpreter is for tests, not timing"
    return None


def _int8_problems(manifest: Mapping[str, Any]) -> list[str]:
    if manifest["precision"] != "int8":
        return []
    ranges = manifest.get("int8", {}).get("slice_ranges") if isinstance(manifest.get("int8"), dict) else None
    if isinstance(ranges, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                        and v == v and v != float("inf") for v in ranges.values()):
        return []
    return ["int8.slice_ranges must be an object of numbers ≥ 0 (the calibrated activation ranges)"]


register(BackendInfo(
    name="triton", label="Triton kernels", precisions=("fp16", "bf16", "fp32", "int8"), devices=("cuda", "cpu"),
    unavailable=_unavailable, network=network_problem,
    files=(frozenset({"model.safetensors"}), frozenset({"gan.safetensors"})), gan_file="gan.safetensors",
    check_manifest=_int8_problems, build=build, load=load, from_network=from_network, unverifiable=_unverifiable,
    bench=(BenchRow("triton-fp16", "Triton kernels fp16", "fp16", unavailable=timed_on_gpu),
           BenchRow("triton-int8", "Triton kernels INT8", "int8", unavailable=timed_on_gpu)),
))
