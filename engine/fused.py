"""The Triton backend: RRDBNet and SRResNet run by the fused kernels of `kernels/` (RRDBNet also with an INT8 trunk).

    backend = TritonBackend(net, dtype="fp16", gan_net=gan)     # packs the weights once
    out = engine.infer(backend, image, alpha=0.8)                # set_alpha: one lerp kernel, in place

On a GPU the forward of each tile shape is captured in a CUDA graph after one warm-up run and replayed; `set_alpha`
rewrites the packed weights at their addresses, so the captured graphs stay valid and are not captured again. On a
machine without a GPU the kernels run only under the Triton interpreter (TRITON_INTERPRET=1, for tests: slow).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from . import models

log = logging.getLogger("engine")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonBackend:
    """A `Backend` over `kernels.rrdbnet.FusedRRDBNet` or `kernels.srresnet.FusedSRResNet`."""

    def __init__(self, net: models.SRNet, *, device: str | torch.device | None = None, dtype: str = "fp16",
                 gan_net: models.SRNet | None = None, cuda_graph: bool = True,
                 int8_ranges: dict[str, float] | None = None) -> None:
        if dtype not in (*DTYPES, "int8"):
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or int8, got {dtype!r}")
        if dtype == "int8" and (int8_ranges is None or not isinstance(net, models.RRDBNet)):
            raise ValueError("int8 runs an RRDBNet with its calibrated slice ranges "
                             "(export.quantize.rdb_slice_ranges): pass int8_ranges=")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type != "cuda" and not _interpreting():
            raise RuntimeError("the triton backend runs its kernels on a CUDA GPU; this machine has none (set "
                               "TRITON_INTERPRET=1 before anything imports triton to run them, slowly, on the CPU)")
        try:
            from kernels.rrdbnet import FusedRRDBNet
            from kernels.rrdbnet_int8 import FusedRRDBNetInt8
            from kernels.srresnet import FusedSRResNet
        except ImportError as e:
            raise RuntimeError(f"the triton backend needs Triton: pip install 'esrgan-engine[triton]' ({e})") from e
        plans: dict[type, Any] = {models.RRDBNet: FusedRRDBNet, models.SRResNet: FusedSRResNet}
        plan_type = plans.get(type(net))
        if plan_type is None:
            raise ValueError(f"the triton backend runs RRDBNet and SRResNet, not {type(net).__name__}: use "
                             f"--backend torch or onnxruntime for it")
        if gan_net is not None:
            models.registry.require_same_network(net, gan_net)
        self.dtype = dtype
        gan = gan_net.eval() if gan_net is not None else None
        if dtype == "int8":
            assert int8_ranges is not None and isinstance(net, models.RRDBNet)
            assert gan is None or isinstance(gan, models.RRDBNet)
            self.plan: Any = FusedRRDBNetInt8(net.eval(), int8_ranges, gan_net=gan, device=self.device)
        else:
            self.plan = plan_type(net.eval(), dtype=DTYPES[dtype], device=self.device, gan_net=gan)
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.multiple = self.plan.multiple
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int, int], torch.cuda.CUDAGraph] = {}
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
        buf = self.plan.buffers(n, h, w)  # the plan's static input and output for this shape
        buf["input"][0].copy_(batch)
        if not self.cuda_graph:
            self.plan.forward(n, h, w)
            return buf["output"][0].clone()
        graph = self._graphs.get((n, h, w))
        if graph is None:
            self.plan.forward(n, h, w)  # warm-up: compiles the kernels
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.plan.forward(n, h, w)
            self._graphs[n, h, w] = graph
        graph.replay()
        return buf["output"][0].clone()

    def bytes_per_pixel(self) -> float:
        """Device bytes per input pixel: the plan's arena (NHWC buffers, float32 input and output) for a probe shape,
        plus the returned float32 copy of the output."""
        side = 8 * self.multiple
        arena = self.plan.arena_bytes(1, side, side)
        return arena / side**2 + 4 * self.out_channels * self.scale**2
