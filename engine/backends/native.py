"""The native backend: a plan (`kernels.plan`) run by the C++ runtime of `engine._C`, with no Triton and no torch in
the loop.

    backend = NativeBackend("engines/rrdb23-fp16-native/model.plan", alpha=0.8)
    out = engine.infer(backend, image)          # tiling, conversion, launches and blending all in engine._C

`engine._C.NativePlan` loads the plan's cubins, allocates its arena and weights once, captures each built shape's
launch list in a CUDA graph and replays it; `set_alpha` runs the plan's blend kernel in place (the graphs stay
valid). `upscale_planes` hands a whole image to the runtime: from numpy through pinned buffers (upload of later rows,
compute and download of finished rows overlap on three streams), or from a CUDA tensor through DLPack, never
leaving the device.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .._ext import load_C
from ..machine import local_arch
from .fused import fused_files, network_problem, timed_on_gpu, triton_missing
from .registry import (
    BackendInfo,
    BenchRow,
    BuildRequest,
    Built,
    EngineError,
    LoadRequest,
    gpu_arch_problems,
    reading,
    register,
)

log = logging.getLogger("engine")


class NativeBackend:
    """A `Backend` over `engine._C.NativePlan` (a CUDA GPU of the plan's architecture is required)."""

    def __init__(self, path: str | os.PathLike[str], *, device: int = 0, alpha: float | None = None,
                 cuda_graph: bool = True) -> None:
        self.path = str(path)
        self.runtime = load_C().NativePlan(self.path, device, cuda_graph)
        self.meta: dict[str, Any] = json.loads(self.runtime.meta)
        self.scale, self.multiple = int(self.meta["scale"]), int(self.meta["multiple"])
        self.in_channels, self.out_channels = int(self.meta["in_channels"]), int(self.meta["out_channels"])
        self.device = torch.device("cuda", device)
        self.shapes = self.runtime.shapes
        first = self.shapes[0]
        self.tile, self.batch = int(first["h"]), int(first["n"])
        self.alpha: float | None = 0.0 if self.runtime.has_alpha else None
        self.last_refit_seconds: float | None = None
        if alpha:
            self.set_alpha(alpha)

    def set_alpha(self, alpha: float) -> float:
        """Blend the endpoints at `alpha` into the live weights in place (one kernel); returns seconds."""
        seconds = float(self.runtime.set_alpha(float(alpha)))
        self.alpha, self.last_refit_seconds = float(alpha), seconds
        return seconds

    def _shape(self, n: int, h: int, w: int) -> int:
        for index, s in enumerate(self.shapes):
            if (s["h"], s["w"]) == (h, w) and n <= s["n"]:
                return index
        built = [(s["n"], s["c_in"], s["h"], s["w"]) for s in self.shapes]
        raise ValueError(f"{self.path} was built for input shapes {built}, not (≤N, {self.in_channels}, {h}, {w}): "
                         f"rebuild it with --tile/--batch for this size, or let engine.infer tile the image")

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 (N, in_channels, h, w) of a built tile size, N up to the built batch → float32 output on the
        GPU (fewer tiles than the built batch are padded with zeros)."""
        n, c, h, w = batch.shape
        if c != self.in_channels:
            raise ValueError(f"the plan reads {self.in_channels} channels, the batch has {c}")
        index = self._shape(n, h, w)
        s = self.shapes[index]
        x = batch.to(self.device, torch.float32).contiguous()
        if n < s["n"]:  # the graph runs the built batch: pad with zero tiles
            x = torch.cat([x, x.new_zeros((s["n"] - n, c, h, w))])
        y = torch.empty((s["n"], s["c_out"], s["h_out"], s["w_out"]), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self.runtime.run_device(x.data_ptr(), y.data_ptr(), index, stream)
        return y[:n]

    def upscale_planes(self, planes: np.ndarray | torch.Tensor, *, tile: int | None = None,
                       tile_overlap: int) -> np.ndarray | torch.Tensor:
        """float32 planes (C, H, W) → (C_out, H·scale, W·scale), the whole tiled upscale in the runtime: numpy in,
        numpy out; a CUDA tensor in, a CUDA tensor out (DLPack, no host round trip)."""
        if tile not in (None, self.tile):
            raise ValueError(f"{self.path} was built for {self.tile}-pixel tiles, not {tile}: rebuild it with "
                             f"--tile {tile} or leave tile unset")
        why = padded_edges(self.tile, int(planes.shape[-2]), int(planes.shape[-1]))
        if why:
            log.warning("%s: %s", self.path, why)
        if 2 * tile_overlap > self.tile:
            log.warning("tile overlap %d is more than half the plan's tile %d: using %d", tile_overlap, self.tile,
                        self.tile // 2)
            tile_overlap = self.tile // 2
        if isinstance(planes, torch.Tensor) and planes.is_cuda:
            x = planes.detach().to(self.device, torch.float32).contiguous()
            stream = torch.cuda.current_stream(self.device).cuda_stream
            out: np.ndarray | torch.Tensor = torch.from_dlpack(
                self.runtime.upscale_dlpack(x, tile_overlap, stream))
        else:
            host = planes.cpu().numpy() if isinstance(planes, torch.Tensor) else planes
            out = self.runtime.upscale(np.ascontiguousarray(host, dtype=np.float32), tile_overlap)
        return out

    def bytes_per_pixel(self) -> float:
        s = self.shapes[0]
        return float(self.runtime.arena_bytes) / (s["n"] * s["h"] * s["w"])


def padded_edges(tile: int, height: int, width: int) -> str | None:
    """Why an image of height × width through a plan of `tile`-pixel tiles is not the network's output at its
    edges, or None. The plan runs one tile shape, and the runtime pads a smaller image by repeating its edge pixels:
    the network sees those instead of its zero padding (measured: docs/native-plans.md#on-a-gpu)."""
    short = [f"{name} {n}" for name, n in (("height", height), ("width", width)) if n < tile]
    if not short:
        return None
    return (f"the image's {' and '.join(short)} is less than the plan's {tile}-pixel tile: it is padded, and the "
            f"output near that edge differs from the network's; build the plan with --tile {min(height, width)} "
            f"or less for images of this size")


# ---------------------------------------------------------------------------------------------------------
# engine folders: model.plan


def build(req: BuildRequest) -> Built:
    """The plan: the fused program's kernels compiled for --arch (default: this machine's GPU, else 90), its launch
    list for the one built shape (batch × channels × tile × tile), both endpoints' packed weights."""
    from kernels.fused import fused_network
    from kernels.plan import PLAN_VERSION, build_plan, write_plan

    built = fused_files(req)
    net, arch = req.net, req.options.get("arch") or local_arch() or 90
    print(f"compiling the fused kernels for sm_{arch}" + ("" if torch.cuda.is_available() else
                                                           " (no GPU here: triton.compile with a GPUTarget)"))
    fused = fused_network(net, req.precision, gan_net=req.gan,
                          int8_ranges=built.manifest.get("int8", {}).get("slice_ranges"), device="cpu")
    plan = build_plan(fused, [(req.batch, net.in_channels, req.tile, req.tile)], arch=arch,
                      meta={"model": req.entries["model"], "precision": req.precision, "alpha": req.entries["alpha"]})
    built.manifest["gpu_arch"] = f"sm_{arch}"
    built.manifest["plan"] = {"format_version": PLAN_VERSION, "kernels": len(plan.kernels),
                              "launches": len(plan.launches),
                              "arena_bytes": max(s["arena_bytes"] for s in plan.shapes),
                              "weights_bytes": len(plan.weights), "triton": plan.meta["triton"]}
    built.write["model.plan"] = lambda path: write_plan(path, plan)
    return built


def load(req: LoadRequest) -> NativeBackend:
    """The C++ runtime over model.plan; without a GPU, an error that says what can run the plan instead."""
    C = load_C()
    if not C.built_with_cuda() or C.cuda_device_count() == 0:
        why = "engine._C was built without CUDA" if not C.built_with_cuda() else "this machine has no CUDA device"
        raise EngineError(f"{req.folder} is a native plan for {req.manifest.get('gpu_arch')}; {why}. Run it on that "
                          f"GPU, or interpret it on the CPU with kernels.plan_reference.ReferenceExecutor("
                          f"'{req.folder / 'model.plan'}') (slow; TRITON_INTERPRET=1), or build --backend onnxruntime "
                          f"for the CPU")
    with reading(req.folder, "model.plan"):
        return NativeBackend(req.folder / "model.plan", device=req.device.index or 0, alpha=req.alpha)


def _unavailable() -> str | None:
    if (why := triton_missing()) is not None:
        return why
    try:
        C = load_C()
    except ImportError as e:
        return str(e)
    if not C.built_with_cuda():
        return "engine._C was built without CUDA (reinstall with nvcc on the PATH)"
    if C.cuda_device_count() == 0:
        return "native plans run on a CUDA GPU, and this machine has none"
    return None


def _unverifiable(manifest: Mapping[str, Any]) -> str | None:
    if torch.cuda.is_available() and f"sm_{local_arch()}" == manifest["gpu_arch"]:
        return None
    return (f"the plan runs on an {manifest['gpu_arch']} GPU and this machine has none (kernels.plan_reference."
            f"ReferenceExecutor interprets a plan on the CPU; tests do that)")


register(BackendInfo(
    name="native", label="native plan (engine._C)", precisions=("fp16", "bf16", "fp32", "int8"), devices=("cuda",),
    unavailable=_unavailable, network=network_problem, cannot_build=triton_missing,
    files=(frozenset({"model.plan"}), frozenset()), check_manifest=gpu_arch_problems, build=build, load=load,
    unverifiable=_unverifiable, options=("arch",), one_shape=True,
    bench=(BenchRow("native-fp16", "native plan (engine._C) fp16", "fp16", unavailable=timed_on_gpu),),
))
