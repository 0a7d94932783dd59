"""TensorRT runtime: run a serialized plan as an `engine.infer` Backend, and refit its weights for alpha.

    backend = TensorRTBackend("engines/rrdb23/model.plan", scale=4, in_channels=3, out_channels=3, multiple=1,
                              weights_psnr=psnr_arrays, weights_gan=gan_arrays)
    backend.set_alpha(0.8)                  # θ = 0.2·θ_psnr + 0.8·θ_gan, refitted on the device, no rebuild
    out = engine.infer(backend, image, tile=256)

This is the runtime half; `export/tensorrt.py` builds the plans. Nothing here touches the builder (only
`trt.Runtime`, `trt.Refitter` and execution contexts), and TensorRT is imported lazily: `import engine.backends.trt`
works without it, and using it without TensorRT raises `TensorRTUnavailable`, which says what to install.

Execution: every input shape (N, C, h, w) gets its own execution context with static input and output buffers
(the contexts share one scratch allocation: they never run at once, everything goes through one CUDA stream).
The first run of a shape executes plainly and is then captured as a CUDA graph; later runs of that shape copy
the batch into the static input and replay the graph. If capture fails the backend says so once and runs
without graphs.

Alpha: both endpoint weight sets live on the device, packed per dtype into flat buffers, and the live weights
θ(α) are rewritten in place by one `torch.lerp` per dtype on the engine's stream; the Refitter is given the
live buffers' device addresses once (`set_named_weights(name, weights, TensorLocation.DEVICE)`), after which
every `set_alpha` only blends and calls `refit_cuda_engine_async` again. Whether a CUDA graph captured before a
refit sees the new weights is not documented by NVIDIA (unverified; docs/tensorrt.md), so every refit drops the
captured graphs and the next run of each shape captures again (one plain run, one capture: milliseconds).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..trt_lib import (
    FIXED_PREFIXES,
    RefitWeightsError,
    TensorRTUnavailable,
    TrtLog,
    match_refit_weights,
    names,
    numpy_dtype,
    require_tensorrt,
    trt_logger,
)
from .ort import ENDPOINT_FILES
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
from .trt_weights import ALIGN_BYTES, BlendedWeights

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger("engine.trt")

# TensorRT DataType names → torch / numpy dtypes (numpy has no bfloat16: such weights cannot be given as arrays)
TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
    "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
}


# ---------------------------------------------------------------------------------------------------------
# The backend


def _dims(dims: Any) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _device_memory_size(engine: trt.ICudaEngine) -> int:
    """Scratch bytes an execution context needs at any shape of the profile: the v2 size (TensorRT ≥ 10.1, which
    `require_tensorrt` ensures), which includes weight-streaming scratch, as `set_device_memory` expects."""
    return int(engine.device_memory_size_v2)


def _cuda_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"TensorRT engines run on a CUDA device, got device={str(device)!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs an NVIDIA GPU and torch sees none (torch.cuda.is_available() is False; "
                           "a CPU build of torch?): install a CUDA build of torch, or use --backend onnxruntime")
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


@dataclass
class _ShapeState:
    """One input shape: its execution context, static I/O buffers, and its CUDA graph once captured."""

    context: trt.IExecutionContext
    input: torch.Tensor  # (N, C, h, w) in the engine's input dtype
    output: torch.Tensor  # (N, C_out, h·s, w·s) in the engine's output dtype
    graph: torch.cuda.CUDAGraph | None = None


class TensorRTBackend:
    """A TensorRT plan run on a CUDA device: the `Backend` protocol of `engine.inference`, plus alpha refit.

    Args:
        plan_path: the serialized engine (`export.tensorrt.build_engine`); it runs only with the TensorRT version
            and the GPU architecture it was built for.
        scale, in_channels, out_channels, multiple: the network's (from the engine manifest); checked against
            the plan's I/O shapes.
        weights_psnr, weights_gan: both endpoint weight sets (`export.tensorrt.refit_arrays` for the plan's ONNX
            graph and each checkpoint), to blend with `set_alpha`; the plan must be built with refit=True.
        alpha: the α the plan's own weights were built with (from the manifest), or None if unknown (then the
            first `set_alpha` always refits).
        device: the CUDA device.
        cuda_graph: capture a CUDA graph per input shape after its first run (falls back, with one warning, to
            plain execution if capture fails).
        max_shapes: input shapes kept (context, static buffers, graph); the least recently used one is dropped.

    `run` takes float32 (N, in_channels, h, w) in [0, 1] (any device; moved to `device`) and returns float32
    (N, out_channels, h·scale, w·scale) on `device`. Batches larger than the plan's maximum batch are split.
    """

    def __init__(self, plan_path: str | Path, *, scale: int, in_channels: int, out_channels: int, multiple: int,
                 weights_psnr: Mapping[str, np.ndarray] | None = None,
                 weights_gan: Mapping[str, np.ndarray] | None = None, alpha: float | None = None,
                 device: str | torch.device = "cuda", cuda_graph: bool = True, max_shapes: int = 8) -> None:
        require_tensorrt("Runtime")
        import tensorrt as trt

        if (weights_psnr is None) != (weights_gan is None):
            raise ValueError("alpha needs both endpoint weight sets: give weights_psnr and weights_gan, or neither")
        self.device = _cuda_device(device)
        self.plan_path = Path(plan_path)
        if not self.plan_path.is_file():
            raise FileNotFoundError(f"no TensorRT plan at {self.plan_path}: build it first (export.tensorrt."
                                    f"build_engine, or the engine build CLI with --backend tensorrt)")
        self.scale, self.in_channels, self.out_channels, self.multiple = scale, in_channels, out_channels, multiple
        self.cuda_graph, self.max_shapes = cuda_graph, max(1, max_shapes)
        self.alpha: float | None = alpha if weights_psnr is not None else None
        self.last_refit_seconds: float | None = None
        self._trt_log = TrtLog()
        self._logger = trt_logger(self._trt_log)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not load {self.plan_path} ({self._trt_log.last_errors()}); a plan "
                                   f"runs only with the TensorRT version and GPU it was built with: rebuild it here")
            self._engine: trt.ICudaEngine = engine
            self._input, self._output = self._ionames()
            self._in_dtype = _torch_dtype(engine.get_tensor_dtype(self._input).name)
            self._out_dtype = _torch_dtype(engine.get_tensor_dtype(self._output).name)
            shapes = [_dims(d) for d in engine.get_tensor_profile_shape(self._input, 0)]
            self.profile: tuple[tuple[int, ...], ...] = tuple(shapes)  # (min, opt, max) of (N, C, h, w)
            self._check_channels()
            self.stream = torch.cuda.Stream(self.device)
            # one scratch allocation for every context: all work is ordered on self.stream
            self._scratch = torch.empty(max(_device_memory_size(engine), ALIGN_BYTES), dtype=torch.uint8,
                                        device=self.device)
        self._shapes: OrderedDict[tuple[int, ...], _ShapeState] = OrderedDict()
        self._graph_failed = False
        self._weights: BlendedWeights | None = None
        self._refitter: trt.Refitter | None = None
        self._proto_dtypes: dict[str, trt.DataType] = {}
        self._registered: list[trt.Weights] = []
        if weights_psnr is not None and weights_gan is not None:
            self._setup_refit(weights_psnr, weights_gan)

    # --- construction helpers

    def _ionames(self) -> tuple[str, str]:
        import tensorrt as trt

        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"{self.plan_path} has inputs {inputs} and outputs {outputs}; a super-resolution plan "
                               f"has one of each (export.onnx graphs: 'input' and 'output')")
        return inputs[0], outputs[0]

    def _check_channels(self) -> None:
        lo, _, hi = self.profile
        if len(hi) != 4 or hi[1] != self.in_channels or lo[1] != self.in_channels:
            raise ValueError(f"{self.plan_path} takes input shapes {lo}…{hi}, not (N, {self.in_channels}, h, w): "
                             f"the plan belongs to another network (in_channels={self.in_channels} was given)")

    def _setup_refit(self, psnr: Mapping[str, np.ndarray], gan: Mapping[str, np.ndarray]) -> None:
        import tensorrt as trt

        if not self._engine.refittable:
            raise ValueError(f"{self.plan_path} was built without REFIT, so alpha cannot be changed: rebuild it with "
                             f"refit=True (export.tensorrt.build_engine)")
        refitter = trt.Refitter(self._engine, self._logger)
        prototypes: dict[str, tuple[int, np.dtype | str]] = {}
        for name in refitter.get_all_weights():
            if not name:  # unnamed weights cannot be matched by name; get_missing_weights() reports any needed
                continue
            proto = refitter.get_weights_prototype(name)
            self._proto_dtypes[name] = proto.dtype
            prototypes[name] = (proto.size, numpy_dtype(proto.dtype.name))
        a = match_refit_weights(prototypes, psnr, what="weights_psnr", fixed_prefixes=FIXED_PREFIXES)
        b = match_refit_weights(prototypes, gan, what="weights_gan", fixed_prefixes=FIXED_PREFIXES)
        if list(a) != list(b):
            raise RefitWeightsError(f"weights_psnr and weights_gan give different graph constants: "
                                    f"{names(sorted(set(a) ^ set(b)))}; give both from refit_arrays")
        unused = sorted(set(psnr) - set(prototypes))
        if unused:
            log.debug("arrays for weights the plan cannot refit (folded or unused): %s", names(unused))
        self._weights = BlendedWeights(a, b, self.device)
        self._refitter = refitter
        log.info("TensorRT refit: %d weights, %.1f MB of endpoint and live buffers on %s", len(a),
                 self._weights.nbytes() / 1e6, self.device)

    # --- alpha

    def set_alpha(self, alpha: float) -> float:
        """Refit the engine with θ = (1 − alpha)·θ_psnr + alpha·θ_gan; returns the seconds taken (blend, refit and
        the wait for both), also kept in `last_refit_seconds`. Captured CUDA graphs are dropped (re-captured on
        the next run of each shape)."""
        if self._weights is None or self._refitter is None:
            raise ValueError("alpha needs both endpoint weight sets: TensorRTBackend(..., weights_psnr=..., "
                             "weights_gan=...) with arrays from export.tensorrt.refit_arrays")
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        start = time.perf_counter()
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self._weights.set_alpha(alpha)  # in place, on self.stream: ordered before the refit below
            if not self._registered:
                self._register_weights()
            if not self._refitter.refit_cuda_engine_async(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT refit of {self.plan_path} failed: {self._trt_log.last_errors()}")
            # the buffers keep their addresses and were validated once; later refits skip TensorRT's check
            self._refitter.weights_validation = False
            self.stream.synchronize()
        for state in self._shapes.values():
            state.graph = None  # unverified whether a graph sees refitted weights: capture again
        self.alpha = alpha
        self.last_refit_seconds = time.perf_counter() - start
        return self.last_refit_seconds

    def _register_weights(self) -> None:
        """Give the Refitter the live buffers' device addresses (once; later refits reuse them)."""
        import tensorrt as trt

        assert self._weights is not None and self._refitter is not None
        registered = []
        for name in self._weights.names:
            live = self._weights.live(name)
            weights = trt.Weights(self._proto_dtypes[name], live.data_ptr(), live.numel())
            if not self._refitter.set_named_weights(name, weights, trt.TensorLocation.DEVICE):
                raise RuntimeError(f"TensorRT rejected the weights {name!r} ({live.numel()} × {live.dtype}): "
                                   f"{self._trt_log.last_errors()}")
            registered.append(weights)  # keep the descriptors alive with the buffers
        missing = [n or "<unnamed>" for n in self._refitter.get_missing_weights()]
        if missing:
            raise RuntimeError(f"the refit of {self.plan_path} still misses weights: {names(missing)} (TensorRT "
                               f"combined them with refitted ones); give arrays for them in weights_psnr and "
                               f"weights_gan: export.tensorrt.refit_arrays(graph, state_dict) includes constants")
        self._registered = registered

    # --- running

    def _state(self, shape: tuple[int, ...]) -> _ShapeState:
        """The context and static buffers for input `shape`, made on first use (least recently used dropped)."""
        import tensorrt as trt

        state = self._shapes.get(shape)
        if state is not None:
            self._shapes.move_to_end(shape)
            return state
        context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context: {self._trt_log.last_errors()}")
        context.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
        if not context.set_input_shape(self._input, list(shape)):
            raise ValueError(f"input shape {shape} is outside the plan's profile {self.profile[0]}…{self.profile[2]}")
        out_shape = _dims(context.get_tensor_shape(self._output))
        n, _, h, w = shape
        if out_shape != (n, self.out_channels, h * self.scale, w * self.scale):
            raise ValueError(f"{self.plan_path} maps {shape} to {out_shape}, not to (N, {self.out_channels}, "
                             f"h·{self.scale}, w·{self.scale}): the plan belongs to another network")
        state = _ShapeState(context, torch.empty(shape, dtype=self._in_dtype, device=self.device),
                            torch.empty(out_shape, dtype=self._out_dtype, device=self.device))
        if not (context.set_tensor_address(self._input, state.input.data_ptr())
                and context.set_tensor_address(self._output, state.output.data_ptr())):
            raise RuntimeError(f"TensorRT refused the I/O buffers: {self._trt_log.last_errors()}")
        self._shapes[shape] = state
        if len(self._shapes) > self.max_shapes:
            self._shapes.popitem(last=False)
        return state

    def _execute(self, state: _ShapeState) -> None:
        """Run the engine on the static buffers, on self.stream: replay the graph, or run and then capture."""
        if state.graph is not None:
            state.graph.replay()
            return
        if not state.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed: {self._trt_log.last_errors()}")
        if self.cuda_graph and not self._graph_failed:
            state.graph = self._capture(state)  # the run above was the warm-up TensorRT needs before a capture

    def _capture(self, state: _ShapeState) -> torch.cuda.CUDAGraph | None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                ok = state.context.execute_async_v3(self.stream.cuda_stream)
            if not ok:
                raise RuntimeError(self._trt_log.last_errors())
        except Exception as e:
            self._graph_failed = True
            log.warning("CUDA graph capture of the TensorRT engine failed (%s): running without CUDA graphs, which "
                        "costs launch overhead on small tiles", e)
            return None
        return graph

    def _check_batch(self, batch: torch.Tensor) -> None:
        if batch.ndim != 4 or batch.shape[1] != self.in_channels:
            raise ValueError(f"batch must have shape (N, {self.in_channels}, h, w), got {tuple(batch.shape)}")
        h, w = batch.shape[2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"tile sides must be multiples of {self.multiple}, got {h}×{w}")
        lo, _, hi = self.profile
        if not (lo[2] <= h <= hi[2] and lo[3] <= w <= hi[3]):
            raise ValueError(f"tile {h}×{w} is outside the plan's profile ({lo[2]}×{lo[3]} to {hi[2]}×{hi[3]}): "
                             f"use a tile of at most {hi[2]} (--tile), or rebuild the plan for larger tiles")

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 (N, in_channels, h, w) in [0, 1] → float32 (N, out_channels, h·scale, w·scale) on `device`."""
        self._check_batch(batch)
        max_n = self.profile[2][0]
        if batch.shape[0] > max_n:
            return torch.cat([self.run(part) for part in batch.split(max_n)])
        current = torch.cuda.current_stream(self.device)
        batch = batch.to(self.device, non_blocking=True)
        self.stream.wait_stream(current)  # the batch is ready on the caller's stream
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            state = self._state(tuple(batch.shape))
            state.input.copy_(batch)  # casts to the engine's input dtype
            self._execute(state)
            out = state.output.to(torch.float32, copy=True)  # the static buffer is overwritten by the next run
        batch.record_stream(self.stream)
        current.wait_stream(self.stream)
        out.record_stream(current)
        return out

    def bytes_per_pixel(self) -> float:
        """Device bytes per input pixel at the plan's largest shape: TensorRT's activation memory plus the static
        I/O buffers and the float32 result."""
        n, c, h, w = self.profile[2]
        pixels = n * h * w
        s2 = self.scale * self.scale
        io = c * self._in_dtype.itemsize + self.out_channels * s2 * (self._out_dtype.itemsize + 4)
        return _device_memory_size(self._engine) / pixels + io


def _torch_dtype(trt_dtype_name: str) -> torch.dtype:
    if trt_dtype_name not in TORCH_DTYPES:
        raise ValueError(f"a plan with {trt_dtype_name} input or output is not supported: export the ONNX graph with "
                         f"fp32 or fp16 I/O")
    return TORCH_DTYPES[trt_dtype_name]


# ---------------------------------------------------------------------------------------------------------
# engine folders: model.onnx + model.plan (+ both endpoints' refit arrays, for alpha)


def build(req: BuildRequest) -> Built:
    """The ONNX graph (an INT8 graph's float part in fp16: TensorRT networks are strongly typed) and the plan built
    from it for this machine's GPU, with REFIT, over a profile of up to `tile` × `tile` × `batch`."""
    from export.tensorrt import build_engine, profile_shapes, refit_arrays

    from .ort import onnx_engine
    from .torch_eager import TorchBackend

    built = onnx_engine(req, int8_compute="fp16", endpoint_arrays=refit_arrays)
    half = 0.5 if req.precision != "fp32" else 1.0
    built.manifest["bytes_per_pixel"] = TorchBackend(req.net).bytes_per_pixel() * half
    shapes = profile_shapes(req.tile, req.batch, req.net.in_channels, req.net.input_multiple)
    cache = Path(req.options.get("timing_cache") or req.out.parent / "timing.cache")
    manifest = built.manifest

    def plan(path: str) -> None:
        info = build_engine(Path(path).with_name("model.onnx"), path, min_shape=shapes[0], opt_shape=shapes[1],
                            max_shape=shapes[2], timing_cache=cache, refit=True)
        manifest["gpu_arch"] = info["gpu_arch"]
        manifest["tensorrt"] = {k: v for k, v in info.items() if k != "gpu_arch"}

    built.write["model.plan"] = plan
    manifest["profile"] = {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}
    return built


def check_plan_target(folder: Path, manifest: Mapping[str, Any]) -> None:
    """A TensorRT plan runs only on the GPU architecture and TensorRT version it was built with."""
    want_arch = manifest.get("gpu_arch")
    if not torch.cuda.is_available():
        raise EngineError(f"{folder} is a TensorRT engine for {want_arch}; this machine has no CUDA device: build an "
                          f"ONNX Runtime engine (--backend onnxruntime) or run it on the GPU it was built for")
    major, minor = torch.cuda.get_device_capability()
    have_arch = f"sm_{major}{minor}"
    if want_arch != have_arch:
        raise EngineError(f"{folder} was built for {want_arch}, this GPU ({torch.cuda.get_device_name()}) is "
                          f"{have_arch}: rebuild the engine on this GPU")
    want_trt, have_trt = manifest.get("versions", {}).get("tensorrt"), _installed_version()
    if have_trt is not None and want_trt != have_trt:
        raise EngineError(f"{folder} was built with TensorRT {want_trt}, this machine has {have_trt}: rebuild the "
                          f"engine")


def _installed_version() -> str | None:
    try:
        return require_tensorrt("Runtime")
    except TensorRTUnavailable:
        return None


def load(req: LoadRequest) -> TensorRTBackend:
    check_plan_target(req.folder, req.manifest)
    m = req.manifest
    with reading(req.folder, "model.plan" + (" and its endpoint weights" if req.endpoints else "")):
        return TensorRTBackend(req.folder / "model.plan", device=req.device, alpha=req.alpha, scale=m["scale"],
                               in_channels=m["in_channels"], out_channels=m["out_channels"], multiple=m["multiple"],
                               weights_psnr=req.endpoints.get("weights_psnr"),
                               weights_gan=req.endpoints.get("weights_gan"))


def _unavailable() -> str | None:
    missing = [] if torch.cuda.is_available() else ["no CUDA GPU"]
    try:
        require_tensorrt("Runtime")
    except TensorRTUnavailable as e:
        missing.append(str(e))
    return " and ".join(missing) or None


def _cannot_build() -> str | None:
    try:
        require_tensorrt("Builder")
    except TensorRTUnavailable as e:
        return str(e)
    return None


register(BackendInfo(
    name="tensorrt", label="TensorRT", precisions=("fp16", "fp32", "int8"), devices=("cuda",),
    unavailable=_unavailable, cannot_build=_cannot_build,
    files=(frozenset({"model.onnx", "model.plan"}), ENDPOINT_FILES), gan_file="weights_gan.safetensors",
    check_manifest=gpu_arch_problems, build=build, load=load, options=("timing_cache",), auto=0,
    # TensorRT runs fp32 convolutions in TF32 by default (fp16's 10-bit mantissa, fp32 accumulation): its fp32
    # engines are held to the fp16 limit
    tolerance={"fp32": 2e-2},
    bench=(BenchRow("tensorrt-fp16", "TensorRT fp16", "fp16"), BenchRow("tensorrt-int8", "TensorRT INT8", "int8")),
))
